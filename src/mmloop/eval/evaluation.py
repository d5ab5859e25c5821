"""The evaluation driver: items scored into prediction rows, the metrics file, the bad cases,
and publishing them, the same way for the DVC evaluate stage and `mmloop eval`.

Modes (`EvaluateConfig.mode`):
- "loglik": each candidate reply is scored by its log-likelihood after the prompt
  (`scoring.LoglikScorer`); the prediction is the highest (ties go to the earlier option).
  mcq replies are the letters (or, with answer_format "option", the option texts); yes_no
  replies are "Yes"/"No" ("yes"/"no" with answer_format "option", as the tiny model answers
  existence questions).
- "generate": batched greedy generation, the new tokens read by `answers.extract_choice` /
  `answers.extract_yes_no` (the `judge` hook last).

With `rounds=k` the scored question follows k earlier (user, assistant) turns about the same
image (`prompts`): `round_source="same_image"` asks k other items on that image, answered
correctly; "generic" asks k fixed instructions and lets the model answer them itself
(greedy, once per image and turn). The row's `rounds` is the number of earlier turns
actually used and its `prompt` holds them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmloop.eval import answers, metrics, scoring
from mmloop.eval.benchmarks import lookup
from mmloop.eval.items import candidates, circular_copies, decode_images, item_id, normalise_item
from mmloop.eval.prompts import (DEFAULT_CONVENTION, GENERIC_INSTRUCTIONS, PromptConvention, chat_texts,
                                 conversation, correct_reply, option_replies, recorded_prompt, same_image_rounds,
                                 user_prompt)
from mmloop.questions import check_answer_format
from mmloop.schema import OPTION_LETTERS, sample

if TYPE_CHECKING:
    from mmloop.config import EvaluateConfig

# Longest reply the model writes to a generic earlier turn (a sentence, not a letter).
GENERIC_REPLY_TOKENS = 32
# The eval folder's files; the DVC stage writes the metrics to metrics/ instead.
PREDICTIONS_FILE, BADCASES_FILE, METRICS_FILE = "predictions.parquet", "badcases.parquet", "metrics.json"
# The benchmark's own metric blocks that the table prints below the accuracies.
BENCHMARK_BLOCKS = ("pope", "mme", "aokvqa_direct")


def load_judge(spec: str | None) -> Callable | None:
    """The judge hook named "package.module:function" (called as judge(question, options, text)
    and returning a letter, or "yes"/"no", or None), or None when no judge is configured."""
    if not spec:
        return None
    import importlib

    module_name, _, function = str(spec).partition(":")
    if not function:
        raise ValueError(f"evaluate.judge: {spec!r} must look like 'package.module:function'")
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"evaluate.judge: cannot load {spec!r} ({err})") from None


# ---------------------------------------------------------------- scoring items

def evaluate(model, processor, items: Sequence[Mapping[str, Any]], settings: EvaluateConfig, answer_format: str, *,
             benchmark: str, model_name: str, iteration: int, convention: PromptConvention = DEFAULT_CONVENTION,
             method: str = "auto", round_max_new_tokens: int = GENERIC_REPLY_TOKENS) -> list[dict[str, Any]]:
    """Prediction rows (prediction schema) for `items`, in item order, scored as `settings` say
    (mode, batch size, rounds, generation length, judge), the prompts written by `convention`.

    `method` picks the log-likelihood path ("auto"; "shared_prefix" / "per_option" force one);
    generic earlier turns are answered with up to `round_max_new_tokens` tokens."""
    import torch

    from mmloop.io import progress

    if int(round_max_new_tokens) < 1:
        raise ValueError(f"evaluate: round_max_new_tokens must be >= 1, got {round_max_new_tokens}")
    if settings.round_source == "generic" and settings.rounds > len(GENERIC_INSTRUCTIONS):
        raise ValueError(f"evaluate: rounds must be <= {len(GENERIC_INSTRUCTIONS)} with round_source 'generic' "
                         f"(the generic instructions), got {settings.rounds}")
    check_answer_format(answer_format)
    scorer = scoring.LoglikScorer(model, processor, method=method, batch_size=settings.batch_size)
    judge = load_judge(settings.judge)
    items = [normalise_item(item, position) for position, item in enumerate(items)]
    if not items:
        return []
    images = decode_images(items)
    users = [user_prompt(item, answer_format, convention) for item in items]

    was_training = model.training
    model.eval()
    bar = progress(total=len(items), desc=f"evaluate {model_name} ({settings.mode})", unit="item")
    try:
        with torch.inference_mode():
            histories = _earlier_turns(model, processor, items, images, settings, answer_format, convention,
                                       int(round_max_new_tokens))
            texts = chat_texts(processor, [conversation(history, user) for history, user in zip(histories, users)])
            arrays = [images[item["image_sha256"]] for item in items]
            if settings.mode == "loglik":
                results = _loglik_results(scorer, items, texts, arrays, answer_format, convention, bar)
            else:
                results = _generate_results(model, processor, items, texts, arrays, settings, judge, bar)
    finally:
        bar.close()
        if was_training:
            model.train()
    return [_prediction(item, **result, mode=settings.mode, rounds=len(history), prompt=recorded_prompt(history, user),
                        model_name=model_name, iteration=iteration, benchmark=benchmark)
            for item, result, history, user in zip(items, results, histories, users)]


def _earlier_turns(model, processor, items, images, settings: EvaluateConfig, answer_format: str,
                   convention: PromptConvention, round_max_new_tokens: int) -> list[list[tuple[str, str]]]:
    """Each item's earlier (user, assistant) turns: none, other items on its image, or the
    generic instructions with the model's own replies."""
    if not settings.rounds:
        return [[] for _ in items]
    if settings.round_source == "same_image":
        return same_image_rounds(items, settings.rounds, answer_format=answer_format, convention=convention)
    by_image = _generic_rounds(model, processor, items, images, settings.rounds, settings.batch_size,
                               round_max_new_tokens)
    return [by_image[item["image_sha256"]] for item in items]


def _generic_rounds(model, processor, items, images, rounds: int, batch_size: int,
                    max_new_tokens: int) -> dict[str, list[tuple[str, str]]]:
    """{image_sha256: [(instruction, the model's own reply), ...]}: turn t of every image is
    generated once (batched over images) after that image's turns 0..t-1, and shared by all
    items on the image."""
    from mmloop.io import progress

    shas = list(dict.fromkeys(item["image_sha256"] for item in items))
    histories: dict[str, list[tuple[str, str]]] = {sha: [] for sha in shas}
    bar = progress(total=rounds * len(shas), desc="generic rounds", unit="reply")
    try:
        for instruction in GENERIC_INSTRUCTIONS[:rounds]:
            texts = chat_texts(processor, [conversation(histories[sha], instruction) for sha in shas])
            replies, _ = scoring.generate_batched(model, processor, texts, [images[sha] for sha in shas],
                                                  batch_size=batch_size, max_new_tokens=max_new_tokens, bar=bar)
            for sha, reply in zip(shas, replies):
                histories[sha].append((instruction, reply))
    finally:
        bar.close()
    return histories


def _loglik_results(scorer: scoring.LoglikScorer, items, texts, arrays, answer_format: str,
                    convention: PromptConvention, bar) -> list[dict[str, Any]]:
    """The highest-scoring candidate of each item (ties go to the earlier one), with every score."""
    replies = [option_replies(item, answer_format) for item in items]
    scores, latencies = scorer.score(texts, arrays, replies, [item["answer_type"] for item in items],
                                     convention.suffixes(), [item["index"] for item in items], bar)
    results = []
    for item, item_scores, latency_ms in zip(items, scores, latencies):
        best = max(range(len(item_scores)), key=lambda j: (item_scores[j], -j))
        results.append({"prediction": candidates(item)[best], "option_scores": item_scores, "raw_output": None,
                        "extracted_by": "loglik", "latency_ms": latency_ms})
    return results


def _generate_results(model, processor, items, texts, arrays, settings: EvaluateConfig, judge: Callable | None,
                      bar) -> list[dict[str, Any]]:
    """Each item's generated answer and what the extraction read from it."""
    outputs, latencies = scoring.generate_batched(model, processor, texts, arrays, batch_size=settings.batch_size,
                                                  max_new_tokens=settings.max_new_tokens, bar=bar)
    results = []
    for item, text, latency_ms in zip(items, outputs, latencies):
        if item["answer_type"] == "yes_no":
            prediction, step = answers.extract_yes_no(text, judge=judge, question=item["question"])
        else:
            prediction, step = answers.extract_choice(text, item["options"], judge=judge, question=item["question"])
        results.append({"prediction": prediction, "option_scores": [], "raw_output": text, "extracted_by": step,
                        "latency_ms": latency_ms})
    return results


def _prediction(item: Mapping[str, Any], *, prediction: str, option_scores: Sequence[float],
                raw_output: str | None, extracted_by: str, latency_ms: float, mode: str, rounds: int,
                prompt: str, model_name: str, iteration: int, benchmark: str) -> dict[str, Any]:
    """A prediction row, fields in `prediction_schema` order."""
    return {
        "item": item_id(benchmark, item["index"]), "benchmark": benchmark, "model": model_name,
        "iteration": int(iteration), "mode": mode, "answer_type": item["answer_type"],
        "category": item.get("category"), "l2_category": item.get("l2_category"), "group": item["group"],
        "question": item["question"], "options": list(item["options"]), "answer": item["answer"],
        "prediction": prediction, "correct": prediction == item["answer"], "raw_output": raw_output,
        "extracted_by": extracted_by, "option_scores": [float(score) for score in option_scores],
        "direct_answers": list(item["direct_answers"]), "rounds": int(rounds), "prompt": prompt,
        "latency_ms": float(latency_ms), "image_sha256": item["image_sha256"],
    }


# ---------------------------------------------------------------- a benchmark run and its metrics

def summary(rows: Iterable[Mapping[str, Any]], kind: str | None = None) -> dict[str, Any]:
    """The labelled metric blocks for a set of predictions:
    - "exact_match": `metrics.accuracy` (every row its own question), always;
    - "circular": `metrics.circular`, only when some group has more than one row;
    - the blocks of benchmark format `kind` ("pope", "mme", "aokvqa_direct"), when it has any."""
    rows = metrics.nonempty(rows, "summary")
    result: dict[str, Any] = {"exact_match": metrics.accuracy(rows)}
    if metrics.has_circular_groups(rows):
        result["circular"] = metrics.circular(rows)
    own_blocks = lookup(kind).metric_blocks if kind is not None else None
    if own_blocks is not None:
        result.update(own_blocks(rows))
    return result


def run_benchmark(model, processor, items: Sequence[Mapping[str, Any]], settings: EvaluateConfig,
                  answer_format: str, *, kind: str, benchmark: str, model_name: str, iteration: int
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(items scored, prediction rows, metrics) for a benchmark of format `kind`, the way the
    DVC stage and `mmloop eval` both run it. The items scored are `items` plus any circular
    copies (`settings.circular`).

    The metrics' top level is the single-round exact-match accuracy (`metric` says so) that
    the loop reads; labelled blocks follow: "circular", the benchmark's own metrics ("pope",
    "mme", "aokvqa_direct"), and "multi_round" (the same blocks after `settings.rounds`
    earlier turns). The prompt convention and the scoring settings are recorded so the
    numbers can be reproduced."""
    convention = lookup(kind).convention
    if settings.circular:
        items = circular_copies(items)
    identity = dict(benchmark=benchmark, model_name=model_name, iteration=iteration, convention=convention)
    predictions = evaluate(model, processor, items, settings.model_copy(update={"rounds": 0}), answer_format,
                           **identity)
    blocks = summary(predictions, kind)
    result = {"metric": "exact_match", **blocks.pop("exact_match"), **blocks,
              "benchmark": benchmark, "model": model_name, "iteration": int(iteration), "mode": settings.mode,
              "answer_format": answer_format, "convention": convention.as_dict()}
    if settings.rounds:
        # Items without another question on their image get no earlier turn: they would only
        # repeat the single-round run, so the multi-round block covers the others and compares
        # them with their own single-round accuracy.
        later = [row for row in evaluate(model, processor, items, settings, answer_format, **identity)
                 if row["rounds"]]
        if later:
            predictions += later
            scored = {row["item"] for row in later}
            result["multi_round"] = {
                "rounds": settings.rounds, "round_source": settings.round_source, **summary(later, kind),
                "single_round_same_items": metrics.accuracy(
                    [row for row in predictions if not row["rounds"] and row["item"] in scored])}
    return list(items), predictions, result


def format_table(result: Mapping[str, Any]) -> str:
    """Per-category accuracy as a text table: exact match, then CircularEval and the
    multi-round exact match when they were measured, each column labelled. The multi-round
    columns cover the items that had earlier turns, next to their own single-round accuracy."""
    columns = [("exact", result)]
    if "circular" in result:
        columns.append(("circular", result["circular"]))
    multi = result.get("multi_round")
    if multi:
        # The multi-round items (those with other questions on their image) in one round, then in k.
        columns.append(("paired 1-round", multi["single_round_same_items"]))
        columns.append((f"{multi['rounds']}-round", multi["exact_match"]))
        if "circular" in multi:
            columns.append((f"{multi['rounds']}-round circular", multi["circular"]))
    width = max([len("overall"), *map(len, result["categories"])]) + 2
    lines = [f"{result['benchmark']} / {result['model']} ({result['mode']}, {result['answer_format']} replies)",
             "category".ljust(width) + "".join(name.rjust(max(10, len(name) + 2)) for name, _ in columns) + "n".rjust(7)]
    for category in [*result["categories"], "overall"]:
        cells = []
        for name, block in columns:
            value = block["overall"] if category == "overall" else block["categories"].get(category)
            cells.append(("-" if value is None else f"{value:.3f}").rjust(max(10, len(name) + 2)))
        count = result["n"] if category == "overall" else result["n_per_category"][category]
        lines.append(category.ljust(width) + "".join(cells) + str(count).rjust(7))
    for name in BENCHMARK_BLOCKS:
        if name in result:
            lines.append(f"{name}: {json.dumps(result[name], sort_keys=True)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- bad cases and the published folder

def badcases(predictions: Iterable[Mapping[str, Any]], items: Sequence[Mapping[str, Any]], iteration: int,
             data_root: str | os.PathLike = "data", *, source: str = "bench.tsv", answer_format: str = "letter",
             convention: PromptConvention = DEFAULT_CONVENTION) -> list[dict[str, Any]]:
    """Sample rows (origin "badcase") for the wrong predictions: the item's (single-round) user
    turn and the correct reply (letter or option text; Yes/No for yes_no items) as the
    assistant turn; `image` is the content-addressed store path when that file exists under
    `data_root`, else null (the image is then only in the benchmark file)."""
    from mmloop.world.scenes import image_path

    data_root = Path(data_root)
    by_benchmark: dict[str, dict[str, Mapping[str, Any]]] = {}
    rows = []
    for prediction in predictions:
        if bool(prediction["correct"]):
            continue
        benchmark = prediction["benchmark"]
        if benchmark not in by_benchmark:
            by_benchmark[benchmark] = {item_id(benchmark, item["index"]): item for item in items}
        item = by_benchmark[benchmark].get(prediction["item"])
        if item is None:
            raise ValueError(f"badcases: prediction item {prediction['item']!r} is not among the benchmark items")
        item = normalise_item(item)
        sha = item["image_sha256"]
        stored = image_path(sha)
        if item["answer_type"] == "yes_no":
            fmt, answer = "yes_no", item["answer"]
        else:
            fmt, answer = "mcq", item["options"][OPTION_LETTERS.index(item["answer"])]
        conversations = [{"role": "user", "content": user_prompt(item, answer_format, convention)},
                         {"role": "assistant", "content": correct_reply(item, answer_format)}]
        rows.append(sample(
            sample_id=f"badcase-{int(iteration)}-{prediction['item']}", parent_ids=[], iteration=int(iteration),
            origin="badcase", image=stored if (data_root / stored).is_file() else None, image_sha256=sha,
            conversations=conversations, category=item.get("category"), format=fmt, question=item["question"],
            options=list(item["options"]), answer=answer,
            provenance={"backend": "benchmark", "model": prediction.get("model"),
                        "source": f"{source}#{item['index']}"},
        ))
    return rows


def publish(out_dir: str | os.PathLike, items: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]],
            result: dict[str, Any], *, iteration: int, answer_format: str, source: str,
            data_root: str | os.PathLike = "data", metrics_path: str | os.PathLike | None = None
            ) -> list[dict[str, Any]]:
    """Validate one run's outputs, then write them: `out_dir` holds predictions.parquet and
    badcases.parquet (the wrong single-round answers, see `badcases`; `source` names the
    benchmark file in their provenance), and the metrics `result`, with the bad-case count
    added, go to `metrics_path` (default `out_dir`/metrics.json). Both suites ("predictions",
    "badcases") pass before anything is written and the folder replaces any old one whole, so
    a failing suite (ValidationError) publishes nothing. Returns the bad cases."""
    from mmloop.io import atomic_path, write_json
    from mmloop.schema import prediction_schema, write_samples
    from mmloop.validation import validate

    out_dir = Path(out_dir)
    single_round = [row for row in predictions if not row["rounds"]]
    bad = badcases(single_round, items, iteration, data_root, source=source, answer_format=answer_format)
    validate(predictions, "predictions", source=out_dir / PREDICTIONS_FILE, iteration=iteration)
    validate(bad, "badcases", source=out_dir / BADCASES_FILE, iteration=iteration, data_root=data_root)
    result["badcases"] = len(bad)
    with atomic_path(out_dir, directory=True) as tmp:
        write_samples(predictions, tmp / PREDICTIONS_FILE, schema=prediction_schema())
        write_samples(bad, tmp / BADCASES_FILE)
        write_json(tmp / METRICS_FILE if metrics_path is None else metrics_path, result)
    return bad
