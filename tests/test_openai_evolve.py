"""The openai teacher's evolution (mmloop.teachers.openai_evolve) against the local OpenAI-compatible server.

The server answers evolution and judge prompts (`openai_server.evolution_reply`): the markers in
a parent's question say what the fake model does.
"""

import hashlib
import io
import random
import re
from pathlib import Path

import pytest
from PIL import Image

import openai_server
from mmloop.config import EvolvePrompts, OpenAIConfig
from mmloop.loop import evolution
from mmloop.schema import make_sample_id, sample, to_table
from mmloop.teachers.journal import Journal
from mmloop.teachers.openai_chat import render_item
from mmloop.teachers.openai_evolve import OpenAIEvolver, item_view
from openai_server import FaultConfig, OpenAIServer

REPO = Path(__file__).resolve().parents[1]
PROMPTS = EvolvePrompts(**{name: str(REPO / f"prompts/evolve_{name}.j2")
                           for name in ("perception", "reasoning", "interaction", "judge")})
WEIGHTS = {"perception": 0.5, "reasoning": 0.3, "interaction": 0.2}
GOOD_REASON = openai_server.GOOD_REASON


# ---------------------------------------------------------------- the fake model

@pytest.fixture
def server():
    srv = OpenAIServer(FaultConfig(fault_rate=0.1, fault_kinds=("429", "500"), seed=3)).start()
    yield srv
    srv.stop()


# ---------------------------------------------------------------- rows

def _parent(root, index, fmt, question, answer, options=()):
    """A generated row on its own image (written under `root`), with the image's objects."""
    image = Image.new("RGB", (96, 64), "white")
    image.paste("red", (4 + index, 4, 30 + index, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    rel = f"images/{sha[:2]}/{sha}.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(buffer.getvalue())
    item = {"question": question, "answer": answer, "options": list(options)}
    conversations, fields = render_item(item, fmt, "letter", f"que-{index}")
    row = sample(sample_id=make_sample_id(sha, conversations, "generated", f"que-{index}"),
                 parent_ids=[f"que-{index}"], iteration=1, origin="generated", image=rel, image_sha256=sha,
                 category="colour", conversations=conversations,
                 provenance={"backend": "openai", "model": "gpt-test"}, **fields)
    objects = [{"id": 1, "category": "square", "bbox": [4 + index, 4, 26, 26],
                "attributes": {"colour": "red", "size": "large", "row": 0, "col": 0}},
               {"id": 2, "category": "circle", "bbox": [70, 40, 8, 8],
                "attributes": {"colour": "blue", "size": "small", "row": 2, "col": 3}}]
    return row, objects


def _parents(root, questions):
    rows, objects = [], {}
    for index, (fmt, question) in enumerate(questions):
        if fmt == "mcq":
            row, found = _parent(root, index, "mcq", question, "red", ["red", "blue", "green", "yellow"])
        else:
            row, found = _parent(root, index, "short", question, "The square is red.")
        rows.append(row)
        objects[row["image_sha256"]] = found
    return rows, objects


def _config(url, journal, **overrides):
    return OpenAIConfig(**{"model": "gpt-test", "base_url": url, "api_key_env": None, "journal": str(journal),
                           "image_mode": "image", "image_max_side": 32, "timeout": 5.0, "backoff_base": 0.01,
                           "backoff_max": 0.05, "max_attempts": 4, "temperature": 0.7, **overrides})


def _evolver(config, objects, root):
    return OpenAIEvolver(config, PROMPTS, answer_format="letter", objects_by_image=objects, data_root=root,
                         iteration=2)


def _children(evolver, parents, operators, round=1):
    orders = [[operator, *[o for o in evolution.OPERATORS if o != operator]] for operator in operators]
    return evolver.children(parents, orders, [random.Random(0) for _ in parents], round=round)


# ---------------------------------------------------------------- tests

def test_templates_load_and_render_in_both_image_modes(tmp_path):
    evolver = _evolver(_config("http://127.0.0.1:9/v1", tmp_path / "j.sqlite"), {}, tmp_path)
    for name, template in [*evolver.templates.items(), ("judge", evolver.judge_template)]:
        assert (template.id, template.version, template.name) == (f"evolve_{name}", 1, f"evolve_{name}@v1")
        assert template.meta["description"] and len(template.file_sha256) == 64
    assert all(set(t.output_schema) == {"mcq", "short"} for t in evolver.templates.values())
    assert set(evolver.judge_template.output_schema["judgement"]["required"]) == {
        "improved", "correct", "difficulty_parent", "difficulty_child", "reason"}

    (mcq, short), objects = _parents(tmp_path, [("mcq", "What colour is the square?"),
                                                ("short", "What colour is the square?")])
    image = evolver.operator_request(mcq, "perception").messages[0]["content"]
    text, attached = image[0]["text"], image[1]["image_url"]["url"]
    assert attached.startswith("data:image/png;base64,") and "<objects>" not in text
    assert openai_server.tagged_json(text, "parent") == item_view(mcq) and "Evolution operator: fine-grained perception." in text
    assert '"options"' in text and "question type colour, format mcq" in text and "Skip" in text
    short_text = evolver.operator_request(short, "reasoning").messages[0]["content"][0]["text"]
    assert '"answer" is a single full sentence' in short_text and '"options"' not in short_text
    both = evolver.operator_request(short, "interaction").messages[0]["content"][0]["text"]
    assert '"format": {"enum": ["mcq"]}' in both and '"format": {"enum": ["short"]}' in both

    caption = _evolver(_config("http://127.0.0.1:9/v1", tmp_path / "j.sqlite", image_mode="caption"), objects,
                       tmp_path)
    request = caption.operator_request(mcq, "perception")
    assert isinstance(request.messages[0]["content"], str)
    assert re.search(r'<objects>\n\[.*"colour": "blue".*\]\n</objects>', request.messages[0]["content"])
    assert request.key != evolver.operator_request(mcq, "perception").key  # the image is part of the request

    child = dict(short, question="Which object is left of the circle?",
                 conversations=[*mcq["conversations"], *short["conversations"]],
                 provenance={**short["provenance"], "operator": "interaction"})
    judge = caption.judge_request(child, mcq).messages[0]["content"]
    assert openai_server.tagged_json(judge, "parent") == item_view(mcq) and openai_server.tagged_json(judge, "child")["earlier_turns"] == mcq["conversations"]
    assert 'the "interaction" evolution, which should ask in another form' in judge and "<objects>" in judge


def test_children_are_sample_rows_chained_to_their_parents(server, tmp_path):
    from mmloop.validation import validate

    parents, objects = _parents(tmp_path, [("mcq", "What colour is the square?"),
                                           ("short", "What colour is the square?"),
                                           ("mcq", "What colour is the big square?"),
                                           ("short", "What colour is the square? FOLLOW")])
    evolver = _evolver(_config(server.url, tmp_path / "j.sqlite"), objects, tmp_path)
    made = _children(evolver, parents, ["perception", "reasoning", "interaction", "interaction"], round=1)
    assert [(operator, failed) for _, operator, failed in made] == [
        ("perception", []), ("reasoning", []), ("interaction", []), ("interaction", [])]
    children = [child for child, _, _ in made]
    for child, parent, (_, operator, _) in zip(children, parents, made):
        assert child["origin"] == "evolved" and child["parent_ids"] == [parent["sample_id"]]
        assert (child["image"], child["image_sha256"], child["category"], child["iteration"]) == (
            parent["image"], parent["image_sha256"], parent["category"], 2)
        assert child["kept"] is None and child["reject_reason"] is None
        provenance = child["provenance"]
        template = evolver.templates[operator]
        assert provenance["backend"] == "openai" and provenance["model"] == "gpt-test"
        assert provenance["prompt_id"] == f"evolve_{operator}@v1" and provenance["prompt_sha256"] == template.file_sha256
        assert (provenance["operator"], provenance["round"]) == (operator, 1)
        with Journal(tmp_path / "j.sqlite") as journal:
            assert journal.hit(provenance["request_hash"]).label == parent["sample_id"]

    perceived, reasoned, reformatted, followed = children
    assert perceived["question"] == "What colour is the square? (perception)" and perceived["format"] == "mcq"
    assert perceived["answer"] in perceived["options"]
    assert perceived["conversations"][1]["content"] == "ABCD"[perceived["options"].index("red")]
    assert reasoned["format"] == "short" and reasoned["conversations"][1]["content"] == "The square is red."
    assert reformatted["format"] == "short" and reformatted["options"] == []  # mcq -> short
    assert reformatted["answer"] == "The answer is red."
    # The follow-up: the parent's turn, then the new question, which depends on its answer.
    assert followed["format"] == "mcq" and len(followed["conversations"]) == 4
    assert followed["conversations"][:2] == parents[3]["conversations"]
    assert followed["question"] == "Is it the only one of that colour?"
    assert followed["conversations"][2]["content"].startswith("Is it the only one of that colour?\nOptions:")

    validate(children, "samples", source="evolved.parquet", iteration=2, data_root=str(tmp_path))
    assert to_table(children).num_rows == 4
    stats = evolver.stats()
    assert stats["requests"] == stats["unique_requests"] == 4 and stats["follow_up"] == 1
    assert stats["repairs"] == {"json_syntax": 1} and stats["parse_failures"] == 0
    assert stats["usage"]["succeeded"] == 4 and stats["prompts"]["perception"]["prompt_id"] == "evolve_perception@v1"


def test_a_skip_or_an_answer_outside_the_options_gives_no_child(server, tmp_path):
    parents, objects = _parents(tmp_path, [("mcq", "What colour is the square? SKIPME"),
                                           ("mcq", "What colour is the square? BADANSWER"),
                                           ("mcq", "What colour is the square?")])
    evolver = _evolver(_config(server.url, tmp_path / "j.sqlite", image_mode="caption"), objects, tmp_path)
    made = _children(evolver, parents, ["reasoning", "perception", "reasoning"])
    assert made[0] == (None, None, ["reasoning"]) and made[1] == (None, None, ["perception"])
    assert made[2][0] is not None and made[2][1:] == ("reasoning", [])
    stats = evolver.stats()
    assert (stats["skipped"], stats["parse_failed"], stats["request_failed"]) == (1, 1, 0)
    with pytest.raises(ValueError, match="not mcq or short"):
        _children(evolver, [dict(parents[0], format="conversation")], ["reasoning"])


def test_the_judge_maps_replies_to_judgements(server, tmp_path):
    markers = ["", "WRONG", "NOGAIN", "EQUAL", "GARBAGE", "TRUNCATE"]
    parents, objects = _parents(tmp_path, [("mcq", f"What colour is the square? {m}".strip()) for m in markers])
    evolver = _evolver(_config(server.url, tmp_path / "j.sqlite"), objects, tmp_path)
    children = [child for child, _, _ in _children(evolver, parents, ["reasoning"] * len(parents))]
    good, wrong, no_gain, equal, garbage, truncated = evolver.judge(list(zip(children, parents)))

    assert good == evolution.Judgement(True, 3.0, 6.0, None, "The child needs the small circle too. It is harder.")
    assert (wrong.improved, wrong.reason, wrong.difficulty_child) == (False, "answer_mismatch", 6.0)
    assert (no_gain.improved, no_gain.reason) == (False, "no_gain")
    assert (equal.improved, equal.reason, equal.difficulty_parent, equal.difficulty_child) == (False, "no_gain", 3, 3)
    for failed, note in ((garbage, "judge reply unusable (parse: "), (truncated, "judge request failed: "
                                                                                "finish_reason_length")):
        assert (failed.improved, failed.reason) == (False, "judge_low") and failed.note.startswith(note)
        # No verdict: the structural difficulties (a one-turn mcq with four options) stand in.
        assert failed.difficulty_parent == failed.difficulty_child == evolution.difficulty(parents[0])
    stats = evolver.stats()
    assert (stats["judge_parse_failed"], stats["judge_request_failed"], stats["parse_failures"]) == (1, 1, 1)
    assert evolver.judge([]) == []


def test_a_rerun_with_the_same_journal_sends_nothing(server, tmp_path):
    parents, objects = _parents(tmp_path, [("mcq", "What colour is the square?"),
                                           ("short", "What colour is the square?")])
    config = _config(server.url, tmp_path / "j.sqlite")

    def run():
        evolver = _evolver(config, objects, tmp_path)
        made = _children(evolver, parents, ["perception", "interaction"])
        children = [child for child, _, _ in made]
        return children, evolver.judge(list(zip(children, parents))), evolver.stats()

    children, judgements, first = run()
    attempts = sum(server.counters.attempts.values())
    assert first["usage"]["sent"] >= 4 and first["usage"]["journal_hits"] == 0
    again, judged_again, second = run()
    assert sum(server.counters.attempts.values()) == attempts
    assert second["usage"]["sent"] == 0 and second["usage"]["journal_hits"] == 4
    assert again == children and judged_again == judgements


def test_evolve_runs_two_rounds_end_to_end(server, tmp_path):
    parents, objects = _parents(tmp_path, [(fmt, f"What colour is square {i}?")
                                           for i, fmt in enumerate(["mcq", "short"] * 4)])
    evolver = _evolver(_config(server.url, tmp_path / "j.sqlite", image_mode="caption"), objects, tmp_path)
    verdicts, kept, stats = evolution.evolve(parents, evolver, rounds=2, operator_weights=WEIGHTS, seed=0)

    first, second = stats["rounds"]
    assert stats["backend"] == "openai" and first["parents"] == 8 and first["evolved"] == 8
    assert first["kept"] == second["parents"] == 8 and second["kept"] == 8 and len(kept) == 16
    operators = {verdict.operator for verdict in verdicts}
    assert operators <= set(WEIGHTS) and len(operators) >= 2
    by_id = {row["sample_id"]: row for row in [*parents, *kept]}
    for verdict in verdicts:
        row = verdict.row
        assert row["parent_ids"] == [verdict.parent_id] and row["provenance"]["round"] == verdict.round
        assert row["scores"]["difficulty"] == 6.0 and row["provenance"]["operator"] == verdict.operator
        assert row["provenance"]["judge_note"] == "The child needs the small circle too. It is harder."
        parent = by_id[verdict.parent_id]
        assert parent["image_sha256"] == row["image_sha256"]
        # Round 2's children chain to a round-1 child, whose own parent is a generated row.
        if verdict.round == 2:
            assert parent["origin"] == "evolved" and by_id[parent["parent_ids"][0]]["origin"] == "generated"
        else:
            assert parent["origin"] == "generated"
    assert to_table([verdict.row for verdict in verdicts]).num_rows == 16  # what the stage writes
    final = evolution.final_rows(parents, kept)
    assert all(row["origin"] == "evolved" and row["provenance"]["round"] == 2 for row in final)
    assert evolver.stats()["requests"] == 32  # 8 evolutions and 8 judgements, twice
