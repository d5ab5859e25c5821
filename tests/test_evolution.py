import json
import random

import pytest

from mmloop import questions, schema
from mmloop.loop import evolution
from mmloop.loop.elimination import verify_answer
from mmloop.loop.evolution import (INTERACTION, OPERATORS, PERCEPTION, REASONING, AnnotationEvolver, difficulty,
                                   evolve, evolve_row, judge)
from mmloop.questions import SceneObject, Vocabulary
from mmloop.teachers.annotations import question_row

VOCAB = Vocabulary(colours=questions.COLOURS, shapes=questions.SHAPES)
COCO_VOCAB = Vocabulary(colours=questions.COLOURS[:4], shapes=("person", "dog", "car", "bicycle"))


def world(*specs):
    """World-like objects: (shape, colour, size, x, y); large boxes 14 wide, small 8."""
    objects = []
    for index, (shape, colour, size, x, y) in enumerate(specs):
        side = 14.0 if size == "large" else 8.0
        objects.append(SceneObject(id=index + 1, shape=shape, bbox=(float(x), float(y), side, side), colour=colour,
                                   size=size))
    return objects


def coco(*specs):
    """COCO-like objects: a category name and a box, no attributes."""
    return [SceneObject(id=index + 1, shape=name, bbox=tuple(float(v) for v in bbox))
            for index, (name, bbox) in enumerate(specs)]


# A row of three and an object above the middle one, plus a lone one far below.
WORLD_A = world(("circle", "red", "small", 2, 24), ("square", "blue", "large", 24, 22),
                ("triangle", "red", "small", 52, 24), ("circle", "green", "large", 24, 2),
                ("square", "purple", "small", 27, 52))
# Two colours each twice, shapes repeated: perception has work to do.
WORLD_B = world(("circle", "yellow", "large", 2, 2), ("circle", "yellow", "small", 40, 4),
                ("square", "orange", "small", 4, 40), ("triangle", "orange", "large", 40, 40),
                ("square", "yellow", "small", 24, 24))
WORLD_C = world(("triangle", "green", "large", 4, 24), ("triangle", "blue", "large", 44, 24),
                ("circle", "green", "small", 27, 4))
COCO_A = coco(("person", (0, 20, 10, 30)), ("dog", (30, 40, 12, 10)), ("person", (60, 20, 10, 30)),
              ("car", (30, 0, 20, 10)))
COCO_B = coco(("dog", (0, 0, 20, 20)), ("bicycle", (50, 0, 20, 20)), ("person", (0, 50, 10, 20)))

SCENES = {f"{name:0<64}": objects for name, objects in
          (("aa", WORLD_A), ("bb", WORLD_B), ("cc", WORLD_C), ("dd", COCO_A), ("ee", COCO_B))}
WORLD_SCENES = {key: objects for key, objects in SCENES.items() if objects[0].colour is not None}
COCO_SCENES = {key: objects for key, objects in SCENES.items() if objects[0].colour is None}


def vocab_of(sha):
    return VOCAB if sha in WORLD_SCENES else COCO_VOCAB


def row_for(sha, family, fmt="mcq", seed=0, answer_format="letter"):
    """A generated row as the annotations teacher writes it (None when the family can't be asked)."""
    vocab = vocab_of(sha)
    made = questions.make_question(family, SCENES[sha], random.Random(seed), colours=vocab.colours,
                                   shapes=vocab.shapes)
    if made is None:
        return None
    query = {"sample_id": f"que-{family}-{fmt}-{seed}-{sha[:2]}", "image": f"images/{sha[:2]}/{sha}.png",
             "image_sha256": sha, "category": family}
    return question_row(made, query, fmt, iteration=1, answer_format=answer_format)


def row_with(sha, program, fmt="mcq", seed=0, answer_format="letter"):
    """A generated row asking `program` (options drawn as the family draws them)."""
    objects = SCENES[sha]
    answer = questions.answer_program(program, objects)
    assert answer is not None, program
    options = evolution.make_options(program, answer, objects, evolution.scene_vocabulary(vocab_of(sha), objects),
                                     random.Random(seed)) if fmt == "mcq" else ()
    made = questions.Question(category=program["family"], question=questions.question_text(program), options=options,
                              answer=answer, statement=questions.statement(program, answer), program=program)
    query = {"sample_id": f"que-{json.dumps(program, sort_keys=True)}-{fmt}", "image": f"images/{sha[:2]}/{sha}.png",
             "image_sha256": sha, "category": program["family"]}
    return question_row(made, query, fmt, iteration=1, answer_format=answer_format)


def child_of(row, operator, seed=0, answer_format="letter"):
    return evolve_row(row, SCENES[row["image_sha256"]], random.Random(seed), vocabulary=vocab_of(row["image_sha256"]),
                      operator=operator, answer_format=answer_format, iteration=2, round=1)


def program_of(row):
    return json.loads(row["provenance"]["program"])


def parent_rows(formats=("mcq",), seeds=range(4)):
    rows = []
    for sha in SCENES:
        for family in questions.FAMILY_REGISTRY:
            for fmt in formats:
                for seed in seeds:
                    row = row_for(sha, family, fmt, seed)
                    if row is not None:
                        rows.append(row)
    return rows


# ---------------------------------------------------------------- difficulty

def test_difficulty_formula_by_hand():
    count = {"family": "count", "query": {"shape": "circle"}}
    assert difficulty({"family": "count", "query": {}}) == 1.0   # one step, nothing named, no answer form
    assert difficulty(count) == 1.5                              # + 0.5 for one attribute
    # mcq with four options: 1 + 0.5 + 2 * (1 - 1/4)
    assert difficulty(row_with("aa" + "0" * 62, count)) == 3.0
    # short answer: choice 1
    assert difficulty(row_with("aa" + "0" * 62, count, fmt="short")) == 3.5
    comparison = {"family": "comparison", "a": {"colour": "red", "shape": "circle"}, "b": {"shape": "square"}}
    assert difficulty(comparison) == 1 + 2 + 1.5
    follow_up = {"family": "count", "query": {"colour": "red"},
                 "context": [{"format": "mcq", "answer": "red", "options": ["red", "blue"],
                              "program": {"family": "colour", "target": {"shape": "square"}}}]}
    # steps 1 + 1, attributes 1 + 1, two turns
    assert difficulty(follow_up) == 1 + 2 + 1 + 1
    assert difficulty({"family": "comparison", "a": {"size": "small", "colour": "red", "shape": "circle"},
                       "b": {"size": "large", "colour": "blue", "shape": "square"},
                       "context": [{"program": comparison, "answer": "yes"}] * 3}) == 10.0  # clipped


def test_reasoning_steps_come_from_the_families():
    assert evolution.reasoning_steps({"family": "count"}) == 1
    assert evolution.reasoning_steps({"family": "comparison"}) == 2
    assert evolution.reasoning_steps({"family": "multihop"}) == 2


# ---------------------------------------------------------------- each operator

@pytest.mark.parametrize("operator", OPERATORS)
def test_every_child_of_an_mcq_row_is_correct_and_harder(operator):
    parents = parent_rows()
    made = 0
    for parent in parents:
        for seed in range(3):
            child = child_of(parent, operator, seed)
            if child is None:
                continue
            made += 1
            assert verify_answer(child, SCENES) is True, child["conversations"]
            assert evolution.verify(child, SCENES[child["image_sha256"]])
            assert difficulty(child) > difficulty(parent), (parent["question"], child["conversations"])
            assert child["parent_ids"] == [parent["sample_id"]]
            assert child["origin"] == "evolved" and child["iteration"] == 2
            assert child["provenance"]["operator"] == operator and child["provenance"]["round"] == 1
            assert child["provenance"]["backend"] == "annotations"
            assert child["image_sha256"] == parent["image_sha256"]
            assert child["sample_id"].startswith("evo-") and child["sample_id"] != parent["sample_id"]
    assert made >= len(parents) // 3


def test_perception_names_the_target_by_more_attributes():
    sha = "aa" + "0" * 62
    parent = row_with(sha, {"family": "colour", "target": {"shape": "triangle"}})
    seen = set()
    for seed in range(20):
        child = child_of(parent, PERCEPTION, seed)
        target = program_of(child)["target"]
        assert program_of(child)["family"] == "colour"
        assert len(target) > 1 and "colour" not in target
        seen.add(json.dumps(target, sort_keys=True))
    # the same triangle named by its size, and a less salient object (the small circle or square)
    assert json.dumps({"shape": "triangle", "size": "small"}, sort_keys=True) in seen
    assert any("triangle" not in key for key in seen)


def test_perception_narrows_a_count_to_a_sub_population():
    sha = "bb" + "0" * 62
    parent = row_with(sha, {"family": "count", "query": {"shape": "circle"}})
    for seed in range(10):
        child = child_of(parent, PERCEPTION, seed)
        query = program_of(child)["query"]
        assert query["shape"] == "circle" and len(query) == 2
        assert 1 <= int(child["answer"]) <= 2


def test_perception_cannot_apply_without_attributes():
    sha = "dd" + "0" * 62
    for program in ({"family": "count", "query": {"shape": "person"}},
                    {"family": "existence", "query": {"shape": "dog"}},
                    {"family": "spatial", "a": {"shape": "dog"}, "b": {"shape": "car"}}):
        assert child_of(row_with(sha, program), PERCEPTION) is None, program
    # ...but "how many objects" can still be narrowed to a category
    child = child_of(row_with(sha, {"family": "count", "query": {}}), PERCEPTION)
    assert program_of(child)["query"] in ({"shape": "person"}, {"shape": "dog"}, {"shape": "car"})


def test_reasoning_turns_a_count_into_a_comparison_and_an_attribute_into_multihop():
    sha = "aa" + "0" * 62
    child = child_of(row_with(sha, {"family": "count", "query": {"colour": "red"}}), REASONING)
    program = program_of(child)
    assert program["family"] == "comparison" and program["a"] == {"colour": "red"}
    assert set(program["b"]) == {"colour"} and program["b"] != {"colour": "red"}
    assert child["answer"] == "yes"  # two red objects, one of every other colour

    # The large square has one object on each side: each relation picks out one object.
    target = {"size": "large", "shape": "square"}
    relations = set()
    for seed in range(20):
        child = child_of(row_with(sha, {"family": "colour", "target": target}), REASONING, seed)
        program = program_of(child)
        assert {key: program[key] for key in ("family", "attribute", "anchor")} == \
            {"family": "multihop", "attribute": "colour", "anchor": target}
        relations.add(program["relation"])
        assert child["answer"] == {"left of": "red", "right of": "red", "above": "green",
                                   "below": "purple"}[program["relation"]]
    assert relations == set(questions.RELATIONS)
    # Left of the triangle are two objects: "the object to the left of the triangle" is ambiguous.
    assert child_of(row_with(sha, {"family": "colour", "target": {"shape": "triangle"}}), REASONING) is None


def test_reasoning_on_coco_spatial_asks_what_the_related_object_is():
    sha = "dd" + "0" * 62
    parent = row_with(sha, {"family": "spatial", "a": {"shape": "car"}, "b": {"shape": "dog"}})
    assert parent["answer"] == "above"
    child = child_of(parent, REASONING)
    assert program_of(child) == {"family": "multihop", "attribute": "shape", "relation": "above",
                                 "anchor": {"shape": "dog"}}
    assert child["answer"] == "car"
    assert verify_answer(child, SCENES) is True


def test_reasoning_cannot_apply_to_two_step_families():
    sha = "aa" + "0" * 62
    for program in ({"family": "comparison", "a": {"colour": "red"}, "b": {"shape": "square"}},
                    {"family": "multihop", "attribute": "colour", "relation": "above", "anchor": {"colour": "blue"}}):
        assert child_of(row_with(sha, program), REASONING) is None


def test_interaction_mcq_to_short_and_a_follow_up_that_depends_on_the_first_answer():
    sha = "aa" + "0" * 62
    parent = row_with(sha, {"family": "colour", "target": {"shape": "triangle"}})
    assert parent["answer"] == "red"
    forms = {}
    for seed in range(20):
        child = child_of(parent, INTERACTION, seed)
        forms[len(child["conversations"])] = child
    short, follow_up = forms[2], forms[4]
    assert short["format"] == "short" and short["conversations"][0]["content"] == "What colour is the triangle?"
    assert short["answer"] == "red" and difficulty(short) > difficulty(parent)
    # the first turn is the parent's, word for word; the second asks about "that colour"
    assert follow_up["conversations"][:2] == parent["conversations"]
    assert follow_up["conversations"][2]["content"].startswith("How many objects of that colour are there?")
    assert program_of(follow_up)["query"] == {"colour": "red"}
    assert follow_up["answer"] == "2"
    assert verify_answer(follow_up, SCENES) is True and evolution.verify(follow_up, WORLD_A)


def test_interaction_after_a_count_compares_them():
    sha = "dd" + "0" * 62
    parent = row_with(sha, {"family": "count", "query": {"shape": "person"}}, fmt="short")
    texts = set()
    for seed in range(20):
        child = child_of(parent, INTERACTION, seed)
        if len(child["conversations"]) == 4:
            texts.add(child["conversations"][2]["content"])
            assert child["answer"] == "yes" and verify_answer(child, SCENES) is True
    assert texts <= {"Are there more of them than dogs?", "Are there more of them than cars?"} and texts


def test_interaction_short_to_mcq_is_made_but_loses_to_its_parent():
    sha = "aa" + "0" * 62
    parent = row_with(sha, {"family": "spatial", "a": {"shape": "triangle"}, "b": {"size": "large", "shape": "square"}},
                      fmt="short")
    child = child_of(parent, INTERACTION)   # spatial has no follow-up: the only other form is mcq
    assert child["format"] == "mcq" and verify_answer(child, SCENES) is True
    improved, before, after, reason = judge(child, parent, WORLD_A)
    assert not improved and after < before and reason == "no_gain"


def test_a_follow_up_is_not_perceived_or_reasoned_further():
    sha = "aa" + "0" * 62
    parent = row_with(sha, {"family": "colour", "target": {"shape": "triangle"}})
    follow_up = next(child for seed in range(20)
                     if len((child := child_of(parent, INTERACTION, seed))["conversations"]) == 4)
    assert child_of(follow_up, PERCEPTION) is None and child_of(follow_up, REASONING) is None
    again = child_of(follow_up, INTERACTION)   # its last turn as a short answer
    assert again["format"] == "short" and again["conversations"][:2] == parent["conversations"]
    assert evolution.verify(again, WORLD_A) and difficulty(again) > difficulty(follow_up)


def test_option_answer_format_is_kept():
    sha = "bb" + "0" * 62
    parent = row_with(sha, {"family": "count", "query": {"shape": "circle"}}, answer_format="option")
    assert parent["conversations"][-1]["content"] == "2"
    child = child_of(parent, PERCEPTION, answer_format="option")
    assert child["conversations"][-1]["content"] == child["answer"]
    assert verify_answer(child, SCENES) is True


def test_unknown_operator_is_an_error_and_rows_without_programs_are_not_evolved():
    parent = row_for("aa" + "0" * 62, "count")
    with pytest.raises(ValueError, match="unknown evolution operator"):
        child_of(parent, "mutation")
    plain = dict(parent, provenance={**parent["provenance"], "program": None})
    assert all(child_of(plain, operator) is None for operator in OPERATORS)


# ---------------------------------------------------------------- the judge

def test_judge_drops_a_child_whose_answer_or_first_turn_is_wrong():
    sha = "aa" + "0" * 62
    parent = row_with(sha, {"family": "colour", "target": {"shape": "triangle"}}, fmt="short")
    child = child_of(parent, PERCEPTION)
    assert judge(child, parent, WORLD_A)[0] is True and judge(child, parent, WORLD_A)[3] is None
    wrong = dict(child, answer="blue")
    assert judge(wrong, parent, WORLD_A)[3] == "answer_mismatch"

    follow_up = next(c for seed in range(20) if len((c := child_of(parent, INTERACTION, seed))["conversations"]) == 4)
    assert judge(follow_up, parent, WORLD_A) == (True, difficulty(parent), difficulty(follow_up), None)
    # A first answer that is wrong ("the triangle is green"), with a second turn that follows from
    # it and is answered right ("How many objects of that colour?" "1"): verify_answer accepts the
    # row, the conversation is the programs' rendering, but the judge re-executes the first turn too.
    program = program_of(follow_up)
    program["context"][0]["answer"] = "green"
    program["query"] = {"colour": "green"}
    tampered = evolution.child_row(parent, evolution.Draft(program, "short", ()), WORLD_A, operator=INTERACTION,
                                   answer_format="letter", iteration=2, round=1)
    assert tampered["conversations"][1]["content"] == "The triangle is green." and tampered["answer"] == "1"
    assert verify_answer(tampered, SCENES) is True
    assert judge(tampered, parent, WORLD_A)[3] == "answer_mismatch"
    # A conversation that says something else than its program
    turns = [dict(turn) for turn in follow_up["conversations"]]
    turns[2]["content"] = "How many objects are there?"
    assert judge(dict(follow_up, conversations=turns), parent, WORLD_A)[3] == "answer_mismatch"


def test_judge_needs_strictly_more_difficulty():
    sha = "aa" + "0" * 62
    parent = row_with(sha, {"family": "colour", "target": {"shape": "triangle"}})
    improved, before, after, reason = judge(parent, parent, WORLD_A)
    assert (improved, reason) == (False, "no_gain") and before == after


# ---------------------------------------------------------------- the rounds

def run(rows=None, **changes):
    settings = dict(rounds=3, operator_weights={"perception": 1, "reasoning": 1, "interaction": 1}, seed=7)
    evolver = AnnotationEvolver(SCENES, vocabulary=changes.pop("vocabulary", None),
                                answer_format=changes.pop("answer_format", "letter"), iteration=2)
    settings.update(changes)
    return evolve(parent_rows(("mcq", "short")) if rows is None else rows, evolver, **settings)


def test_three_rounds_raise_mean_difficulty_every_round():
    verdicts, kept, stats = run()
    means = [stats["seed_mean_difficulty"]] + [entry["mean_difficulty"]["kept"] for entry in stats["rounds"]]
    assert len(stats["rounds"]) == 3 and all(entry["kept"] for entry in stats["rounds"])
    assert all(later > earlier for earlier, later in zip(means, means[1:])), means
    for verdict in verdicts:
        assert verdict.kept == (verdict.difficulty_child > verdict.difficulty_parent and verdict.reason is None)
        assert verify_answer(verdict.row, SCENES) is True
        assert 0.0 <= verdict.row["scores"]["evolution_gain"] <= 1.0 and verdict.row["scores"]["difficulty"] == verdict.difficulty_child
        assert verdict.row["provenance"]["round"] == verdict.round


def test_stats_add_up_per_round_and_operator():
    verdicts, kept, stats = run()
    assert stats["evolved"] == len(verdicts) and stats["kept"] == len(kept)
    for entry in stats["rounds"]:
        mine = [verdict for verdict in verdicts if verdict.round == entry["round"]]
        assert entry["evolved"] == len(mine) == entry["kept"] + sum(entry["dropped"].values())
        assert entry["evolved"] + entry["no_operator_applies"] == entry["parents"]
        assert sum(op["evolved"] for op in entry["operators"].values()) == entry["evolved"]
        for name, op in entry["operators"].items():
            assert op["kept"] == sum(1 for v in mine if v.operator == name and v.kept)
    # the next round's parents are exactly this round's survivors
    for entry, after in zip(stats["rounds"], stats["rounds"][1:]):
        assert after["parents"] == entry["kept"]
    assert "no_gain" in stats["rounds"][0]["dropped"]   # short -> mcq children lose


def test_kept_rows_lead_back_to_the_original_rows():
    rows = parent_rows(("mcq", "short"))
    verdicts, kept, _ = run(rows)
    originals = {row["sample_id"] for row in rows}
    by_id = {verdict.row["sample_id"]: verdict.row for verdict in verdicts}
    assert len(by_id) == len(verdicts)   # ids are unique
    for row in kept:
        chain, current = [], row
        while current["sample_id"] not in originals:
            chain.append(current)
            (parent_id,) = current["parent_ids"]
            assert current["origin"] == "evolved"
            current = by_id.get(parent_id) or next(r for r in rows if r["sample_id"] == parent_id)
        # one generation per round, each a kept child of the one before
        assert [link["provenance"]["round"] for link in chain] == list(range(len(chain), 0, -1))
        assert all(link["kept"] for link in chain)
        assert current["image_sha256"] == row["image_sha256"]


def test_same_inputs_same_outputs_and_the_seed_matters():
    first, second = run(), run()
    assert [v.as_dict() for v in first[0]] == [v.as_dict() for v in second[0]]
    assert first[1] == second[1] and first[2] == second[2]
    other = run(seed=8)
    assert [v.row["sample_id"] for v in other[0]] != [v.row["sample_id"] for v in first[0]]


def test_a_parents_child_does_not_depend_on_the_other_rows():
    rows = parent_rows(("mcq",))
    forward = {v.row["sample_id"] for v in run(rows, rounds=1)[0]}
    backward = {v.row["sample_id"] for v in run(list(reversed(rows)), rounds=1)[0]}
    alone = {v.row["sample_id"] for v in run(rows[:5], rounds=1)[0]}
    assert forward == backward and alone <= forward


def test_a_child_repeating_a_seen_row_is_dropped_as_duplicate():
    sha = "zz" + "0" * 62
    SCENES[sha] = world(("square", "blue", "large", 20, 20))
    try:
        program = {"family": "colour", "target": {"shape": "square"}}
        first, second = row_with(sha, program, fmt="short"), row_with(sha, program, fmt="short")
        second = dict(second, sample_id="que-second")
        verdicts, kept, stats = run([first, second], rounds=1, operator_weights={"perception": 1})
        assert [v.reason for v in verdicts] == [None, "duplicate"]
        assert verdicts[0].row["conversations"] == verdicts[1].row["conversations"]
        assert stats["rounds"][0]["dropped"] == {"duplicate": 1}
    finally:
        del SCENES[sha]


def test_operator_weights_choose_the_operators():
    verdicts, _, stats = run(rounds=1, operator_weights={"reasoning": 1, "perception": 0})
    assert {v.operator for v in verdicts} == {"reasoning"}
    assert stats["rounds"][0]["no_operator_applies"] > 0   # comparison and multihop rows
    with pytest.raises(ValueError, match="unknown operator"):
        run(operator_weights={"mutation": 1})
    with pytest.raises(ValueError, match="one positive"):
        run(operator_weights={"reasoning": 0})


def test_children_fit_the_sample_schema():
    verdicts, _, _ = run(rounds=2)
    table = schema.to_table([verdict.row for verdict in verdicts])
    assert table.num_rows == len(verdicts)
    assert set(table.column("origin").to_pylist()) == {"evolved"}
    reasons = {v.reason for v in verdicts} - {None}
    assert reasons <= set(schema.REJECT_REASONS)


def test_perception_never_makes_one_side_of_a_comparison_part_of_the_other():
    sha = "bb" + "0" * 62
    parent = row_with(sha, {"family": "comparison", "a": {"colour": "yellow"}, "b": {"shape": "square"}})
    sides = set()
    for seed in range(20):
        program = program_of(child_of(parent, PERCEPTION, seed))
        a, b = program["a"].items(), program["b"].items()
        assert not (a <= b or b <= a), program   # "more yellow squares than squares" is always "no"
        sides.add(json.dumps([program["a"], program["b"]], sort_keys=True))
    assert len(sides) > 1


# ---------------------------------------------------------------- the blind check

def blind_prediction(options, answer, probabilities):
    import math

    scores = [math.log(p) for p in probabilities]
    best = max(range(len(scores)), key=lambda j: scores[j])
    letter = "ABCD"[options.index(answer)]
    return {"options": options, "answer": letter, "option_scores": scores, "correct": "ABCD"[best] == letter}


def test_a_blind_answer_counts_only_far_above_the_models_own_base_rate():
    from mmloop.loop.evolution import MIN_BASE_RATE_ITEMS, blind_verdicts

    # A model that says "no" to every blank image (p = 0.9) reads nothing from the question:
    # its right "no" answers are its base rate, not a giveaway.
    biased = [blind_prediction(["yes", "no"], "no", [0.1, 0.9]) for _ in range(MIN_BASE_RATE_ITEMS)]
    # One question whose text gives "yes" away: 0.99 where the base rate of "yes" is about 0.14.
    leaked = blind_prediction(["yes", "no"], "yes", [0.99, 0.01])
    verdicts = blind_verdicts([*biased, leaked], margin=0.5)
    assert not any(answered for answered, _ in verdicts[:-1])
    assert verdicts[-1] == (True, 0.99)
    # Too few items with an option set to measure a base rate: chance is 1/k.
    few = blind_verdicts([blind_prediction(["red", "blue", "green", "pink"], "red", [0.7, 0.1, 0.1, 0.1]),
                          blind_prediction(["red", "blue", "green", "pink"], "red", [0.55, 0.15, 0.15, 0.15]),
                          blind_prediction(["red", "blue", "green", "pink"], "blue", [0.7, 0.1, 0.1, 0.1])],
                         margin=0.5)
    assert [answered for answered, _ in few] == [True, False, False]  # threshold 0.25 + 0.5 * 0.75 = 0.625


def test_blind_flags_drop_children_as_visually_independent():
    flagged = set()

    def blind(rows):
        flagged.update(row["sample_id"] for row in rows[::2])
        return [(row["sample_id"] in flagged, 0.9 if row["sample_id"] in flagged else 0.2) for row in rows]

    verdicts, kept, stats = run(rounds=1, blind=blind)
    assert flagged and kept
    for verdict in verdicts:
        if verdict.row["sample_id"] in flagged:
            assert verdict.reason == "visually_independent" and verdict.row["scores"]["visual_independence"] == 0.9
    assert stats["rounds"][0]["dropped"]["visually_independent"] == len(flagged)
    assert not {row["sample_id"] for row in kept} & flagged


def test_final_rows_keep_the_count_and_put_the_newest_descendant_in_place():
    rows = parent_rows(("mcq", "short"))
    verdicts, kept, _ = run(rows=rows)
    final = evolution.final_rows(rows, kept)
    assert len(final) == len(rows)
    by_id = {verdict.row["sample_id"]: verdict for verdict in verdicts}
    replaced = 0
    for row, out in zip(rows, final):
        if out["sample_id"] == row["sample_id"]:
            continue
        replaced += 1
        # Walk back to the root: it is the row this one replaced, and no kept child descends from it.
        node = out
        while node["sample_id"] in by_id:
            node = next(r for r in [*rows, *kept] if r["sample_id"] == by_id[node["sample_id"]].parent_id)
        assert node["sample_id"] == row["sample_id"]
        assert not any(child["parent_ids"] == [out["sample_id"]] for child in kept)
    assert replaced


def test_the_round_table_adds_up_per_round():
    _, _, stats = run()
    lines = evolution.round_table(stats).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:5] == ["round", "operator", "parents", "evolved", "kept"] and "dropped: no_gain" in header
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    totals = [row for row in rows if row[1] == "all"]
    assert [row[0] for row in totals] == ["1", "2", "3"]
    for total, entry in zip(totals, stats["rounds"]):
        assert int(total[3]) == entry["evolved"] and int(total[4]) == entry["kept"]
        assert int(total[3]) == int(total[4]) + sum(int(total[header.index(h)]) for h in header if h.startswith("dropped"))
