"""Option log-likelihood evaluation on the tiny model: scores, metrics, bad cases, the stage."""

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from mmloop import benchmark, evaluation, vlm, world
from mmloop.io import read_json
from mmloop.questions import FAMILIES, mcq_prompt
from mmloop.report import collect
from mmloop.schema import read_samples
from mmloop.validation import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small world, 3 items per family from its bench split as a TSV, and a tiny random model."""
    root = tmp_path_factory.mktemp("eval")
    world.build(world.WorldConfig(splits={"bench": 20}), 1, root / "data" / "images", root / "data" / "world")
    made = benchmark.make_items(read_json(root / "data" / "world" / "instances_bench.json"), 3, seed=0,
                                data_root=root / "data")
    made[0]["hint"] = "Look closely."
    benchmark.write_mmbench(made, root / "data" / "bench" / "bench.tsv")
    items = benchmark.read_mmbench(root / "data" / "bench" / "bench.tsv")
    texts = [f"{item['question']} {' '.join(item['options'])}" for item in items]
    model, processor = vlm.build(texts, seed=0)
    # One thread: with other jobs on the cores, two OpenMP threads wait on each other at every op.
    vlm.set_threads(1)
    return root, items, model, processor


def run(setup, **kwargs):
    _, items, model, processor = setup
    kwargs.setdefault("batch_size", 4)
    return evaluation.evaluate(model, processor, items, model_name="models/iter=0", iteration=0,
                               benchmark="shapes", **kwargs)


def reference_scores(model, processor, item):
    """Unbatched and independent of evaluation.py: each full conversation (user turn plus the
    assistant's letter) in its own forward pass, the letter's log-probability read off it."""
    import torch
    from PIL import Image

    image = Image.open(io.BytesIO(item["image"])).convert("RGB")
    user = vlm.messages([{"role": "user", "content": mcq_prompt(item["question"], item["options"], item["hint"])}])
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    prompt_length = processor(text=[prompt], images=[image], return_tensors="pt",
                              add_special_tokens=False)["input_ids"].shape[1]
    scores = []
    for position in range(len(item["options"])):
        letter = "ABCD"[position]
        full = processor.apply_chat_template(user + [{"role": "assistant", "content": letter}], tokenize=False)
        encoded = processor(text=[full], images=[image], return_tensors="pt", add_special_tokens=False)
        token = int(encoded["input_ids"][0, prompt_length])
        assert processor.tokenizer.convert_ids_to_tokens(token) == letter
        with torch.no_grad():
            logits = model(**encoded).logits[0, prompt_length - 1]
        scores.append(float(torch.log_softmax(logits.float(), dim=-1)[token]))
    return scores


def test_predictions_are_valid_rows(setup):
    _, items, _, _ = setup
    rows = run(setup)
    validate(rows, "predictions", source="predictions.parquet", iteration=0)
    assert [row["item"] for row in rows] == [f"shapes-{item['index']}" for item in items]
    for row, item in zip(rows, items):
        assert row["mode"] == "loglik" and row["benchmark"] == "shapes" and row["model"] == "models/iter=0"
        assert len(row["option_scores"]) == len(item["options"]) >= 2
        assert all(score < 0 for score in row["option_scores"])
        best = max(range(len(item["options"])), key=lambda j: row["option_scores"][j])
        assert row["prediction"] == "ABCD"[best]
        assert row["correct"] == (row["prediction"] == item["answer"])
        assert row["image_sha256"] == item["image_sha256"] and row["latency_ms"] > 0
        assert row["category"] == item["category"] and row["l2_category"] == item["l2_category"]


def test_batched_scores_equal_unbatched_full_sequences(setup):
    _, items, model, processor = setup
    rows = run(setup, batch_size=7)
    for row, item in zip(rows, items):
        assert row["option_scores"] == pytest.approx(reference_scores(model, processor, item), abs=1e-4)


@pytest.mark.parametrize("kwargs", [{"batch_size": 1}, {"batch_size": 64}, {"method": "per_option"},
                                    {"method": "per_option", "batch_size": 3}])
def test_batch_size_and_method_do_not_change_scores(setup, kwargs):
    expected = run(setup)
    got = run(setup, **kwargs)
    for a, b in zip(expected, got):
        assert a["item"] == b["item"] and a["prediction"] == b["prediction"]
        assert a["option_scores"] == pytest.approx(b["option_scores"], abs=1e-4)


def test_left_padding_tokenizer_gives_the_same_scores_and_is_restored(setup):
    _, _, _, processor = setup
    expected = run(setup)
    processor.tokenizer.padding_side = "left"
    try:
        got = run(setup, batch_size=5)
        assert processor.tokenizer.padding_side == "left"
    finally:
        processor.tokenizer.padding_side = "right"
    for a, b in zip(expected, got):
        assert a["option_scores"] == pytest.approx(b["option_scores"], abs=1e-4)


def test_deterministic(setup):
    strip = lambda rows: [{k: v for k, v in row.items() if k != "latency_ms"} for row in rows]  # noqa: E731
    assert strip(run(setup)) == strip(run(setup))


@contextlib.contextmanager
def favouring(model, processor, token):
    """The model with `token`'s logit raised by 100 everywhere: it always says `token`."""
    token_id = processor.tokenizer.convert_tokens_to_ids(token)
    assert token_id != processor.tokenizer.unk_token_id

    def favour(module, inputs, output):
        output = output.clone()
        output[..., token_id] += 100.0
        return output

    handle = model.lm_head.register_forward_hook(favour)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("method", evaluation.METHODS)
def test_a_model_that_always_says_b_gets_exactly_the_b_items_right(setup, method):
    _, items, model, processor = setup
    with favouring(model, processor, "B"):
        rows = run(setup, method=method)
    assert all(row["prediction"] == "B" for row in rows)
    assert [row["correct"] for row in rows] == [item["answer"] == "B" for item in items]
    b_items = sum(item["answer"] == "B" for item in items)
    assert 0 < b_items < len(items)
    assert evaluation.metrics(rows)["overall"] == pytest.approx(b_items / len(items))


def test_metrics_by_hand():
    rows = [{"category": "a", "l2_category": "x", "correct": True},
            {"category": "a", "l2_category": "x", "correct": False},
            {"category": "b", "l2_category": "x", "correct": True},
            {"category": "b", "l2_category": "x", "correct": True},
            {"category": "c", "l2_category": "y", "correct": False}]
    assert evaluation.metrics(rows) == {
        "overall": 0.6, "n": 5, "categories": {"a": 0.5, "b": 1.0, "c": 0.0},
        "l2_categories": {"x": 0.75, "y": 0.0}, "n_per_category": {"a": 2, "b": 2, "c": 1}}
    with pytest.raises(ValueError, match="no predictions"):
        evaluation.metrics([])


def test_badcases(setup, tmp_path):
    root, items, _, _ = setup
    rows = run(setup)
    wrong = [row for row in rows if not row["correct"]]
    assert wrong, "a random model should get some items wrong"
    cases = evaluation.badcases(rows, items, 0, root / "data")
    assert [case["sample_id"] for case in cases] == [f"badcase-0-{row['item']}" for row in wrong]
    by_index = {f"shapes-{item['index']}": item for item in items}
    for case, row in zip(cases, wrong):
        item = by_index[row["item"]]
        assert case["origin"] == "badcase" and case["iteration"] == 0 and case["parent_ids"] == []
        assert case["format"] == "mcq" and case["category"] == item["category"]
        assert case["options"] == item["options"]
        assert case["answer"] == item["options"]["ABCD".index(item["answer"])]
        assert case["conversations"] == [
            {"role": "user", "content": mcq_prompt(item["question"], item["options"], item["hint"])},
            {"role": "assistant", "content": item["answer"]}]
        assert case["image"] == f"images/{item['image_sha256'][:2]}/{item['image_sha256']}.png"
        assert case["image_sha256"] == item["image_sha256"]
        assert case["provenance"]["source"] == f"bench.tsv#{item['index']}"
        assert case["provenance"]["backend"] == "benchmark" and case["provenance"]["model"] == "models/iter=0"
        assert all(value is None for value in case["scores"].values())
    validate(cases, "badcases", source="badcases.parquet", iteration=0, data_root=root / "data")
    # A benchmark image that is not in the store: the bad case keeps only its hash.
    assert all(case["image"] is None for case in evaluation.badcases(rows, items, 0, tmp_path))
    with pytest.raises(ValueError, match="'shapes-0' is not among the benchmark items"):
        evaluation.badcases([dict(rows[0], correct=False)], items[1:], 0, root / "data")


def test_evaluate_stage(setup, monkeypatch, capsys):
    root, items, model, processor = setup
    vlm.save(model, processor, root / "models" / "iter=2")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(batch_size=8, threads=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["stages/evaluate.py", "2"])
    runpy.run_path(str(REPO / "stages" / "evaluate.py"), run_name="__main__")
    predictions = read_samples(root / "data" / "iter=2" / "eval" / "predictions.parquet")
    cases = read_samples(root / "data" / "iter=2" / "eval" / "badcases.parquet")
    assert len(predictions) == len(items) and {row["iteration"] for row in predictions} == {2}
    assert len(cases) == sum(not row["correct"] for row in predictions)
    assert sorted(path.name for path in (root / "data" / "iter=2").iterdir()) == ["eval"]
    metrics = json.loads((root / "metrics" / "eval" / "iter=2.json").read_text())
    assert set(metrics["categories"]) == set(FAMILIES)
    assert metrics["overall"] == pytest.approx(sum(row["correct"] for row in predictions) / len(items))
    history = collect(root / "metrics" / "eval")
    assert history[0]["iteration"] == 2 and history[0]["overall"] == metrics["overall"]
    assert "evaluate iter=2: overall" in capsys.readouterr().out


class WordTokenizer:
    """Splits on whitespace only, so "ASSISTANT:" + "B" merges into one token "ASSISTANT:B"."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]
                              for text in texts]}


def test_continuations_merged_with_the_prompt_are_rescored():
    tokenizer = WordTokenizer()
    continuations = evaluation._Continuations(tokenizer, {"A": "A", "B": "B"})
    context = "USER: q Answer with the option's letter from the given choices directly. ASSISTANT:"
    ids = tokenizer([context])["input_ids"][0]
    drop, letters = continuations.split(context, ids)
    assert drop == 1
    assert letters == {"A": tokenizer(["ASSISTANT:A"])["input_ids"][0], "B": tokenizer(["ASSISTANT:B"])["input_ids"][0]}
    assert len(continuations.cache) == 1  # the tail after the MCQ suffix is tokenised once
    # Ids that do not end with the cached tail are split per item (same answer here).
    assert continuations.split(context, ids + [999]) == (1, letters)
    spaced = evaluation._Continuations(tokenizer, {"A": " A", "B": " B"})
    single = {key: tokenizer([key])["input_ids"][0] for key in "AB"}
    assert spaced.split(context, ids) == (0, single)


def test_dropped_prompt_tokens_add_the_same_term_to_every_option(setup, monkeypatch):
    """Rescoring the prompt's last token with each option (what a merging tokenizer needs) shifts
    every option of an item by the same log-probability, and goes through the per-option path."""
    expected = run(setup)
    split = evaluation._Continuations.split

    def merged(self, context, ids):
        drop, letters = split(self, context, ids)
        return drop + 1, {key: [ids[-1], *value] for key, value in letters.items()}

    monkeypatch.setattr(evaluation._Continuations, "split", merged)
    monkeypatch.setattr(evaluation, "_score_next_token", None)  # must not be used
    got = run(setup, batch_size=5)
    for a, b in zip(expected, got):
        shifts = [y - x for x, y in zip(a["option_scores"], b["option_scores"])]
        assert shifts[0] < -1e-3
        assert shifts == pytest.approx([shifts[0]] * len(shifts), abs=1e-4)
        assert a["prediction"] == b["prediction"]


def reference_option_scores(model, processor, item):
    """Unbatched: each full conversation whose reply is the option's text in its own forward
    pass, the reply's tokens' log-probabilities summed (the end token excluded)."""
    import torch
    from PIL import Image

    image = Image.open(io.BytesIO(item["image"])).convert("RGB")
    user = vlm.messages([{"role": "user", "content": mcq_prompt(item["question"], item["options"], item["hint"],
                                                                answer_format="option")}])
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    prompt_length = processor(text=[prompt], images=[image], return_tensors="pt",
                              add_special_tokens=False)["input_ids"].shape[1]
    scores = []
    for option in item["options"]:
        full = processor.apply_chat_template(user + [{"role": "assistant", "content": option}], tokenize=False)
        encoded = processor(text=[full], images=[image], return_tensors="pt", add_special_tokens=False)
        ids = encoded["input_ids"][0]
        end = len(ids) - 1 if int(ids[-1]) == processor.tokenizer.eos_token_id else len(ids)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(**encoded).logits[0].float(), dim=-1)
        scores.append(sum(float(logprobs[p - 1, ids[p]]) for p in range(prompt_length, end)))
    return scores


def test_option_text_replies_score_like_full_sequences(setup):
    _, items, model, processor = setup
    rows = run(setup, answer_format="option", batch_size=5)
    multi_token = [item for item in items if any(" " in option for option in item["options"])]
    assert multi_token, "the bench should hold multi-token options (spatial relations) to cover that path"
    for item, row in zip(items, rows):
        assert row["option_scores"] == pytest.approx(reference_option_scores(model, processor, item), abs=1e-4)


def test_option_text_replies_pick_the_favoured_option(setup):
    _, items, model, processor = setup
    with favouring(model, processor, "yes"):
        rows = run(setup, answer_format="option")
    existence = [(item, row) for item, row in zip(items, rows) if "yes" in item["options"]]
    assert existence
    for item, row in existence:
        assert item["options"]["ABCD".index(row["prediction"])] == "yes"
