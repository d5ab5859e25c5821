"""Benchmark evaluation: multiple-choice questions scored by option log-likelihood.

Each item becomes one user turn (the MMBench prompt: hint, question, lettered options,
"Answer with the option's letter ..."; the image in the same turn) rendered by the
processor's chat template with the generation prompt. Each option's score is

    log p(letter tokens | prompt)

summed over the letter's tokens. The end-of-turn token after the letter is NOT scored:
every option is a single letter followed by the same end token, so scoring it adds
noise (how sure the model is that a letter ends the turn) rather than telling the
options apart, and leaving it out keeps the common case to one forward pass.
The prediction is the option with the highest score (ties go to the earlier letter).

The letter's tokens are what the chat template puts after the generation prompt when
the assistant answers with that letter (" B" after "ASSISTANT:" in the tiny model's
template), tokenised in context: when a tokenizer merges the end of the prompt with the
letter, the merged prompt tokens are dropped and scored as part of the continuation.

Batching (right padding, so positions match an unbatched run):
- single-token letters (the tiny word-level tokenizer, most hub tokenizers): one
  forward pass over the batch of prompts; the next-token log-probabilities at each
  prompt's last token give every option's score at once;
- otherwise: one sequence per (item, option), prompt plus continuation, scored in
  batches (the per-option fallback, `method="per_option"`; about 3.5x slower on the tiny model).

Items are batched in order of prompt length (stable), which keeps padding small and the
result deterministic; `latency_ms` is the batch's wall time divided by its size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.questions import MCQ_SUFFIXES, mcq_prompt, mcq_reply
from mmloop.schema import OPTION_LETTERS, sample

MODE = "loglik"
METHODS = ("auto", "per_option")


def item_id(benchmark: str, index: Any) -> str:
    """A prediction's `item`: the benchmark name and the TSV index ("shapes-17")."""
    return f"{benchmark}-{index}"


def user_prompt(item: Mapping[str, Any], answer_format: str = "letter") -> str:
    return mcq_prompt(item["question"], item["options"], item.get("hint"), answer_format)


def option_replies(item: Mapping[str, Any], answer_format: str = "letter") -> list[str]:
    """The assistant reply that picks each option: its letter, or its text."""
    return [mcq_reply(item["options"], option, answer_format) for option in item["options"]]


# ---------------------------------------------------------------- scoring

def evaluate(model, processor, items: Sequence[Mapping[str, Any]], *, batch_size: int = 128,
             model_name: str, iteration: int, benchmark: str, method: str = "auto",
             answer_format: str = "letter") -> list[dict[str, Any]]:
    """Prediction rows (prediction schema, mode "loglik") for `items` (as `benchmark.read_mmbench`
    returns them), in item order. Each option scores the log-likelihood of the reply that picks
    it (`answer_format`: its letter, or its text). `method="per_option"` forces the
    one-sequence-per-option path."""
    import torch

    from mmloop.io import progress

    if method not in METHODS:
        raise ValueError(f"evaluate: method must be one of {METHODS}, got {method!r}")
    if int(batch_size) < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    items = list(items)
    if not items:
        return []
    images = decode_images(items)
    texts = prompt_texts(processor, items, answer_format)
    replies = [option_replies(item, answer_format) for item in items]
    distinct = sorted({reply for item_replies in replies for reply in item_replies})
    continuations = _Continuations(processor.tokenizer, continuation_texts(processor, distinct))
    order = sorted(range(len(items)), key=lambda i: len(texts[i]))
    scores: list[list[float]] = [[] for _ in items]
    latency: list[float] = [0.0] * len(items)

    tokenizer = processor.tokenizer
    padding_side = tokenizer.padding_side
    was_training = model.training
    model.eval()
    bar = progress(total=len(items), desc=f"evaluate {model_name}", unit="item")
    try:
        tokenizer.padding_side = "right"
        with torch.inference_mode():
            for start in range(0, len(order), int(batch_size)):
                batch = order[start:start + int(batch_size)]
                started = time.perf_counter()
                batch_scores = _score_batch(model, processor, [replies[i] for i in batch], [texts[i] for i in batch],
                                            [images[items[i]["image_sha256"]] for i in batch], continuations,
                                            method, int(batch_size))
                elapsed_ms = (time.perf_counter() - started) * 1000.0 / len(batch)
                for i, row_scores in zip(batch, batch_scores):
                    scores[i] = row_scores
                    latency[i] = elapsed_ms
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = padding_side
        bar.close()
        if was_training:
            model.train()
    return [_prediction(item, row_scores, ms, model_name=model_name, iteration=iteration, benchmark=benchmark)
            for item, row_scores, ms in zip(items, scores, latency)]


def decode_images(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """{image_sha256: RGB uint8 array}, each distinct image decoded once."""
    import io

    import numpy as np
    from PIL import Image

    arrays: dict[str, Any] = {}
    for item in items:
        sha = item["image_sha256"]
        if sha not in arrays:
            try:
                with Image.open(io.BytesIO(item["image"])) as handle:
                    arrays[sha] = np.array(handle.convert("RGB"), dtype=np.uint8)
            except OSError as err:
                raise ValueError(f"benchmark item {item.get('index')!r}: field 'image' is not a readable "
                                 f"image ({err})") from None
    return arrays


def prompt_texts(processor, items: Sequence[Mapping[str, Any]], answer_format: str = "letter") -> list[str]:
    """The chat-template text of each item's user turn plus the generation prompt."""
    from mmloop.vlm import messages

    conversations = [messages([{"role": "user", "content": user_prompt(item, answer_format)}]) for item in items]
    return list(processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False))


def continuation_texts(processor, replies: Sequence[str]) -> dict[str, str]:
    """{reply: the text the chat template puts after the generation prompt up to and
    including the reply} (" B" for "ASSISTANT: B</s>"). Falls back to the bare reply
    for templates whose full conversation does not extend the prompt."""
    from mmloop.vlm import messages

    user = messages([{"role": "user", "content": "?"}])  # only the template around the reply matters
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    result = {}
    for option in replies:
        full = processor.apply_chat_template(
            user + [{"role": "assistant", "content": [{"type": "text", "text": option}]}], tokenize=False)
        at = full.find(option, len(prompt)) if full.startswith(prompt) else -1
        result[option] = full[len(prompt):at + len(option)] if at >= 0 else option
    return result


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _Continuations:
    """Token ids of each reply's continuation, tokenised in context.

    `split(context)` -> (drop, {reply: ids}): drop the last `drop` tokens of the context's
    ids and append a reply's ids to get the tokens of context + continuation text. The
    context of every MMBench prompt ends with an MCQ suffix plus the template's generation
    prompt, so that tail is tokenised once and reused, after checking that the item's own
    ids end with it; anything else is tokenised per item.
    """

    def __init__(self, tokenizer, texts: Mapping[str, str]):
        self.tokenizer = tokenizer
        self.texts = dict(texts)
        self.cache: dict[str, tuple[list[int], int, dict[str, list[int]]]] = {}

    def split(self, context: str, context_ids: Sequence[int]) -> tuple[int, dict[str, list[int]]]:
        at = max(context.rfind(suffix) for suffix in MCQ_SUFFIXES.values())
        if at >= 0:
            tail = context[at:]
            if tail not in self.cache:
                self.cache[tail] = self._split(tail)
            anchor, drop, ids = self.cache[tail]
            # The tail's first token may differ at the start of a text (a prefix space); the rest must match.
            check = anchor[1:]
            if check and drop <= len(check) and list(context_ids[len(context_ids) - len(check):]) == check:
                return drop, ids
        _, drop, ids = self._split(context)
        return drop, ids

    def _split(self, context: str) -> tuple[list[int], int, dict[str, list[int]]]:
        letters = list(self.texts)
        encoded = self.tokenizer([context] + [context + self.texts[key] for key in letters],
                                 add_special_tokens=False)["input_ids"]
        context_ids, fulls = list(encoded[0]), [list(ids) for ids in encoded[1:]]
        keep = min(_common_prefix(context_ids, full) for full in fulls)
        ids = {key: full[keep:] for key, full in zip(letters, fulls)}
        empty = [key for key, value in ids.items() if not value]
        if empty:
            raise ValueError(f"evaluate: option letter(s) {empty} tokenise to nothing after the prompt")
        return context_ids, len(context_ids) - keep, ids


def _score_batch(model, processor, replies, texts, arrays, continuations: _Continuations, method: str,
                 batch_size: int) -> list[list[float]]:
    """Scores per item and option. Items whose replies are each one token past the prompt take
    one forward pass (the next-token log-probs); the rest get one sequence per option."""
    encoded = processor(text=list(texts), images=list(arrays), return_tensors="pt", padding=True,
                        add_special_tokens=False)
    mask = encoded["attention_mask"]
    if not bool((mask.cumprod(dim=1).sum(dim=1) == mask.sum(dim=1)).all()):
        raise ValueError("evaluate: the processor padded on the left although the tokenizer's padding_side "
                         "is 'right'; scoring needs right padding so positions match an unbatched run")
    lengths = mask.sum(dim=1).tolist()
    ids = encoded["input_ids"]
    splits = [continuations.split(text, ids[row, :length].tolist())
              for row, (text, length) in enumerate(zip(texts, lengths))]
    option_ids = [[ids_by_reply[reply] for reply in item_replies]
                  for item_replies, (_, ids_by_reply) in zip(replies, splits)]
    single = [method == "auto" and drop == 0 and all(len(ids) == 1 for ids in row)
              for (drop, _), row in zip(splits, option_ids)]
    scores: list[list[float]] = [[] for _ in replies]
    for use_single, rows in ((True, [r for r, one in enumerate(single) if one]),
                             (False, [r for r, one in enumerate(single) if not one])):
        if not rows:
            continue
        part = {key: value[rows] for key, value in encoded.items()} if len(rows) < len(replies) else dict(encoded)
        part_lengths = [lengths[r] for r in rows]
        part_ids = [option_ids[r] for r in rows]
        if use_single:
            found = _score_next_token(model, part, part_lengths, part_ids)
        else:
            found = _score_per_option(model, part, part_lengths, [splits[r][0] for r in rows], part_ids, batch_size)
        for r, row_scores in zip(rows, found):
            scores[r] = row_scores
    return scores


def _forward_logits(model, inputs: Mapping[str, Any], keep):
    """Logits at the kept positions only (`logits_to_keep`: an int keeps the last N, a tensor
    those positions), so a large vocabulary is never materialised for the whole sequence."""
    device = getattr(model, "device", None)
    inputs = {key: value.to(device) if device is not None and hasattr(value, "to") else value
              for key, value in inputs.items()}
    if device is not None and hasattr(keep, "to"):
        keep = keep.to(device)
    try:
        return model(**inputs, logits_to_keep=keep, use_cache=False).logits, True
    except TypeError:
        return model(**inputs, use_cache=False).logits, False


def _score_next_token(model, encoded, lengths: Sequence[int], option_ids) -> list[list[float]]:
    """Single-token letters: the log-softmax at each prompt's last token."""
    import torch

    last = torch.tensor([length - 1 for length in lengths])
    positions = torch.unique(last)
    logits, kept = _forward_logits(model, dict(encoded), positions)
    column = torch.searchsorted(positions, last) if kept else last
    rows = logits[torch.arange(len(lengths), device=logits.device), column.to(logits.device)].float()
    logprobs = torch.log_softmax(rows, dim=-1).cpu()
    return [[float(logprobs[row, token[0]]) for token in options] for row, options in enumerate(option_ids)]


def _score_per_option(model, encoded, lengths, drops, option_ids, batch_size: int) -> list[list[float]]:
    """One sequence per (item, option): prompt (minus dropped tokens) plus the continuation,
    the continuation's token log-probabilities summed. Image tensors are repeated per row."""
    import torch

    batch = len(lengths)
    extra = {key: value for key, value in encoded.items() if key not in ("input_ids", "attention_mask")}
    for key, value in extra.items():
        if not hasattr(value, "shape") or value.shape[0] != batch:
            raise NotImplementedError(f"evaluate: per-option scoring needs per-image processor outputs; "
                                      f"{key!r} has shape {tuple(getattr(value, 'shape', ()))} for {batch} items")
    pad_id = _pad_id(encoded, lengths)
    sequences = []  # (item row, option, prompt length kept, token ids)
    for row, (length, drop, options) in enumerate(zip(lengths, drops, option_ids)):
        prompt = encoded["input_ids"][row, :length - drop].tolist()
        for option, continuation in enumerate(options):
            sequences.append((row, option, len(prompt), prompt + list(continuation)))
    scores = [[0.0] * len(options) for options in option_ids]
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(tokens) for *_, tokens in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (*_, tokens) in enumerate(chunk):
            input_ids[r, :len(tokens)] = torch.tensor(tokens)
            attention[r, :len(tokens)] = 1
        index = torch.tensor([row for row, *_ in chunk])
        inputs = {"input_ids": input_ids, "attention_mask": attention,
                  **{key: value[index] for key, value in extra.items()}}
        # Position p predicts token p + 1: the continuation starts at the shortest kept prompt.
        first = min(kept for _, _, kept, _ in chunk) - 1
        logits, kept_tail = _forward_logits(model, inputs, width - first)
        offset = first if kept_tail else 0
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for r, (row, option, kept, tokens) in enumerate(chunk):
            total = 0.0
            for position in range(kept, len(tokens)):
                total += float(logprobs[r, position - 1 - offset, tokens[position]])
            scores[row][option] = total
    return scores


def _pad_id(encoded, lengths: Sequence[int]) -> int:
    """The pad id the processor used (any id works under a zero attention mask)."""
    ids = encoded["input_ids"]
    for row, length in enumerate(lengths):
        if length < ids.shape[1]:
            return int(ids[row, length])
    return 0


def _prediction(item: Mapping[str, Any], option_scores: Sequence[float], latency_ms: float, *,
                model_name: str, iteration: int, benchmark: str) -> dict[str, Any]:
    best = max(range(len(option_scores)), key=lambda j: (option_scores[j], -j))
    prediction = OPTION_LETTERS[best]
    return {
        "item": item_id(benchmark, item["index"]), "benchmark": benchmark, "model": model_name,
        "iteration": int(iteration), "mode": MODE, "category": item["category"],
        "l2_category": item.get("l2_category"), "question": item["question"], "options": list(item["options"]),
        "answer": item["answer"], "prediction": prediction, "correct": prediction == item["answer"],
        "option_scores": [float(score) for score in option_scores], "latency_ms": float(latency_ms),
        "image_sha256": item["image_sha256"],
    }


# ---------------------------------------------------------------- metrics and bad cases

def metrics(predictions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """{"overall": accuracy, "n": items, "categories": {category: accuracy},
    "l2_categories": {l2 category: accuracy}, "n_per_category": {category: items}}."""
    totals: dict[str, dict[str, list[int]]] = {"categories": {}, "l2_categories": {}}
    n = correct = 0
    for row in predictions:
        hit = int(bool(row["correct"]))
        n += 1
        correct += hit
        for group, key in (("categories", row.get("category")), ("l2_categories", row.get("l2_category"))):
            if key is None or key != key:
                continue
            entry = totals[group].setdefault(str(key), [0, 0])
            entry[0] += 1
            entry[1] += hit
    if not n:
        raise ValueError("metrics: no predictions")
    return {
        "overall": correct / n, "n": n,
        "categories": {key: hits / count for key, (count, hits) in sorted(totals["categories"].items())},
        "l2_categories": {key: hits / count for key, (count, hits) in sorted(totals["l2_categories"].items())},
        "n_per_category": {key: count for key, (count, _) in sorted(totals["categories"].items())},
    }


def badcases(predictions: Iterable[Mapping[str, Any]], items: Sequence[Mapping[str, Any]], iteration: int,
             data_root: str | os.PathLike = "data", *, source: str = "bench.tsv",
             answer_format: str = "letter") -> list[dict[str, Any]]:
    """Sample rows (origin "badcase") for the wrong predictions: the MCQ user turn and the
    correct reply (letter or option text) as the assistant turn; `image` is the content-addressed store path when
    that file exists under `data_root`, else null (the image is then only in the TSV)."""
    from mmloop.world import image_path

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
        sha = item["image_sha256"]
        stored = image_path(sha)
        answer = item["options"][OPTION_LETTERS.index(item["answer"])]
        conversations = [{"role": "user", "content": user_prompt(item, answer_format)},
                         {"role": "assistant", "content": mcq_reply(item["options"], answer, answer_format)}]
        rows.append(sample(
            sample_id=f"badcase-{int(iteration)}-{prediction['item']}", parent_ids=[], iteration=int(iteration),
            origin="badcase", image=stored if (data_root / stored).is_file() else None, image_sha256=sha,
            conversations=conversations, category=item["category"], format="mcq", question=item["question"],
            options=list(item["options"]), answer=answer,
            provenance={"backend": "benchmark", "model": prediction.get("model"),
                        "source": f"{source}#{item['index']}"},
        ))
    return rows
