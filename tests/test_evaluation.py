"""Evaluation on the tiny model: log-likelihood scores (next-token, shared-prefix, per-option paths),
generation, prompt conventions, multi-round contexts, metrics, bad cases, the stage."""

import contextlib
import dataclasses
import io
import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from mmloop import config, questions
from mmloop.eval import evaluation, metrics, prompts, scoring
from mmloop.eval.benchmarks import BENCHMARKS, lookup
from mmloop.eval.benchmarks.mmbench import read_mmbench, write_mmbench
from mmloop.eval.items import candidates, circular_copies, normalise_item
from mmloop.eval.manifest import load_source, write_manifest
from mmloop.models import chat, vlm
from mmloop.world import benchmark
from mmloop.world import scenes as world
from mmloop.io import read_json
from mmloop.questions import FAMILIES, mcq_prompt
from mmloop.report import collect
from mmloop.schema import bench_item, prediction_schema, read_samples, to_table
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
    write_mmbench(made, root / "data" / "bench" / "bench.tsv")
    # The manifest the bench stage writes for the world's benchmark, paths relative to `root`.
    write_manifest(root / "data" / "bench" / "bench.json", made, format="mmbench", file="data/bench/bench.tsv")
    items = read_mmbench(root / "data" / "bench" / "bench.tsv")
    texts = [f"{item['question']} {' '.join(item['options'])}" for item in items]
    # The yes/no replies, the harness suffix and the generic instructions are words the model knows.
    texts += ["Yes No", prompts.SHORT_SUFFIX, *prompts.GENERIC_INSTRUCTIONS]
    model, processor = vlm.build(texts, seed=0)
    # One thread: with other jobs on the cores, two OpenMP threads wait on each other at every op.
    vlm.set_threads(1)
    return root, items, model, processor


# evaluate's own keywords; every other option is an `EvaluateConfig` field.
EVALUATE_KEYWORDS = ("method", "convention", "round_max_new_tokens")


def evaluate_items(setup, items, answer_format="letter", **options):
    """`evaluation.evaluate` of `items` on the setup's model, in batches of 4 unless told."""
    _, _, model, processor = setup
    keywords = {key: options.pop(key) for key in EVALUATE_KEYWORDS if key in options}
    settings = config.EvaluateConfig(**{"batch_size": 4, **options})
    return evaluation.evaluate(model, processor, items, settings, answer_format, benchmark="shapes",
                               model_name="models/iter=0", iteration=0, **keywords)


def run(setup, **options):
    return evaluate_items(setup, setup[1], **options)


def reference_scores(model, processor, item):
    """Unbatched and independent of evaluation.py: each full conversation (user turn plus the
    assistant's letter) in its own forward pass, the letter's log-probability read off it."""
    import torch
    from PIL import Image

    image = Image.open(io.BytesIO(item["image"])).convert("RGB")
    user = chat.messages([{"role": "user", "content": mcq_prompt(item["question"], item["options"], item["hint"])}])
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


@pytest.mark.parametrize("method", scoring.METHODS)
def test_a_model_that_always_says_b_gets_exactly_the_b_items_right(setup, method):
    _, items, model, processor = setup
    with favouring(model, processor, "B"):
        rows = run(setup, method=method)
    assert all(row["prediction"] == "B" for row in rows)
    assert [row["correct"] for row in rows] == [item["answer"] == "B" for item in items]
    b_items = sum(item["answer"] == "B" for item in items)
    assert 0 < b_items < len(items)
    assert metrics.accuracy(rows)["overall"] == pytest.approx(b_items / len(items))


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


def test_evaluate_stage_and_the_cli_give_the_same_numbers(setup, monkeypatch, capsys):
    from mmloop import cli, stage

    root, items, model, processor = setup
    started = []  # the stage's start-up record, written at exit into the cwd of that time: not here
    monkeypatch.setattr(stage, "_record_startup", lambda name, seconds: started.append(name))
    vlm.save(model, processor, root / "models" / "iter=2")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(batch_size=8, threads=1, circular=True, rounds=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["stages/evaluate.py", "2"])
    runpy.run_path(str(REPO / "stages" / "evaluate.py"), run_name="__main__")
    stage_out = capsys.readouterr().out
    predictions = read_samples(root / "data" / "iter=2" / "eval" / "predictions.parquet")
    cases = read_samples(root / "data" / "iter=2" / "eval" / "badcases.parquet")
    scored = circular_copies(items)
    assert len(scored) > len(items)  # every rotation of every item
    later = [row for row in predictions if row["rounds"]]
    assert sum(not row["rounds"] for row in predictions) == len(scored)
    assert 0 < len(later) < len(scored) and {row["rounds"] for row in later} == {1}
    assert {row["iteration"] for row in predictions} == {2}
    single = [row for row in predictions if row["rounds"] == 0]
    assert len(cases) == sum(not row["correct"] for row in single)
    assert sorted(path.name for path in (root / "data" / "iter=2").iterdir()) == ["eval"]
    result = json.loads((root / "metrics" / "eval" / "iter=2.json").read_text())
    assert result["metric"] == "exact_match" and set(result["categories"]) == set(FAMILIES)
    assert result["overall"] == pytest.approx(sum(row["correct"] for row in single) / len(single))
    assert result["circular"]["n"] == len(items) and result["multi_round"]["rounds"] == 1
    # the multi-round block covers the items that had another question on their image
    assert result["multi_round"]["exact_match"]["n"] == len(later)
    assert result["multi_round"]["single_round_same_items"]["n"] == len(later)
    assert result["convention"]["mcq_suffix"] == questions.MCQ_SUFFIX
    assert result["convention"]["name"] == "mmbench"  # the world's manifest: MMBench's convention
    assert {case["provenance"]["source"].split("#")[0] for case in cases} == {"bench.tsv"}
    history = collect(root / "metrics" / "eval")
    assert history[0]["iteration"] == 2 and history[0]["overall"] == result["overall"]

    # `mmloop eval` with the repository's params: the same table and the same metrics.
    out = root / "cli-out"
    assert cli.main(["eval", "--model", "models/iter=2", "--bench", "data/bench/bench.tsv", "--name", "shapes",
                     "--iteration", "2", "--threads", "1", "--out", str(out)]) == 0
    cli_out = capsys.readouterr().out
    table = evaluation.format_table(result)
    assert table in stage_out and table in cli_out
    assert "circular" in table and "1-round" in table
    assert json.loads((out / "metrics.json").read_text()) == result
    assert started == ["evaluate@2"]


def test_evaluate_stage_on_a_pope_manifest_scores_yes_no_with_popes_convention(setup, tmp_path, monkeypatch,
                                                                                capsys):
    """params bench.source a POPE JSONL: the stage loads what the manifest names, in its format, so
    POPE's prompt convention and its metric block apply, and the bad cases name the file."""
    import numpy as np
    from PIL import Image

    from mmloop import stage

    monkeypatch.setattr(stage, "_record_startup", lambda name, seconds: None)
    _, _, model, processor = setup
    vlm.save(model, processor, tmp_path / "models" / "iter=1")
    folder = tmp_path / "user"
    folder.mkdir()
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        Image.fromarray(np.full((64, 64, 3), colour, dtype=np.uint8)).save(folder / name)
    records = [{"question_id": n, "image": image, "text": text, "label": label} for n, (image, text, label) in
               enumerate([("a.png", "Is there a red circle?", "yes"), ("a.png", "Is there a blue square?", "no"),
                          ("b.png", "Is there a blue square?", "yes"), ("b.png", "Is there a red circle?", "no")])]
    (folder / "pope_adversarial.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    items, kind = load_source(folder / "pope_adversarial.jsonl")
    write_manifest(tmp_path / "data" / "bench" / "bench.json", items, format=kind,
                   file="user/pope_adversarial.jsonl")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(batch_size=4, threads=1)
    params["bench"].update(source="user/pope_adversarial.jsonl")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages/evaluate.py", "1"])
    runpy.run_path(str(REPO / "stages" / "evaluate.py"), run_name="__main__")
    capsys.readouterr()
    result = json.loads((tmp_path / "metrics" / "eval" / "iter=1.json").read_text())
    assert kind == "pope" and result["convention"]["name"] == "pope"
    assert result["n"] == 4 and set(result["categories"]) == {"adversarial"}
    assert result["pope"]["overall"]["n"] == 4 and "f1" in result["pope"]["overall"]
    predictions = read_samples(tmp_path / "data" / "iter=1" / "eval" / "predictions.parquet")
    assert {row["answer_type"] for row in predictions} == {"yes_no"}
    assert {row["prediction"] for row in predictions} <= {"yes", "no"}
    assert all(row["prompt"].endswith(prompts.SHORT_SUFFIX) for row in predictions)
    cases = read_samples(tmp_path / "data" / "iter=1" / "eval" / "badcases.parquet")
    assert len(cases) == sum(not row["correct"] for row in predictions) == result["badcases"]
    assert all(case["image"] is None and case["provenance"]["source"].startswith("pope_adversarial.jsonl#")
               for case in cases)


def test_cli_refuses_to_publish_invalid_output(setup, tmp_path, capsys):
    """Store images whose bytes do not match their hash: the bad cases fail their suite, so
    `mmloop eval --out` writes nothing; with the right store the same run publishes."""
    from mmloop import cli
    from mmloop.world.scenes import image_path

    root, items, model, processor = setup
    vlm.save(model, processor, tmp_path / "model")
    for item in items:
        corrupt = tmp_path / "corrupt" / image_path(item["image_sha256"])
        corrupt.parent.mkdir(parents=True, exist_ok=True)
        corrupt.write_bytes(b"not the image")
    out = tmp_path / "published" / "eval"
    command = ["eval", "--model", str(tmp_path / "model"), "--bench", str(root / "data" / "bench" / "bench.tsv"),
               "--name", "shapes", "--params", str(tmp_path / "no-params.yaml"), "--threads", "1",
               "--out", str(out)]
    assert cli.main([*command, "--data-root", str(tmp_path / "corrupt")]) == 1
    error = capsys.readouterr().err
    assert f"mmloop eval: not written to {out}" in error and "suite 'badcases' failed" in error
    assert "check_image_sha256_matches" in error
    assert not (tmp_path / "published").exists()  # nothing at all: no folder, no temporary one

    assert cli.main([*command, "--data-root", str(root / "data")]) == 0
    assert sorted(path.name for path in out.parent.iterdir()) == ["eval"]
    assert sorted(path.name for path in out.iterdir()) == ["badcases.parquet", "metrics.json", "predictions.parquet"]
    metrics = json.loads((out / "metrics.json").read_text())
    # Without a params file the harness convention (letter replies) and EvaluateConfig's defaults apply.
    assert metrics["answer_format"] == "letter" and metrics["mode"] == "loglik" and "circular" not in metrics
    assert metrics["badcases"] == len(read_samples(out / "badcases.parquet")) > 0


class WordTokenizer:
    """Splits on whitespace only, so "ASSISTANT:" + "B" merges into one token "ASSISTANT:B"."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]
                              for text in texts]}


def test_continuations_merged_with_the_prompt_are_rescored():
    tokenizer = WordTokenizer()
    continuations = scoring.Continuations(tokenizer, {"A": "A", "B": "B"})
    context = "USER: q Answer with the option's letter from the given choices directly. ASSISTANT:"
    ids = tokenizer([context])["input_ids"][0]
    drop, letters = continuations.split(context, ids)
    assert drop == 1
    assert letters == {"A": tokenizer(["ASSISTANT:A"])["input_ids"][0], "B": tokenizer(["ASSISTANT:B"])["input_ids"][0]}
    assert len(continuations.cache) == 1  # the tail after the MCQ suffix is tokenised once
    # Ids that do not end with the cached tail are split per item (same answer here).
    assert continuations.split(context, ids + [999]) == (1, letters)
    spaced = scoring.Continuations(tokenizer, {"A": " A", "B": " B"})
    single = {key: tokenizer([key])["input_ids"][0] for key in "AB"}
    assert spaced.split(context, ids) == (0, single)


def test_dropped_prompt_tokens_add_the_same_term_to_every_option(setup, monkeypatch):
    """Rescoring the prompt's last token with each option (what a merging tokenizer needs) shifts
    every option of an item by the same log-probability, and goes through the per-option path."""
    expected = run(setup)
    split = scoring.Continuations.split

    def merged(self, context, ids):
        drop, letters = split(self, context, ids)
        return drop + 1, {key: [ids[-1], *value] for key, value in letters.items()}

    monkeypatch.setattr(scoring.Continuations, "split", merged)
    monkeypatch.setattr(scoring, "score_next_token", None)  # must not be used
    got = run(setup, batch_size=5)
    for a, b in zip(expected, got):
        shifts = [y - x for x, y in zip(a["option_scores"], b["option_scores"])]
        assert shifts[0] < -1e-3
        assert shifts == pytest.approx([shifts[0]] * len(shifts), abs=1e-4)
        assert a["prediction"] == b["prediction"]


def reference_option_scores(model, processor, item):
    """Unbatched: each option's text as the reply, scored by `reference_reply_scores`."""
    user = mcq_prompt(item["question"], item["options"], item["hint"], answer_format="option")
    return reference_reply_scores(model, processor, item, user, item["options"])


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


# ---------------------------------------------------------------- bench items, conventions, modes, rounds

STEPS = ("letter", "option_text", "yes_no", "judge", "none")


@pytest.fixture(scope="module")
def crowded(setup, tmp_path_factory):
    """Items on few images (several per image, for rounds) plus yes/no items made from the
    existence questions, as loaders return them; scored by the setup's model."""
    root = tmp_path_factory.mktemp("crowded")
    world.build(world.WorldConfig(splits={"bench": 4}), 2, root / "data" / "images", root / "data" / "world")
    made = benchmark.make_items(read_json(root / "data" / "world" / "instances_bench.json"), 2, seed=2,
                                data_root=root / "data")
    write_mmbench(made, root / "bench.tsv")
    items = read_mmbench(root / "bench.tsv")
    yes_no = [bench_item(**{**item, "index": f"yn-{item['index']}", "answer_type": "yes_no", "options": [],
                            "answer": item["options"]["AB".index(item["answer"])], "group": None})
              for item in items if item["category"] == "existence"]
    lone = dict(setup[1][1], index="lone")  # an image with no other item
    return items + yes_no + [lone]


def without_latency(rows):
    return [{key: value for key, value in row.items() if key != "latency_ms"} for row in rows]


def reference_reply_scores(model, processor, item, user, replies, history=()):
    """Unbatched and independent of evaluation.py: every full conversation (earlier turns, the
    user turn, the reply) in its own forward pass, the reply's tokens' log-probabilities summed
    (the end token excluded)."""
    import torch
    from PIL import Image

    image = Image.open(io.BytesIO(item["image"])).convert("RGB")
    turns = []
    for asked, answered in history:
        turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    conversation = chat.messages(turns + [{"role": "user", "content": user}])
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    prompt_length = processor(text=[prompt], images=[image], return_tensors="pt",
                              add_special_tokens=False)["input_ids"].shape[1]
    scores = []
    for reply in replies:
        full = processor.apply_chat_template(conversation + [{"role": "assistant", "content": reply}], tokenize=False)
        encoded = processor(text=[full], images=[image], return_tensors="pt", add_special_tokens=False)
        ids = encoded["input_ids"][0]
        end = len(ids) - 1 if int(ids[-1]) == processor.tokenizer.eos_token_id else len(ids)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(**encoded).logits[0].float(), dim=-1)
        scores.append(sum(float(logprobs[p - 1, ids[p]]) for p in range(prompt_length, end)))
    return scores


def test_rows_fill_every_prediction_schema_field(setup):
    _, items, _, _ = setup
    rows = run(setup)
    assert all(list(row) == prediction_schema().names for row in rows)
    to_table(rows, prediction_schema())  # the types fit too
    for row, item in zip(rows, items):
        assert row["answer_type"] == "mcq" and row["group"] == item["group"] and row["direct_answers"] == []
        assert row["raw_output"] is None and row["extracted_by"] == "loglik" and row["rounds"] == 0
        assert row["prompt"] == mcq_prompt(item["question"], item["options"], item["hint"])
    assert rows[0]["prompt"].startswith("Hint: Look closely.\n")


def test_older_item_dicts_without_the_new_fields_still_work(setup):
    _, items, _, _ = setup
    old = [{key: value for key, value in item.items() if key not in ("answer_type", "group", "direct_answers")}
           for item in items]
    assert [dict(row, group=None) for row in without_latency(run(setup))] == without_latency(
        evaluate_items(setup, old))


def test_default_convention_writes_mcq_prompt_byte_for_byte(setup):
    _, items, _, _ = setup
    for convention in (prompts.PromptConvention(), lookup("mmbench").convention,
                       lookup("jsonl").convention):
        for item in items:
            for answer_format in ("letter", "option"):
                expected = mcq_prompt(item["question"], item["options"], item["hint"], answer_format)
                assert convention.mcq(item["question"], item["options"], item["hint"], answer_format) == expected
                assert prompts.user_prompt(item, answer_format, convention) == expected


def test_conventions_for_each_benchmark_kind():
    assert set(BENCHMARKS) == {"mmbench", "pope", "mme", "aokvqa", "seedbench", "jsonl"}
    seed = lookup("SEEDBench").convention
    assert seed.mcq("What is it?", ["a cat", "a dog"]) == (
        "What is it?\nA. a cat\nB. a dog\nAnswer with the option's letter from the given choices directly.")
    assert lookup("aokvqa").convention.options_header is False
    assert seed.mcq("Q?", ["x", "y"], answer_format="option").endswith(questions.MCQ_SUFFIXES["option"])
    pope = lookup("pope").convention
    assert pope.yes_no("Is there a dog in the image?") == (
        "Is there a dog in the image?\nAnswer the question using a single word or phrase.")
    assert pope.yes_no("Is it red?", "Look left.") == (
        "Hint: Look left.\nIs it red?\nAnswer the question using a single word or phrase.")
    mme = lookup("mme").convention
    assert mme.yes_no("Is this a cat? Please answer yes or no.") == (
        "Is this a cat?\nAnswer the question using a single word or phrase.")
    after = prompts.PromptConvention(hint_first=False, options_header=False, mcq_suffix="")
    assert after.mcq("Q?", ["x", "y"], "h") == "Q?\nHint: h\nA. x\nB. y"
    assert json.loads(json.dumps(mme.as_dict())) == {
        "name": "mme", "mcq_suffix": questions.MCQ_SUFFIX, "short_suffix": prompts.SHORT_SUFFIX,
        "yes_no_suffix": prompts.SHORT_SUFFIX, "hint_first": True, "options_header": True,
        "strip_from_question": ["Please answer yes or no."]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        mme.hint_first = False
    with pytest.raises(ValueError, match="unknown benchmark kind 'vqav2'"):
        lookup("vqav2")
    for name, entry in BENCHMARKS.items():  # each format's module names its own convention
        assert entry.name == entry.convention.name == name and entry.read.__name__ == f"read_{name}"


def test_convention_changes_the_scored_prompt(crowded, setup):
    items = [item for item in crowded if item["answer_type"] == "mcq"][:4]
    rows = evaluate_items(setup, items, convention=lookup("seedbench").convention)
    for row, item in zip(rows, items):
        assert row["prompt"] == lookup("seedbench").convention.mcq(item["question"], item["options"])
        assert "Options:" not in row["prompt"]


def test_yes_no_items_score_yes_and_no_like_full_sequences(crowded, setup):
    _, _, model, processor = setup
    items = [item for item in crowded if item["answer_type"] == "yes_no"]
    assert {item["answer"] for item in items} == {"yes", "no"}
    for answer_format, replies in (("letter", ["Yes", "No"]), ("option", ["yes", "no"])):
        rows = evaluate_items(setup, items, answer_format=answer_format, batch_size=3)
        for row, item in zip(rows, items):
            user = lookup("pope").convention.yes_no(item["question"])
            assert row["prompt"] == user and row["options"] == [] and row["answer_type"] == "yes_no"
            assert row["option_scores"] == pytest.approx(
                reference_reply_scores(model, processor, item, user, replies), abs=1e-4)
            assert row["prediction"] == ("yes", "no")[int(row["option_scores"][1] > row["option_scores"][0])]
            assert row["correct"] == (row["prediction"] == item["answer"])
    with favouring(model, processor, "yes"):
        rows = evaluate_items(setup, items, answer_format="option")
    assert [row["prediction"] for row in rows] == ["yes"] * len(items)
    assert [row["correct"] for row in rows] == [item["answer"] == "yes" for item in items]


def test_mixed_mcq_and_yes_no_batches_give_the_same_scores(crowded, setup):
    alone = {row["item"]: row["option_scores"]
             for kind in ("mcq", "yes_no")
             for row in evaluate_items(setup, [item for item in crowded if item["answer_type"] == kind])}
    for row in evaluate_items(setup, crowded, batch_size=32):
        assert row["option_scores"] == pytest.approx(alone[row["item"]], abs=1e-4)


@pytest.mark.parametrize("kwargs", [{"answer_format": "option"}, {"answer_format": "option", "rounds": 2},
                                    {"answer_format": "letter", "rounds": 1}])
def test_shared_prefix_scores_equal_the_per_option_path(crowded, setup, kwargs):
    per_option = evaluate_items(setup, crowded, method="per_option", batch_size=5, **kwargs)
    shared = evaluate_items(setup, crowded, method="shared_prefix", batch_size=5, **kwargs)
    assert any(" " in option for item in crowded for option in item["options"])  # multi-token replies
    for a, b in zip(per_option, shared):
        assert a["option_scores"] == pytest.approx(b["option_scores"], abs=1e-4)
        assert a["prediction"] == b["prediction"]


def test_auto_scores_multi_token_replies_on_the_shared_prefix(setup, monkeypatch):
    """Option-text replies: the per-option path only runs once, on one item, as the self-check."""
    _, items, _, _ = setup
    expected = run(setup, method="per_option", answer_format="option")
    calls = []
    per_option = scoring.score_per_option

    def counted(model, encoded, lengths, *args):
        calls.append(len(lengths))
        return per_option(model, encoded, lengths, *args)

    monkeypatch.setattr(scoring, "score_per_option", counted)
    got = run(setup, answer_format="option", batch_size=5)
    assert calls == [1]
    for a, b in zip(expected, got):
        assert a["option_scores"] == pytest.approx(b["option_scores"], abs=1e-4)


def test_shared_prefix_falls_back_where_it_raises_or_disagrees(setup, monkeypatch):
    expected = run(setup, method="per_option", answer_format="option")

    def unsupported(cache, index):
        raise NotImplementedError("no cache selection here")

    monkeypatch.setattr(scoring, "select_cache", unsupported)
    with pytest.warns(UserWarning, match="shared-prefix scoring does not work.*no cache selection"):
        got = run(setup, answer_format="option")
    for a, b in zip(expected, got):
        assert a["option_scores"] == pytest.approx(b["option_scores"], abs=1e-4)
    with pytest.raises(NotImplementedError, match="no cache selection"):
        run(setup, answer_format="option", method="shared_prefix")
    monkeypatch.undo()

    shared = scoring.score_shared_prefix
    monkeypatch.setattr(scoring, "score_shared_prefix",
                        lambda *args: [[score + 1.0 for score in row] for row in shared(*args)])
    with pytest.warns(UserWarning, match="differ from the per-option path"):
        got = run(setup, answer_format="option")
    for a, b in zip(expected, got):
        assert a["option_scores"] == pytest.approx(b["option_scores"], abs=1e-4)


def test_generate_batched_equals_unbatched_and_restores_padding(crowded, setup):
    _, _, _, processor = setup
    items = crowded[:6] + [item for item in crowded if item["answer_type"] == "yes_no"][:3]
    batched = evaluate_items(setup, items, mode="generate", batch_size=8, max_new_tokens=6)
    assert processor.tokenizer.padding_side == "right"
    unbatched = evaluate_items(setup, items, mode="generate", batch_size=1, max_new_tokens=6)
    assert [row["raw_output"] for row in batched] == [row["raw_output"] for row in unbatched]
    # Prompts of different lengths share a batch, so left padding is really exercised.
    assert len({len(row["prompt"]) for row in batched}) > 1
    validate([row for row in batched if row["answer_type"] == "mcq"], "predictions", source="p", iteration=0)
    for row, item in zip(batched, items):
        assert row["mode"] == "generate" and row["option_scores"] == [] and isinstance(row["raw_output"], str)
        assert row["extracted_by"] in STEPS and row["latency_ms"] > 0
        assert row["prediction"] in (*candidates(normalise_item(item)), "none")
        assert row["correct"] == (row["prediction"] == item["answer"])


JUDGE_MODULE = '''
asked = []


def judge(question, options, text):
    asked.append((question, list(options), text))
    return "C" if len(options) > 2 else "no"
'''


def test_generate_extracts_the_answer_and_passes_the_judge(crowded, setup, tmp_path, monkeypatch):
    _, _, model, processor = setup
    mcq = [item for item in crowded if item["answer_type"] == "mcq"][:4]
    with favouring(model, processor, "B"):
        rows = evaluate_items(setup, mcq, mode="generate", max_new_tokens=1)
    assert [(row["raw_output"], row["prediction"], row["extracted_by"]) for row in rows] == [("B", "B", "letter")] * 4
    with favouring(model, processor, "yes"):
        rows = evaluate_items(setup, [item for item in crowded if item["answer_type"] == "yes_no"],
                              mode="generate", max_new_tokens=1)
    assert {(row["raw_output"], row["prediction"], row["extracted_by"]) for row in rows} == {("yes", "yes", "yes_no")}

    # The judge is named the way params name it: "package.module:function".
    (tmp_path / "eval_judge.py").write_text(JUDGE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    mixed = mcq[:2] + [item for item in crowded if item["answer_type"] == "yes_no"][:1]
    with favouring(model, processor, "image"):  # a word that is neither a letter nor an option
        rows = evaluate_items(setup, mixed, mode="generate", max_new_tokens=1, judge="eval_judge:judge")
    assert [row["raw_output"] for row in rows] == ["image"] * 3
    assert [row["extracted_by"] for row in rows] == ["judge"] * 3
    import eval_judge

    assert sorted(question for question, *_ in eval_judge.asked) == sorted(item["question"] for item in mixed)
    for row, item in zip(rows, mixed):
        assert row["prediction"] == ("C" if len(item["options"]) > 2 else "B" if item["options"] else "no")


def expected_same_image_history(items, position, k, answer_format="letter"):
    """Written out independently: the other items of the image, in input order after this one
    (wrapping), not of its group and not asking the same question, answered correctly."""
    item = items[position]
    same = [p for p, other in enumerate(items) if other["image_sha256"] == item["image_sha256"]]
    at = same.index(position)
    chosen = [p for p in same[at + 1:] + same[:at]
              if (item["group"] is None or items[p]["group"] != item["group"])
              and items[p]["question"] != item["question"]][:k]
    history = []
    for p in chosen:
        other = items[p]
        if other["answer_type"] == "yes_no":
            user = lookup("pope").convention.yes_no(other["question"], other["hint"])
            reply = {"yes": "Yes", "no": "No"}[other["answer"]]
        else:
            user = mcq_prompt(other["question"], other["options"], other["hint"], answer_format)
            reply = other["answer"] if answer_format == "letter" else other["options"]["ABCD".index(other["answer"])]
        history.append((user, reply))
    return history


def test_rounds_zero_is_the_single_round_evaluation(crowded, setup):
    for mode in ("loglik", "generate"):
        single = evaluate_items(setup, crowded, mode=mode, max_new_tokens=3)
        for source in config.ROUND_SOURCES:
            assert without_latency(evaluate_items(setup, crowded, mode=mode, max_new_tokens=3, rounds=0,
                                                  round_source=source)) == without_latency(single)


def test_same_image_rounds_put_other_items_first(crowded, setup):
    _, _, model, processor = setup
    single = evaluate_items(setup, crowded)
    rows = evaluate_items(setup, crowded, rounds=2, batch_size=7)
    counts = []
    for position, (row, one) in enumerate(zip(rows, single)):
        history = expected_same_image_history(crowded, position, 2)
        counts.append(row["rounds"])
        assert row["rounds"] == len(history)
        if history:
            assert row["prompt"] != one["prompt"] and row["prompt"].endswith(f"\nUSER: {one['prompt']}")
            assert row["prompt"] == prompts.recorded_prompt(history, one["prompt"])
        else:
            assert row["prompt"] == one["prompt"]
    assert 2 in counts and min(counts) < 2, "the bench should have images with 3+ items and some with fewer"
    # The scores are those of the whole conversation, scored unbatched.
    for position in [p for p, row in enumerate(rows) if row["rounds"]][:4]:
        item = crowded[position]
        replies = prompts.option_replies(normalise_item(item))
        user = single[position]["prompt"]
        assert rows[position]["option_scores"] == pytest.approx(reference_reply_scores(
            model, processor, item, user, replies, expected_same_image_history(crowded, position, 2)), abs=1e-4)
    for a, b in zip(rows, evaluate_items(setup, crowded, rounds=2, batch_size=1)):
        assert a["option_scores"] == pytest.approx(b["option_scores"], abs=1e-4) and a["prompt"] == b["prompt"]


def test_same_image_rounds_skip_the_items_own_group(crowded, setup):
    by_image = {}
    for item in crowded:
        by_image.setdefault(item["image_sha256"], []).append(item)
    sha, crowd = max(by_image.items(), key=lambda entry: len(entry[1]))
    grouped = [dict(item, group="one-group") if item["image_sha256"] == sha else item for item in crowded]
    rows = evaluate_items(setup, grouped, rounds=3)
    assert len(crowd) >= 3
    assert all(row["rounds"] == 0 for row in rows if row["image_sha256"] == sha)
    assert any(row["rounds"] > 0 for row in rows)


@pytest.mark.parametrize("mode", config.EVAL_MODES)
def test_generic_rounds_answer_generic_instructions_once_per_image_and_turn(crowded, setup, monkeypatch, mode):
    _, _, model, _ = setup
    calls = []
    generate = model.generate

    def counted(**kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", counted)
    single = evaluate_items(setup, crowded, mode=mode, max_new_tokens=2)
    calls.clear()
    rows = evaluate_items(setup, crowded, mode=mode, max_new_tokens=2, rounds=2, round_source="generic",
                          batch_size=64, round_max_new_tokens=5)
    images = len({item["image_sha256"] for item in crowded})
    # One batch per turn over every image, then (generate mode) one batch for the scored questions.
    assert calls == [images, images] + ([len(crowded)] if mode == "generate" else [])
    contexts = {}
    for row, one in zip(rows, single):
        assert row["rounds"] == 2
        context, _, scored = row["prompt"].rpartition("\nUSER: ")
        assert scored == one["prompt"]
        assert context.startswith(f"USER: {prompts.GENERIC_INSTRUCTIONS[0]}\nASSISTANT: ")
        assert f"\nUSER: {prompts.GENERIC_INSTRUCTIONS[1]}\nASSISTANT: " in context
        assert contexts.setdefault(row["image_sha256"], context) == context  # shared by the image's items
    if mode == "loglik":
        assert [row["option_scores"] for row in rows] != [row["option_scores"] for row in single]


def test_generate_mode_with_same_image_rounds(crowded, setup):
    rows = evaluate_items(setup, crowded, mode="generate", rounds=1, max_new_tokens=2)
    assert any(row["rounds"] == 1 for row in rows)
    assert all(row["prompt"].startswith("USER: ") for row in rows if row["rounds"])
    assert all(row["extracted_by"] in STEPS for row in rows)


@pytest.mark.parametrize("change, message", [
    ({"question": ""}, "benchmark item '0': field 'question' is missing"),
    ({"answer": "E"}, "benchmark item '0': field 'answer': 'E' is not one of the option letters"),
    ({"answer_type": "yes_no"}, "benchmark item '0': field 'options': a yes_no item has no options"),
    ({"answer_type": "yes_no", "options": [], "answer": "maybe"}, "benchmark item '0': field 'answer': a yes_no"),
    ({"answer_type": "open"}, "benchmark item '0': field 'answer_type'"),
    ({"options": ["only one"]}, "benchmark item '0': field 'options': an mcq item needs 2"),
])
def test_bad_items_name_the_item_and_field(setup, change, message):
    _, items, _, _ = setup
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_items(setup, [dict(items[0], **change)] + items[1:])


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "sample"}, r"mode\n  Input should be 'loglik' or 'generate'"),
    ({"round_source": "other"}, r"round_source\n  Input should be 'same_image' or 'generic'"),
    ({"rounds": -1}, r"rounds\n  Input should be greater than or equal to 0"),
    ({"max_new_tokens": 0}, r"max_new_tokens\n  Input should be greater than or equal to 1"),
    ({"rounds": 7, "round_source": "generic"}, "rounds must be <= 6"), ({"method": "fast"}, "method must be one of"),
    ({"round_max_new_tokens": 0}, "round_max_new_tokens must be >= 1"),
    ({"judge": "no_colon_here"}, "evaluate.judge: 'no_colon_here' must look like 'package.module:function'"),
])
def test_bad_arguments(setup, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(setup, **kwargs)


def test_badcases_of_yes_no_items(crowded, setup, tmp_path):
    items = [item for item in crowded if item["answer_type"] == "yes_no"]
    rows = [dict(row, correct=False) for row in evaluate_items(setup, items)]
    cases = evaluation.badcases(rows, items, 0, tmp_path, answer_format="option")
    for case, item in zip(cases, items):
        assert case["format"] == "yes_no" and case["answer"] == item["answer"] and case["options"] == []
        assert case["conversations"][1] == {"role": "assistant", "content": item["answer"]}
        assert case["conversations"][0]["content"].endswith(prompts.SHORT_SUFFIX)
