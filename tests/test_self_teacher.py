"""SENA's self teacher on a tiny random model: what each step is asked on which image, the ablation
switches, why images are dropped, and that a seed decides the result.

A random model writes gibberish, so most tests watch what the teacher sends to the model
(`generate` / `check` spied on or replaced) rather than what the model says."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmloop.io import sha256_file
from mmloop.models import chat, vlm
from mmloop.teachers.noise import noised_image
from mmloop.schema import make_sample_id
from mmloop.teachers import self_teacher
from mmloop.teachers.self_teacher import DEFAULT_TEMPLATES, PAIR_FIELDS, SelfTeacher, normalise_answer

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = {key: REPO / path for key, path in DEFAULT_TEMPLATES.items()}
SETTINGS = {"templates": TEMPLATES, "max_new_tokens": 6, "batch_size": 3}


@pytest.fixture(scope="module")
def tiny():
    vlm.set_threads(1)
    words = [path.read_text() for path in TEMPLATES.values()] + ["Yes No red blue green circle square what colour"]
    return vlm.build(words, seed=0, text_layers=1, vision_layers=1)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Five small PNGs (a coloured shape on grey) under data/images and their pool records."""
    root = tmp_path_factory.mktemp("self") / "data"
    (root / "images").mkdir(parents=True)
    records = []
    for k, colour in enumerate([(220, 30, 30), (30, 30, 220), (30, 200, 30), (240, 200, 20), (20, 20, 20)]):
        array = np.full((40, 48, 3), 128, dtype=np.uint8)
        array[5 + k:25 + k, 8 + 3 * k:30 + 3 * k] = colour
        path = root / "images" / f"{k}.png"
        Image.fromarray(array).save(path)
        records.append({"image": f"images/{k}.png", "image_sha256": sha256_file(path), "sample_id": f"pool-{k}"})
    return root, records


def clean_arrays(root, records):
    return [np.array(Image.open(root / record["image"]).convert("RGB")) for record in records]


def teacher_for(tiny, pool, **settings):
    model, processor = tiny
    return SelfTeacher(model, processor, data_root=pool[0], **{**SETTINGS, **settings})


def spy(monkeypatch, teacher, reply=None):
    """Record every generate call (step, texts, copies of the images, keyword arguments); with
    `reply(step, row, call)` the model is not asked and each row's reply is what it returns."""
    calls, real = [], teacher.generate

    def generate(step, texts, arrays, **kwargs):
        call = {"step": step, "texts": list(texts), "arrays": [np.array(a) for a in arrays], **kwargs}
        calls.append(call)
        if reply is None:
            return real(step, texts, arrays, **kwargs)
        return [reply(step, row, call) for row in range(len(texts))]

    monkeypatch.setattr(teacher, "generate", generate)
    return calls


def always(verdict):
    def check(questions, arrays):
        return [verdict] * len(questions), [None] * len(questions)
    return check


def steps(calls):
    return [call["step"] for call in calls]


# ------------------------------------------------------------------ the records

def test_every_image_gives_one_pair_or_one_dropped_record_with_traceable_fields(tiny, pool):
    root, records = pool
    pairs, dropped, stats = teacher_for(tiny, pool, iteration=2).run(records)
    assert len(pairs) + len(dropped) == len(records) and pairs  # the tiny model passes some checks at seed 0
    by_parent = {row["parent_ids"][0]: row for row in pairs + dropped}
    assert sorted(by_parent) == sorted(record["sample_id"] for record in records)
    provenance_prompts = [{"step": key, "id": f"self_{key}@v1", "sha256": sha256_file(TEMPLATES[key])}
                          for key in self_teacher.TEMPLATE_KEYS]
    for record in records:
        row = by_parent[record["sample_id"]]
        assert list(row) == list(PAIR_FIELDS) + (["reason"] if row in dropped else [])
        assert row["image"] == record["image"] and row["image_sha256"] == record["image_sha256"]
        asked = [{"role": "user", "content": row["prompt"] or ""}]
        assert row["pair_id"] == make_sample_id(record["image_sha256"], asked, "self", 2)
        assert row["pair_id"].startswith("sel-") and row["category"] == "self" and row["noise_t"] == 600
        assert isinstance(row["noise_seed"], int) and 0 <= row["noise_seed"] < 2 ** 32
        provenance = row["provenance"]
        assert provenance["backend"] == "self" and provenance["prompts"] == provenance_prompts
        assert 1 <= provenance["tries"] <= 3 and provenance["check_method"] == "loglik"
        assert provenance["iteration"] == 2 and provenance["seed"] == 0
    for pair in pairs:
        assert pair["prompt"] and pair["chosen"] and pair["rejected"] and pair["initial_answer"] and pair["description"]
        assert normalise_answer(pair["chosen"]) != normalise_answer(pair["rejected"])
        assert pair["provenance"]["check_margin"] > 0
    for row in dropped:
        assert row["reason"] in self_teacher.DROP_REASONS
        if row["reason"] == "unanswerable_question":
            assert row["provenance"]["tries"] == 3 and row["provenance"]["check_margin"] <= 0

    assert stats["images"] == 5 and stats["pairs"] == len(pairs)
    assert sum(stats["dropped"].values()) == len(dropped) and set(stats["dropped"]) == set(self_teacher.DROP_REASONS)
    tries = [row["provenance"]["tries"] for row in pairs + dropped]
    assert stats["mean_tries"] == pytest.approx(sum(tries) / len(tries))
    # One check per non-empty question asked; a pair's last check passed, a drop's all failed.
    assert stats["checks"] >= len(records) and 0 < stats["check_pass_rate"] <= 1
    passed = len(pairs) + stats["dropped"]["empty_answer"] + stats["dropped"]["same_answer"]
    assert stats["check_pass_rate"] == pytest.approx(passed / stats["checks"])
    assert set(stats["wall_s"]) == set(self_teacher.STEPS) | {"total"}
    assert stats["wall_s"]["total"] >= sum(stats["wall_s"][step] for step in self_teacher.STEPS) - 1e-3


def test_a_seed_decides_the_pairs_and_leaves_the_global_rng_alone(tiny, pool):
    _, records = pool
    state = torch.random.get_rng_state()
    first = teacher_for(tiny, pool, seed=0).run(records)
    assert torch.equal(state, torch.random.get_rng_state())
    again = teacher_for(tiny, pool, seed=0).run(records)
    assert first[:2] == again[:2]
    other = teacher_for(tiny, pool, seed=1).run(records)
    assert [row["prompt"] for row in first[0] + first[1]] != [row["prompt"] for row in other[0] + other[1]]


def test_a_saved_model_loads_into_the_same_teacher(tiny, pool, tmp_path):
    _, records = pool
    vlm.save(*tiny, tmp_path / "model")
    loaded = SelfTeacher.from_pretrained(tmp_path / "model", data_root=pool[0], **SETTINGS)
    assert loaded.run(records)[:2] == teacher_for(tiny, pool).run(records)[:2]


# ------------------------------------------------------------------ what each step is asked, on which image

def test_each_step_sees_the_right_prompt_and_image_and_rejected_sees_the_ddpm_noised_one(tiny, pool, monkeypatch):
    root, records = pool
    teacher = teacher_for(tiny, pool, self_check=False, t=450)
    calls = spy(monkeypatch, teacher)
    pairs, dropped, _ = teacher.run(records)
    assert steps(calls) == ["question", "answer", "describe", "refine", "rejected"]
    assert all(row["reason"] == "empty_question" for row in dropped) and len(pairs) >= 3
    clean = dict(zip([record["sample_id"] for record in records], clean_arrays(root, records)))
    by_step = {call["step"]: call for call in calls}
    question = by_step["question"]
    assert question["temperature"] == pytest.approx(0.9) and all(call.get("temperature", 0) == 0 for call in calls[1:])
    assert len(set(question["texts"])) == 1 and "ask one question" in question["texts"][0]
    assert all(np.array_equal(a, b) for a, b in zip(question["arrays"], clean.values()))

    # The rows after the question step are the images with a question, in pool order.
    live = [row for row in sorted(pairs + dropped, key=lambda row: row["parent_ids"][0]) if row["prompt"]]
    answer, rejected = by_step["answer"], by_step["rejected"]
    assert len(answer["arrays"]) == len(live)
    for row, text, array in zip(live, answer["texts"], answer["arrays"]):
        assert np.array_equal(array, clean[row["parent_ids"][0]])
        assert row["prompt"] in text and "Answer the question in one short sentence." in text
    for step in ("describe", "refine"):
        assert all(np.array_equal(a, clean[row["parent_ids"][0]]) for a, row in zip(by_step[step]["arrays"], live))
    for row, text, desc, initial in zip(live, by_step["refine"]["texts"], by_step["describe"]["texts"],
                                        answer["texts"]):
        assert "Describe the image in detail." in desc
        assert f"Question: {row['prompt']}" in text and f"First answer: {row['initial_answer']}" in text
        assert f"Description of the image: {row['description']}" in text

    kept = [row for row in live if normalise_answer(row["chosen"])]
    assert len(rejected["arrays"]) == len(kept)
    for row, text, array in zip(kept, rejected["texts"], rejected["arrays"]):
        original = clean[row["parent_ids"][0]]
        assert text == answer["texts"][live.index(row)]  # the same question, the same prompt
        assert np.array_equal(array, noised_image(original, 450, seed=row["noise_seed"]))
        assert not np.array_equal(array, original) and row["noise_t"] == 450
    assert len({row["noise_seed"] for row in kept}) == len(kept)


def test_with_self_enhance_chosen_is_the_refined_answer(tiny, pool, monkeypatch):
    _, records = pool
    teacher = teacher_for(tiny, pool)
    monkeypatch.setattr(teacher, "check", always(True))
    spy(monkeypatch, teacher, lambda step, row, call: f"{step} reply {row}")
    pairs, dropped, stats = teacher.run(records)
    assert not dropped and stats["mean_tries"] == 1
    for row, pair in enumerate(pairs):
        assert (pair["prompt"], pair["initial_answer"], pair["description"], pair["chosen"], pair["rejected"]) == (
            f"question reply {row}", f"answer reply {row}", f"describe reply {row}", f"refine reply {row}",
            f"rejected reply {row}")


def test_without_self_enhance_chosen_is_the_initial_answer(tiny, pool, monkeypatch):
    _, records = pool
    teacher = teacher_for(tiny, pool, self_enhance=False)
    monkeypatch.setattr(teacher, "check", always(True))
    calls = spy(monkeypatch, teacher)
    pairs, dropped, stats = teacher.run(records)
    assert steps(calls) == ["question", "answer", "rejected"]
    assert stats["wall_s"]["describe"] == stats["wall_s"]["refine"] == 0
    assert pairs
    for pair in pairs + [row for row in dropped if row["reason"] != "empty_question"]:
        assert pair["chosen"] == pair["initial_answer"] and pair["description"] is None
        assert [entry["step"] for entry in pair["provenance"]["prompts"]] == ["question", "check", "answer"]


def test_without_self_check_the_first_question_is_kept_and_never_checked(tiny, pool, monkeypatch):
    _, records = pool
    teacher = teacher_for(tiny, pool, self_check=False, max_question_tries=3)
    monkeypatch.setattr(teacher, "check", lambda *args: pytest.fail("self_check=False must not check"))
    calls = spy(monkeypatch, teacher, lambda step, row, call: f"{step} {row}")
    pairs, dropped, stats = teacher.run(records)
    assert steps(calls).count("question") == 1 and not dropped and len(pairs) == 5
    assert all(pair["provenance"]["tries"] == 1 and pair["provenance"]["check_method"] is None
               and pair["provenance"]["check_margin"] is None for pair in pairs)
    assert "check" not in teacher.templates
    assert stats["checks"] == 0 and stats["check_pass_rate"] is None and stats["mean_tries"] == 1


# ------------------------------------------------------------------ the self-check

def test_a_question_is_asked_again_until_it_passes_and_dropped_when_no_try_does(tiny, pool, monkeypatch):
    root, records = pool
    teacher = teacher_for(tiny, pool, max_question_tries=3)
    passing = ("question 1 try 1", "question 3 try 2")  # image 1 passes at its second try, image 3 at its third
    monkeypatch.setattr(teacher, "check", lambda questions, arrays: ([q in passing for q in questions],
                                                                     [0.0] * len(questions)))
    clean = clean_arrays(root, records)
    tries = []

    def reply(step, row, call):
        if step != "question":
            return f"{step} {row}"
        if row == 0:
            tries.append(call)
        image = next(k for k, array in enumerate(clean) if np.array_equal(array, call["arrays"][row]))
        return f"question {image} try {len(tries) - 1}"

    calls = spy(monkeypatch, teacher, reply)
    pairs, dropped, stats = teacher.run(records)
    question_calls = [call for call in calls if call["step"] == "question"]
    assert [len(call["arrays"]) for call in question_calls] == [5, 5, 4]  # only the images still without a question
    assert len({call["seed"] for call in question_calls}) == 3  # a seed per try
    assert [row["parent_ids"][0] for row in pairs] == ["pool-1", "pool-3"]
    assert [pair["provenance"]["tries"] for pair in pairs] == [2, 3]
    assert [pair["prompt"] for pair in pairs] == ["question 1 try 1", "question 3 try 2"]
    assert [row["parent_ids"][0] for row in dropped] == ["pool-0", "pool-2", "pool-4"]
    for row in dropped:
        assert row["reason"] == "unanswerable_question" and row["provenance"]["tries"] == 3
        assert row["prompt"] == f"question {row['parent_ids'][0][-1]} try 2" and row["chosen"] is None
    assert stats["checks"] == 14 and stats["check_pass_rate"] == pytest.approx(2 / 14)
    assert stats["mean_tries"] == pytest.approx((3 + 2 + 3 + 3 + 3) / 5)


def test_an_image_whose_checks_all_say_no_is_dropped_after_max_tries(tiny, pool, monkeypatch):
    _, records = pool
    teacher = teacher_for(tiny, pool, max_question_tries=2)
    monkeypatch.setattr(teacher, "check", always(False))
    calls = spy(monkeypatch, teacher, lambda step, row, call: "What colour is the circle?")
    pairs, dropped, stats = teacher.run(records)
    assert not pairs and steps(calls) == ["question", "question"]
    assert all(row["reason"] == "unanswerable_question" and row["provenance"]["tries"] == 2 for row in dropped)
    assert stats["dropped"]["unanswerable_question"] == 5 and stats["check_pass_rate"] == 0


def test_an_empty_question_is_a_failed_try_that_is_never_checked(tiny, pool, monkeypatch):
    _, records = pool
    teacher = teacher_for(tiny, pool, max_question_tries=2)
    checked = []
    monkeypatch.setattr(teacher, "check", lambda questions, arrays: (checked.extend(questions) or
                                                                    ([True] * len(questions), [1.0] * len(questions))))
    spy(monkeypatch, teacher, lambda step, row, call: "" if step == "question" else f"{step} {row}")
    pairs, dropped, _ = teacher.run(records)
    assert not pairs and not checked
    assert all(row["reason"] == "unanswerable_question" and row["prompt"] is None for row in dropped)


def test_the_loglik_check_compares_the_two_replies_log_probabilities(tiny, pool):
    model, processor = tiny
    root, records = pool
    teacher = teacher_for(tiny, pool)
    questions = ["What colour is the circle?", "Is there a square?", "what"]
    arrays = clean_arrays(root, records)[:3]
    verdicts, margins = teacher.check(questions, arrays)
    tokenizer = processor.tokenizer
    yes, no = tokenizer.convert_tokens_to_ids("Yes"), tokenizer.convert_tokens_to_ids("No")
    for question, array, verdict, margin in zip(questions, arrays, verdicts, margins):
        user = f"Question: {question}\nCan this question be answered by looking at the image? Answer yes or no."
        text = chat.render(processor, chat.messages([{"role": "user", "content": user}]), add_generation_prompt=True)
        with torch.no_grad():
            logits = model(**chat.encode(processor, [text], [array])).logits[0, -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        assert margin == pytest.approx(float(logprobs[yes] - logprobs[no]), abs=1e-4)
        assert verdict == (margin > 0)


def test_the_generate_check_reads_the_reply_as_yes_or_no(tiny, pool, monkeypatch):
    root, records = pool
    teacher = teacher_for(tiny, pool, check_method="generate")
    replies = ["Yes, it can.", "no", "maybe", "Yes and no"]
    calls = spy(monkeypatch, teacher, lambda step, row, call: replies[row])
    verdicts, margins = teacher.check(["q1", "q2", "q3", "q4"], clean_arrays(root, records)[:4])
    assert verdicts == [True, False, False, False] and margins == [None] * 4
    assert steps(calls) == ["check"] and "Question: q2" in calls[0]["texts"][1]


# ------------------------------------------------------------------ comparing the answers

def test_equal_or_empty_answers_are_dropped_with_their_reason(tiny, pool, monkeypatch):
    _, records = pool
    teacher = teacher_for(tiny, pool)
    monkeypatch.setattr(teacher, "check", always(True))
    answers = {  # per image: (refined answer, answer on the noised image)
        0: ("The circle is red.", "the  circle is RED"),
        1: ("The circle is red.", "The circle is blue."),
        2: ("A red circle!", ""),
        3: ("  ", "The circle is blue."),
        4: ("Red.", "red"),
    }

    def reply(step, row, call):
        if step == "question":
            return f"question-{row}"
        if step in ("refine", "rejected"):
            image = int(call["texts"][row].split("question-")[1][0])
            return answers[image][0 if step == "refine" else 1]
        return f"{step} {row}"

    calls = spy(monkeypatch, teacher, reply)
    pairs, dropped, stats = teacher.run(records)
    assert len(next(call for call in calls if call["step"] == "rejected")["texts"]) == 4
    assert [(pair["parent_ids"][0], pair["chosen"], pair["rejected"]) for pair in pairs] == [
        ("pool-1", "The circle is red.", "The circle is blue.")]
    assert {row["parent_ids"][0]: row["reason"] for row in dropped} == {
        "pool-0": "same_answer", "pool-2": "empty_answer", "pool-3": "empty_answer", "pool-4": "same_answer"}
    same = next(row for row in dropped if row["parent_ids"][0] == "pool-0")
    assert (same["chosen"], same["rejected"]) == ("The circle is red.", "the  circle is RED")
    assert stats["dropped"] == {"unanswerable_question": 0, "empty_question": 0, "empty_answer": 2, "same_answer": 2}


def test_answers_are_normalised_before_they_are_compared():
    assert normalise_answer("  The Circle\n is  RED.!? ") == "the circle is red"
    assert normalise_answer("3.5") == "3.5" and normalise_answer(None) == "" and normalise_answer("...") == ""


# ------------------------------------------------------------------ what is refused

def test_bad_inputs_and_settings_are_refused_by_name(tiny, pool, tmp_path):
    root, records = pool
    teacher = teacher_for(tiny, pool)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        teacher.run([{**records[0], "image": "images/missing.png"}])
    with pytest.raises(ValueError, match="does not match its image_sha256"):
        teacher.run([{**records[0], "image_sha256": "0" * 64}])
    with pytest.raises(ValueError, match="given twice"):
        teacher.run([records[0], records[0]])
    with pytest.raises(ValueError, match="'image_sha256'"):
        teacher.run([{"image": "images/0.png", "sample_id": "x"}])
    with pytest.raises(ValueError, match="unknown template"):
        teacher_for(tiny, pool, templates={"questions": TEMPLATES["question"]})
    with pytest.raises(ValueError, match="t must be"):
        teacher_for(tiny, pool, t=1001)
    with pytest.raises(ValueError, match="max_question_tries"):
        teacher_for(tiny, pool, max_question_tries=0)
    with pytest.raises(ValueError, match="check_method"):
        teacher_for(tiny, pool, check_method="vote")
    unquoted = tmp_path / "check.j2"
    unquoted.write_text(TEMPLATES["check"].read_text().replace('["Yes", "No"]', "[yes, no]"))
    with pytest.raises(ValueError, match="replies"):
        teacher_for(tiny, pool, templates={**TEMPLATES, "check": unquoted})
    # Unused templates are not loaded: with self_enhance off, a missing refine template is fine.
    teacher_for(tiny, pool, self_enhance=False, templates={**TEMPLATES, "refine": tmp_path / "none.j2"})
    pairs, dropped, stats = teacher.run([])
    assert (pairs, dropped, stats["images"], stats["mean_tries"], stats["check_pass_rate"]) == ([], [], 0, None, None)


def test_the_default_templates_are_the_repos_prompts(tiny, monkeypatch):
    monkeypatch.chdir(REPO)
    teacher = SelfTeacher(*tiny)
    assert {key: template.path for key, template in teacher.templates.items()} == {
        key: Path(path) for key, path in DEFAULT_TEMPLATES.items()}
    assert teacher.check_replies == ("Yes", "No")
    for key, template in teacher.templates.items():
        assert template.version == 1 and template.id == f"self_{key}" and template.meta["description"]
