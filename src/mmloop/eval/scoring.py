"""The scoring engine: candidate replies scored by log-likelihood, or greedy generation.

It works on chat-template texts, one image each, and the candidate replies of each text;
what an item is and how it is prompted is `mmloop.eval.prompts`' business.

Log-likelihood. Each candidate reply is scored by

    log p(reply tokens | prompt)

summed over the reply's tokens. The end-of-turn token after the reply is NOT scored: every
reply is followed by the same end token, so scoring it adds noise (how sure the model is
that the turn ends) rather than telling the replies apart, and leaving it out keeps the
common case to one forward pass.

A reply's tokens are what the chat template puts after the generation prompt when the
assistant answers with it (" B" after "ASSISTANT:" in the tiny model's template), tokenised
in context: when a tokenizer merges the end of the prompt with the reply, the merged prompt
tokens are dropped and scored as part of the continuation.

Batching (right padding, so positions match an unbatched run):
- single-token replies (letters with the tiny word-level tokenizer and most hub tokenizers):
  one forward pass over the batch of prompts; the next-token log-probabilities at each
  prompt's last token give every reply's score at once;
- otherwise the shared prefix (`method="shared_prefix"`): the prompts run once with the KV
  cache on, then every reply's remaining tokens run against that cache (expanded over the
  replies), so the image and the prompt are encoded once per item, not once per option. The
  first batch checks one item against the per-option path; a model whose forward raises or
  disagrees (a cache this does not handle, prompts longer than a sliding window) falls back to
- one sequence per (item, reply), prompt plus continuation (`method="per_option"`).

Per architecture (`models.architectures`): every prompt is processed with its own image list;
positions after a cached prompt continue the model's own way (M-RoPE's rope deltas for
Qwen-VL, from 1 for PaliGemma); reply tokens get the token types the architecture gives
replies (PaliGemma's causal suffix); prompts are never sliced out of a processed batch, since
some families flatten image patches across it, but processed again.

Texts are batched in order of length (stable), which keeps padding small and the result
deterministic; a text's latency is its batch's wall time divided by the batch's size.

Generation: greedy, in LEFT-padded batches so that every prompt ends where the new tokens start.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmloop.models import chat
from mmloop.questions import MCQ_SUFFIXES

METHODS = ("auto", "shared_prefix", "per_option")
# Shared-prefix self-check: the largest |difference| from the per-option path that still counts
# as the same score (float32 vs. half-precision models).
SHARED_PREFIX_TOLERANCE = {"float32": 1e-4, "float64": 1e-8}
HALF_PRECISION_TOLERANCE = 1e-1


def length_batches(texts: Sequence[str], batch_size: int) -> Iterable[list[int]]:
    """Positions in batches, in order of text length (stable): little padding, same result every run."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


# ---------------------------------------------------------------- prompts as model inputs

def sequence_keys(encoded: Mapping[str, Any]) -> list[str]:
    """The processor outputs with one value per token (`attention_mask`, `token_type_ids`, ...)."""
    shape = tuple(encoded["input_ids"].shape)
    return [key for key, value in encoded.items()
            if key != "input_ids" and tuple(getattr(value, "shape", ())) == shape]


# ---------------------------------------------------------------- generation

def generate_texts(model, processor, texts: Sequence[str], arrays: Sequence[Any], *,
                   max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations of chat-template `texts` (one image each), batched with LEFT padding
    so every prompt ends where the new tokens start; only the new tokens, special tokens
    skipped, whitespace stripped. The tokenizer's padding side is restored afterwards."""
    tokenizer = processor.tokenizer
    encoded = chat.encode(processor, texts, arrays, padding_side="left")
    if not bool(encoded["attention_mask"][:, -1].all()):
        raise ValueError("evaluate: the processor padded on the right although the tokenizer's padding_side "
                         "is 'left'; generation needs left padding so the new tokens follow every prompt")
    device = getattr(model, "device", None)
    inputs = {key: value.to(device) if device is not None and hasattr(value, "to") else value
              for key, value in encoded.items()}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(**inputs, max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                            pad_token_id=pad_id)
    new_tokens = output[:, encoded["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_batched(model, processor, texts: Sequence[str], arrays: Sequence[Any], *, batch_size: int,
                     max_new_tokens: int, bar=None) -> tuple[list[str], list[float]]:
    """(the generated text, latency in ms) per text, generated in length-ordered batches."""
    outputs, latencies = [""] * len(texts), [0.0] * len(texts)
    for batch in length_batches(texts, batch_size):
        started = time.perf_counter()
        generated = generate_texts(model, processor, [texts[i] for i in batch], [arrays[i] for i in batch],
                                   max_new_tokens=max_new_tokens)
        elapsed_ms = (time.perf_counter() - started) * 1000.0 / len(batch)
        for i, text in zip(batch, generated):
            outputs[i], latencies[i] = text, elapsed_ms
        if bar is not None:
            bar.update(len(batch))
    return outputs, latencies


# ---------------------------------------------------------------- replies as tokens

def continuation_texts(processor, replies: Sequence[str], prompt_suffix: str = "") -> dict[str, str]:
    """{reply: the text the chat template puts after the generation prompt up to and
    including the reply} (" B" for "ASSISTANT: B</s>"). Falls back to the bare reply
    for templates whose full conversation does not extend the prompt."""
    user = chat.messages([{"role": "user", "content": "?"}])  # only the template around the reply matters
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    result = {}
    for option in replies:
        full = processor.apply_chat_template(
            user + [{"role": "assistant", "content": [{"type": "text", "text": option}]}], tokenize=False)
        at = full.find(option, len(prompt)) if full.startswith(prompt) else -1
        text = full[len(prompt):at + len(option)] if at >= 0 else option
        # The processor appends `prompt_suffix` to the prompt itself: the reply starts after it.
        result[option] = text[len(prompt_suffix):] if prompt_suffix and text.startswith(prompt_suffix) else text
    return result


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Continuations:
    """Token ids of each reply's continuation, tokenised in context.

    `split(context)` -> (drop, {reply: ids}): drop the last `drop` tokens of the context's
    ids and append a reply's ids to get the tokens of context + continuation text. The
    context of every prompt ends with a suffix (`anchors`: the MCQ / yes-no suffixes) plus
    the template's generation prompt, so that tail is tokenised once and reused, after
    checking that the item's own ids end with it; anything else is tokenised per item.
    """

    def __init__(self, tokenizer, texts: Mapping[str, str], anchors: Sequence[str] = tuple(MCQ_SUFFIXES.values())):
        self.tokenizer = tokenizer
        self.texts = dict(texts)
        self.anchors = tuple(anchors)
        self.cache: dict[str, tuple[list[int], int, dict[str, list[int]]]] = {}

    def split(self, context: str, context_ids: Sequence[int]) -> tuple[int, dict[str, list[int]]]:
        at = max((context.rfind(anchor) for anchor in self.anchors), default=-1)
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


# ---------------------------------------------------------------- log-likelihood

class LoglikScorer:
    """Log-likelihood scores of candidate replies, batch after batch of one evaluation.

    What the batches share lives here: the model and processor, the method ("auto" picks the
    next-token or shared-prefix path, "shared_prefix" / "per_option" force one), whether the
    shared-prefix path has passed its one check against the per-option path or has failed
    (then "auto" scores per option for the rest of the evaluation), and the texts whose
    replies tokenise identically (their scores tie; `score` warns once at the end)."""

    def __init__(self, model, processor, *, method: str = "auto", batch_size: int = 128):
        if method not in METHODS:
            raise ValueError(f"evaluate: method must be one of {METHODS}, got {method!r}")
        from mmloop.models.architectures import architecture

        self.model, self.processor = model, processor
        self.prompt_suffix = architecture(model).processor_suffix
        self.method, self.batch_size = method, int(batch_size)
        self.shared_prefix_works = True
        self.shared_prefix_checked = False
        self.tied: list[Any] = []

    def score(self, texts: Sequence[str], arrays: Sequence[Any], replies: Sequence[Sequence[str]],
              reply_sets: Sequence[str], anchors: Sequence[str], names: Sequence[Any],
              bar=None) -> tuple[list[list[float]], list[float]]:
        """(scores per text and reply, latency in ms per text). `reply_sets` names each text's
        kind of replies (texts of one kind share a tokenisation cache, so a context's split
        only looks at its own kind's replies); `anchors` are the lines every prompt's last turn
        ends with; `names` name the texts in the tie warning."""
        distinct = sorted({reply for text_replies in replies for reply in text_replies})
        texts_by_reply = continuation_texts(self.processor, distinct, self.prompt_suffix)
        continuations = {}
        for kind in dict.fromkeys(reply_sets):
            keys = sorted({reply for text_kind, text_replies in zip(reply_sets, replies) if text_kind == kind
                           for reply in text_replies})
            continuations[kind] = Continuations(self.processor.tokenizer, {key: texts_by_reply[key] for key in keys},
                                                anchors=anchors)
        scores: list[list[float]] = [[] for _ in texts]
        latencies = [0.0] * len(texts)
        for batch in length_batches(texts, self.batch_size):
            started = time.perf_counter()
            found = self.score_batch([replies[i] for i in batch], [texts[i] for i in batch],
                                     [arrays[i] for i in batch],
                                     [continuations[reply_sets[i]] for i in batch], [names[i] for i in batch])
            elapsed_ms = (time.perf_counter() - started) * 1000.0 / len(batch)
            for i, text_scores in zip(batch, found):
                scores[i], latencies[i] = text_scores, elapsed_ms
            if bar is not None:
                bar.update(len(batch))
        if self.tied:
            warnings.warn(f"evaluate: {len(self.tied)} item(s) have replies that tokenise identically (first: "
                          f"item {self.tied[0]!r}), so their scores tie; is every reply word in the vocabulary?",
                          stacklevel=3)
        return scores, latencies

    def score_batch(self, replies, texts, arrays, continuations: Sequence[Continuations],
                    names: Sequence[Any]) -> list[list[float]]:
        """Scores per text and reply. Texts whose replies are each one token past the prompt take
        one forward pass (the next-token log-probs); the rest share each prompt's KV cache over
        their replies, or (method "per_option", or where that fails) get one sequence per reply."""
        prompts = Prompts(self.processor, texts, arrays)
        ids = prompts.encoded["input_ids"]
        splits = [continuation.split(text + self.prompt_suffix, ids[row, :length].tolist())
                  for row, (continuation, text, length) in enumerate(zip(continuations, texts, prompts.lengths))]
        option_ids = [[ids_by_reply[reply] for reply in text_replies]
                      for text_replies, (_, ids_by_reply) in zip(replies, splits)]
        for row, options in enumerate(option_ids):
            if len({tuple(option) for option in options}) < len(options):
                self.tied.append(names[row])
        single = [self.method == "auto" and drop == 0 and all(len(ids) == 1 for ids in row)
                  for (drop, _), row in zip(splits, option_ids)]
        scores: list[list[float]] = [[] for _ in replies]
        for use_single, rows in ((True, [r for r, one in enumerate(single) if one]),
                                 (False, [r for r, one in enumerate(single) if not one])):
            if not rows:
                continue
            part = prompts.subset(rows)
            part_drops = [splits[r][0] for r in rows]
            part_ids = [option_ids[r] for r in rows]
            if use_single:
                found = score_next_token(self.model, part, part_ids)
            elif self.method == "per_option" or not self.shared_prefix_works:
                found = score_per_option(self.model, part, part_drops, part_ids, self.batch_size)
            else:
                found = self._shared_prefix_or_per_option(part, part_drops, part_ids)
            for r, row_scores in zip(rows, found):
                scores[r] = row_scores
        return scores

    def _shared_prefix_or_per_option(self, prompts: Prompts, drops, option_ids) -> list[list[float]]:
        """The shared-prefix scores; the first time, one item is checked against the per-option path.
        With method "auto" a failure (an exception, or a check that disagrees) switches this
        evaluation to the per-option path; with "shared_prefix" it is raised."""
        try:
            found = score_shared_prefix(self.model, prompts, drops, option_ids, self.batch_size)
            if not self.shared_prefix_checked:
                self._check_against_per_option(found, prompts, drops, option_ids)
                self.shared_prefix_checked = True
            return found
        except Exception as err:  # noqa: BLE001 - any model-specific failure means: use the plain path
            if self.method == "shared_prefix":
                raise
            self.shared_prefix_works = False
            warnings.warn(f"evaluate: shared-prefix scoring does not work for this model ({type(err).__name__}: "
                          f"{err}); scoring one full sequence per option instead", stacklevel=2)
            return score_per_option(self.model, prompts, drops, option_ids, self.batch_size)

    def _check_against_per_option(self, found, prompts: Prompts, drops, option_ids) -> None:
        # The item with the longest continuation exercises the cache the most.
        row = max(range(len(option_ids)), key=lambda r: max(len(ids) for ids in option_ids[r]))
        expected = score_per_option(self.model, prompts.subset([row]), [drops[row]], [option_ids[row]],
                                    self.batch_size)[0]
        tolerance = SHARED_PREFIX_TOLERANCE.get(str(getattr(self.model, "dtype", "float32")).replace("torch.", ""),
                                                HALF_PRECISION_TOLERANCE)
        worst = max(abs(a - b) for a, b in zip(found[row], expected))
        if worst > tolerance:
            raise ValueError(f"shared-prefix scores differ from the per-option path by {worst:.3g} "
                             f"(tolerance {tolerance:g})")


class Prompts:
    """Chat-template prompts with their images, encoded once (right padding, so positions match an
    unbatched run). `subset` encodes some of them again rather than slicing the tensors: some
    families flatten image patches across the batch (Qwen's `pixel_values`), so rows cannot be
    cut out of them."""

    def __init__(self, processor, texts: Sequence[str], arrays: Sequence[Any]):
        self.processor, self.texts, self.arrays = processor, list(texts), list(arrays)
        self.encoded = chat.encode(processor, self.texts, self.arrays)
        mask = self.encoded["attention_mask"]
        if not bool((mask.cumprod(dim=1).sum(dim=1) == mask.sum(dim=1)).all()):
            raise ValueError("evaluate: the processor padded on the left although the tokenizer's padding_side "
                             "is 'right'; scoring needs right padding so positions match an unbatched run")
        self.lengths = mask.sum(dim=1).tolist()

    def subset(self, rows: Sequence[int]) -> Prompts:
        if list(rows) == list(range(len(self.texts))):
            return self
        return Prompts(self.processor, [self.texts[r] for r in rows], [self.arrays[r] for r in rows])

    def pad_id(self) -> int:
        """The pad id the processor used (any id works under a zero attention mask)."""
        tokenizer = self.processor.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _on_device(model, value):
    device = getattr(model, "device", None)
    return value.to(device) if device is not None and hasattr(value, "to") else value


def forward_logits(model, inputs: Mapping[str, Any], keep):
    """Logits at the kept positions only (`logits_to_keep`: an int keeps the last N, a tensor
    those positions), so a large vocabulary is never materialised for the whole sequence."""
    inputs = {key: _on_device(model, value) for key, value in inputs.items()}
    return model(**inputs, logits_to_keep=_on_device(model, keep), use_cache=False).logits


def score_next_token(model, prompts: Prompts, option_ids) -> list[list[float]]:
    """Single-token replies: the log-softmax at each prompt's last token."""
    import torch

    last = torch.tensor([length - 1 for length in prompts.lengths])
    positions = torch.unique(last)
    logits = forward_logits(model, prompts.encoded, positions)
    column = torch.searchsorted(positions, last)
    rows = logits[torch.arange(len(last), device=logits.device), column.to(logits.device)].float()
    logprobs = torch.log_softmax(rows, dim=-1).cpu()
    return [[float(logprobs[row, token[0]]) for token in options] for row, options in enumerate(option_ids)]


def first_positions(model, prompts: Prompts, prefix_mask, kept: Sequence[int]):
    """Per prompt row, the position id of the first reply token fed after its cached `kept[row]`
    prompt tokens, the way the model numbers it in one full-sequence forward: plain RoPE counts
    on from the prompt (PaliGemma counts from 1); M-RoPE (Qwen-VL) adds the prompt's rope delta,
    which its image grid decides, on all three axes. Computed once per prompt batch."""
    import torch

    from mmloop.models.architectures import architecture

    spec = architecture(model)
    start = torch.tensor(list(kept)) + spec.position_offset
    if not spec.mrope:
        return start
    encoded = prompts.encoded
    extra = {key: encoded[key] for key in ("mm_token_type_ids", "image_grid_thw", "video_grid_thw",
                                           "second_per_grid_ts") if key in encoded}
    _, deltas = model.model.get_rope_index(input_ids=_on_device(model, encoded["input_ids"]),
                                           attention_mask=_on_device(model, prefix_mask),
                                           **{key: _on_device(model, value) for key, value in extra.items()})
    return start + deltas.cpu()[:, 0]


def score_shared_prefix(model, prompts: Prompts, drops, option_ids, batch_size: int) -> list[list[float]]:
    """Each prompt (minus its dropped tokens) runs once with the KV cache on; its last kept
    position gives every reply's first-token log-prob. Replies with more tokens then run
    their tokens 1.. against the cache rows of their item (`batch_size` replies at a time),
    with the prompt's padding and dropped tokens masked out and the positions the model would
    give them in one full sequence, so each token sees exactly what it sees there."""
    import torch

    from mmloop.models.architectures import architecture

    lengths = prompts.lengths
    kept = [length - drop for length, drop in zip(lengths, drops)]
    if min(kept) < 1:
        raise ValueError("evaluate: a reply's continuation replaces the whole prompt")
    width = prompts.encoded["input_ids"].shape[1]
    prefix_mask = (torch.arange(width)[None, :] < torch.tensor(kept)[:, None]).long()
    inputs = {key: _on_device(model, value) for key, value in prompts.encoded.items()}
    inputs["attention_mask"] = _on_device(model, prefix_mask)
    last = torch.tensor([k - 1 for k in kept])
    positions = torch.unique(last)
    output = model(**inputs, logits_to_keep=_on_device(model, positions), use_cache=True)
    column = torch.searchsorted(positions, last)
    cache = getattr(output, "past_key_values", None)
    if cache is None:
        raise NotImplementedError("the model returned no KV cache")
    window = min((layer.sliding_window for layer in cache.layers if getattr(layer, "sliding_window", None)),
                 default=None)
    if window is not None and width >= window:
        # A sliding layer keeps the last `window` positions of the padded batch, which cuts the
        # context of shorter prompts; one full sequence per reply has no such problem.
        raise NotImplementedError(f"prompts of {width} tokens are longer than a sliding-window cache layer "
                                  f"keeps ({window})")
    logits = output.logits
    first = torch.log_softmax(logits[torch.arange(len(kept), device=logits.device),
                                     column.to(logits.device)].float(), dim=-1).cpu()
    scores = [[float(first[row, ids[0]]) for ids in options] for row, options in enumerate(option_ids)]

    pad_id = prompts.pad_id()
    sequences = [(row, option, ids) for row, options in enumerate(option_ids)
                 for option, ids in enumerate(options) if len(ids) > 1]
    starts = first_positions(model, prompts, prefix_mask, kept) if sequences else None
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        steps = max(len(ids) for *_, ids in chunk) - 1  # the last token is predicted, never fed
        input_ids = torch.full((len(chunk), steps), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), steps), dtype=torch.long)
        for r, (row, _, ids) in enumerate(chunk):
            input_ids[r, :len(ids) - 1] = torch.tensor(ids[:-1])
            attention[r, :len(ids) - 1] = 1
        index = torch.tensor([row for row, *_ in chunk])
        position_ids = starts[index][:, None] + torch.arange(steps)[None, :]
        if architecture(model).mrope:  # the same positions on M-RoPE's three axes
            position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
        logits = model(input_ids=_on_device(model, input_ids),
                       attention_mask=_on_device(model, torch.cat([prefix_mask[index], attention], dim=1)),
                       position_ids=_on_device(model, position_ids), past_key_values=select_cache(cache, index),
                       use_cache=True).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for r, (row, option, ids) in enumerate(chunk):
            scores[row][option] += sum(float(logprobs[r, j - 1, ids[j]]) for j in range(1, len(ids)))
    return scores


def select_cache(cache, index):
    """A copy of `cache` holding rows `index` (rows may repeat: one per reply), so the prompt's
    cache is reused by every reply without being modified. Layer objects are copied, not rebuilt,
    so sliding-window layers (Gemma 3) keep their kind and state."""
    import copy

    layers = []
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None:
            raise NotImplementedError(f"cache layer {type(layer).__name__} without keys")
        selected = copy.copy(layer)
        selected.keys = layer.keys.index_select(0, index.to(layer.keys.device))
        selected.values = layer.values.index_select(0, index.to(layer.values.device))
        layers.append(selected)
    new = copy.copy(cache)
    new.layers = layers
    return new


def score_per_option(model, prompts: Prompts, drops, option_ids, batch_size: int) -> list[list[float]]:
    """One sequence per (item, reply): prompt (minus dropped tokens) plus the continuation, the
    continuation's token log-probabilities summed. Each chunk's prompts are encoded again, one
    copy per reply, so every image output is batched the processor's own way; the reply tokens
    extend the per-token outputs with the values the architecture gives replies (PaliGemma's
    causal suffix is token type 1)."""
    import torch

    from mmloop.models.architectures import architecture

    fills = architecture(model).reply_token_types
    sequences = [(row, option, continuation) for row, options in enumerate(option_ids)
                 for option, continuation in enumerate(options)]
    scores = [[0.0] * len(options) for options in option_ids]
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        part = prompts.subset([row for row, *_ in chunk])
        encoded = part.encoded
        kept = [length - drops[row] for length, (row, *_) in zip(part.lengths, chunk)]
        width = max(k + len(continuation) for k, (*_, continuation) in zip(kept, chunk))
        per_token = sequence_keys(encoded)
        inputs = {key: value for key, value in encoded.items() if key not in per_token and key != "input_ids"}
        input_ids = torch.full((len(chunk), width), part.pad_id(), dtype=torch.long)
        extended = {key: torch.zeros((len(chunk), width), dtype=encoded[key].dtype) for key in per_token}
        for r, (k, (*_, continuation)) in enumerate(zip(kept, chunk)):
            input_ids[r, :k] = encoded["input_ids"][r, :k]
            input_ids[r, k:k + len(continuation)] = torch.tensor(continuation)
            for key in per_token:
                extended[key][r, :k] = encoded[key][r, :k]
                extended[key][r, k:k + len(continuation)] = 1 if key == "attention_mask" else fills.get(key, 0)
        inputs.update(extended, input_ids=input_ids)
        # Position p predicts token p + 1: the continuation starts at the shortest kept prompt.
        first = min(kept) - 1
        logprobs = torch.log_softmax(forward_logits(model, inputs, width - first).float(), dim=-1).cpu()
        for r, (k, (row, option, continuation)) in enumerate(zip(kept, chunk)):
            scores[row][option] = sum(float(logprobs[r, k + j - 1 - first, token])
                                      for j, token in enumerate(continuation))
    return scores
