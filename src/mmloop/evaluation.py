"""Benchmark evaluation: option log-likelihood scoring, or generation plus answer extraction.

Items are benchmark items (`schema.bench_item`, as `mmloop.loaders` returns them; dicts
without answer_type / group / direct_answers are read as mcq items standing alone): "mcq"
(lettered options, the answer a letter) or "yes_no" (no options, the answer "yes"/"no").

Prompts. Each item becomes one user turn rendered by the processor's chat template with the
generation prompt, the image in the first user turn. The text follows a `PromptConvention`
(the harness conventions, `conventions_for(kind)`): for mcq the MMBench prompt (hint,
question, "Options:", lettered options, "Answer with the option's letter ..."), for yes_no the
question plus "Answer the question using a single word or phrase." The default convention
gives exactly `questions.mcq_prompt`, which the tiny model was trained on.

Modes.
- "loglik": each candidate reply is scored by

      log p(reply tokens | prompt)

  summed over the reply's tokens; the prediction is the highest (ties go to the earlier
  option). mcq replies are the letters (or, with answer_format "option", the option texts);
  yes_no replies are "Yes"/"No" ("yes"/"no" with answer_format "option", as the tiny model
  answers existence questions). The end-of-turn token after the reply is NOT scored: every
  reply is followed by the same end token, so scoring it adds noise (how sure the model is
  that the turn ends) rather than telling the replies apart, and leaving it out keeps the
  common case to one forward pass.
- "generate": batched greedy generation (left padding), the new tokens decoded and read by
  `answers.extract_choice` / `answers.extract_yes_no`.

A reply's tokens are what the chat template puts after the generation prompt when the
assistant answers with it (" B" after "ASSISTANT:" in the tiny model's template), tokenised
in context: when a tokenizer merges the end of the prompt with the reply, the merged prompt
tokens are dropped and scored as part of the continuation.

Log-likelihood batching (right padding, so positions match an unbatched run):
- single-token replies (letters with the tiny word-level tokenizer and most hub tokenizers):
  one forward pass over the batch of prompts; the next-token log-probabilities at each
  prompt's last token give every reply's score at once;
- otherwise the shared prefix (`method="shared_prefix"`): the prompts run once with the KV
  cache on, then every reply's remaining tokens run against that cache (expanded over the
  replies), so the image and the prompt are encoded once per item, not once per option. The
  first batch checks one item against the per-option path; a model whose forward raises or
  disagrees (a cache type or position scheme this does not handle) falls back to
- one sequence per (item, reply), prompt plus continuation (`method="per_option"`).

Items are batched in order of prompt length (stable), which keeps padding small and the
result deterministic; `latency_ms` is the batch's wall time divided by its size.

Multiple rounds ("COCO is ALL you need": a question asked late in a conversation is harder
than the same question asked first). With `rounds=k` the scored question follows k earlier
(user, assistant) turns about the same image: `round_source="same_image"` asks k other items
on that image, answered correctly; "generic" asks k fixed instructions of another answer
format (GENERIC_INSTRUCTIONS) and lets the model answer them itself (greedy, once per image
and turn). The row's `rounds` is the number of earlier turns actually used and its `prompt`
holds them (see `recorded_prompt`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.questions import CAPTION_QUESTION, MCQ_SUFFIX, MCQ_SUFFIXES, check_answer_format
from mmloop.schema import ANSWER_TYPES, OPTION_LETTERS, sample

MODE = "loglik"  # the default mode
MODES = ("loglik", "generate")
METHODS = ("auto", "shared_prefix", "per_option")
ROUND_SOURCES = ("same_image", "generic")
SHORT_SUFFIX = "Answer the question using a single word or phrase."
YES_NO = ("yes", "no")
# The assistant reply that says yes / no: hub models answer "Yes"; the tiny model (answer_format
# "option") was trained on existence questions whose options are "yes"/"no".
YES_NO_REPLIES = {"letter": ("Yes", "No"), "option": ("yes", "no")}
# Generic earlier turns: an answer format other than the benchmark's (sentences, not a letter),
# so the model has to switch formats for the scored question.
GENERIC_INSTRUCTIONS = (
    CAPTION_QUESTION,
    "What is the main object in the image? Answer in a full sentence.",
    "How many objects are in the image? Answer in a full sentence.",
    "Which colours can you see in the image? Answer in a full sentence.",
    "Where is the largest object in the image? Answer in a full sentence.",
    "Write a short caption for the image.",
)
# Shared-prefix self-check: the largest |difference| from the per-option path that still counts
# as the same score (float32 vs. half-precision models).
SHARED_PREFIX_TOLERANCE = {"float32": 1e-3, "float64": 1e-6}
HALF_PRECISION_TOLERANCE = 1e-1


# ---------------------------------------------------------------- prompt conventions

@dataclasses.dataclass(frozen=True)
class PromptConvention:
    """How an item becomes its user turn, as one evaluation harness writes it.

    - mcq_suffix: the last line of a multiple-choice turn (answer_format "letter"; with
      "option" it is `questions.MCQ_SUFFIXES["option"]`, what the tiny model was trained on);
    - short_suffix: the last line of a free-form short-answer turn;
    - yes_no_suffix: the last line of a yes/no turn;
    - hint_first: the "Hint: ..." line before the question (else after it);
    - options_header: an "Options:" line before the lettered options (VLMEvalKit; LLaVA,
      lmms-eval's SEED-Bench and LLaVA's A-OKVQA list the options right after the question);
    - strip_from_question: phrases removed from the question first (MME's own "Please answer
      yes or no.", which lmms-eval replaces by the yes/no suffix).
    An empty suffix adds no line.
    """

    name: str = "default"
    mcq_suffix: str = MCQ_SUFFIX
    short_suffix: str = SHORT_SUFFIX
    yes_no_suffix: str = SHORT_SUFFIX
    hint_first: bool = True
    options_header: bool = True
    strip_from_question: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "strip_from_question", tuple(self.strip_from_question))

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (for the metrics file)."""
        values = dataclasses.asdict(self)
        values["strip_from_question"] = list(self.strip_from_question)
        return values

    def mcq(self, question: str, options: Sequence[str], hint: str | None = None,
            answer_format: str = "letter") -> str:
        lines = self._lead(question, hint)
        if self.options_header:
            lines.append("Options:")
        lines += [f"{OPTION_LETTERS[position]}. {option}" for position, option in enumerate(options)]
        suffix = self.mcq_suffix if check_answer_format(answer_format) == "letter" else MCQ_SUFFIXES["option"]
        return "\n".join(lines + ([suffix] if suffix else []))

    def yes_no(self, question: str, hint: str | None = None) -> str:
        return "\n".join(self._lead(question, hint) + ([self.yes_no_suffix] if self.yes_no_suffix else []))

    def short(self, question: str, hint: str | None = None) -> str:
        return "\n".join(self._lead(question, hint) + ([self.short_suffix] if self.short_suffix else []))

    def _lead(self, question: str, hint: str | None) -> list[str]:
        for phrase in self.strip_from_question:
            if phrase in question:
                question = question.replace(phrase, "").strip()
        hints = [f"Hint: {hint}"] if hint else []
        return [*hints, question] if self.hint_first else [question, *hints]


DEFAULT_CONVENTION = PromptConvention()
# Per benchmark kind (the loaders' formats). mmbench/jsonl: our MMBench prompt, VLMEvalKit's
# "Hint:"/"Options:" layout with LLaVA-1.5's letter suffix (= questions.mcq_prompt);
# seedbench: lmms-eval seedbench/utils.py (question, "A. ..." lines, LLaVA's suffix);
# aokvqa: LLaVA-1.5's A-OKVQA multiple-choice format (same layout); pope: lmms-eval
# pope/utils.py (question + "Answer the question using a single word or phrase.");
# mme: lmms-eval mme/utils.py (drops "Please answer yes or no.", then the same suffix).
CONVENTIONS = {
    "mmbench": PromptConvention(name="mmbench"),
    "jsonl": PromptConvention(name="jsonl"),
    "seedbench": PromptConvention(name="seedbench", options_header=False),
    "aokvqa": PromptConvention(name="aokvqa", options_header=False),
    "pope": PromptConvention(name="pope"),
    "mme": PromptConvention(name="mme", strip_from_question=("Please answer yes or no.",)),
}


def conventions_for(kind: str) -> PromptConvention:
    """The prompt convention the usual harness uses for a benchmark kind (see CONVENTIONS)."""
    try:
        return CONVENTIONS[str(kind).lower()]
    except KeyError:
        raise ValueError(f"conventions_for: unknown benchmark kind {kind!r} "
                         f"(known: {', '.join(CONVENTIONS)})") from None


# ---------------------------------------------------------------- items, prompts, replies

def item_id(benchmark: str, index: Any) -> str:
    """A prediction's `item`: the benchmark name and the item's index ("shapes-17")."""
    return f"{benchmark}-{index}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def normalise_item(item: Mapping[str, Any], position: int | None = None) -> dict[str, Any]:
    """The item with every field `evaluate` reads present and checked (answer_type mcq when
    absent, yes/no answers lower-cased, group a string or None). Errors name the item and field."""
    where = f"benchmark item {item.get('index', position)!r}"
    for field in ("index", "question", "image", "image_sha256"):
        if _missing(item.get(field)):
            raise ValueError(f"{where}: field {field!r} is missing")
    answer_type = item.get("answer_type") or "mcq"
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"{where}: field 'answer_type' must be one of {ANSWER_TYPES}, got {answer_type!r}")
    options = list(item.get("options") or [])
    answer = item.get("answer")
    if answer_type == "mcq":
        if not 2 <= len(options) <= len(OPTION_LETTERS):
            raise ValueError(f"{where}: field 'options': an mcq item needs 2 to {len(OPTION_LETTERS)} options, "
                             f"got {len(options)}")
        if answer not in OPTION_LETTERS[:len(options)]:
            raise ValueError(f"{where}: field 'answer': {answer!r} is not one of the option letters "
                             f"{OPTION_LETTERS[:len(options)]}")
    else:
        if options:
            raise ValueError(f"{where}: field 'options': a yes_no item has no options, got {options!r}")
        answer = str(answer or "").strip().lower()
        if answer not in YES_NO:
            raise ValueError(f"{where}: field 'answer': a yes_no answer must be 'yes' or 'no', "
                             f"got {item.get('answer')!r}")
    group = item.get("group")
    hint = item.get("hint")
    return {**item, "answer_type": answer_type, "options": options, "answer": answer,
            "hint": None if _missing(hint) else str(hint),
            "group": None if _missing(group) else str(group),
            "direct_answers": list(item.get("direct_answers") or [])}


def user_prompt(item: Mapping[str, Any], answer_format: str = "letter",
                convention: PromptConvention | None = None) -> str:
    """The item's user turn under `convention` (default: `questions.mcq_prompt`'s text)."""
    convention = convention or DEFAULT_CONVENTION
    hint = None if _missing(item.get("hint")) else item.get("hint")
    if item.get("answer_type", "mcq") == "yes_no":
        return convention.yes_no(item["question"], hint)
    return convention.mcq(item["question"], item["options"], hint, answer_format)


def option_replies(item: Mapping[str, Any], answer_format: str = "letter") -> list[str]:
    """The assistant reply that picks each candidate: the option's letter or text, or Yes / No."""
    if item.get("answer_type", "mcq") == "yes_no":
        return list(YES_NO_REPLIES[check_answer_format(answer_format)])
    if check_answer_format(answer_format) == "option":
        return list(item["options"])
    # By position, not `mcq_reply`'s text lookup: two options with the same text keep their letters.
    return list(OPTION_LETTERS[:len(item["options"])])


def correct_reply(item: Mapping[str, Any], answer_format: str = "letter") -> str:
    """The reply that gives the item's correct answer."""
    replies = option_replies(item, answer_format)
    if item.get("answer_type", "mcq") == "yes_no":
        return replies[YES_NO.index(str(item["answer"]).strip().lower())]
    return replies[OPTION_LETTERS.index(item["answer"])]


def _candidates(item: Mapping[str, Any]) -> Sequence[str]:
    """What a prediction can be, in the order of the replies."""
    return YES_NO if item["answer_type"] == "yes_no" else OPTION_LETTERS[:len(item["options"])]


def recorded_prompt(history: Sequence[tuple[str, str]], user: str) -> str:
    """A row's `prompt`: the scored user turn; after earlier turns, those turns first as
    "USER: ...\\nASSISTANT: ..." lines and the scored one as "USER: ...", so the context the
    model saw (its own generic replies included) is on record."""
    if not history:
        return user
    return "\n".join([*(f"USER: {asked}\nASSISTANT: {answered}" for asked, answered in history), f"USER: {user}"])


def _conversation(history: Sequence[tuple[str, str]], user: str) -> list[dict[str, str]]:
    turns = []
    for asked, answered in history:
        turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    return turns + [{"role": "user", "content": user}]


def _chat_texts(processor, conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[str]:
    """Chat-template texts with the generation prompt; the image in each first user turn."""
    from mmloop.vlm import messages

    return list(processor.apply_chat_template([messages(turns) for turns in conversations],
                                              add_generation_prompt=True, tokenize=False))


def prompt_texts(processor, items: Sequence[Mapping[str, Any]], answer_format: str = "letter",
                 convention: PromptConvention | None = None) -> list[str]:
    """The chat-template text of each item's (single-round) user turn plus the generation prompt."""
    return _chat_texts(processor, [_conversation([], user_prompt(item, answer_format, convention))
                                   for item in items])


def same_image_rounds(items: Sequence[Mapping[str, Any]], rounds: int, *, answer_format: str = "letter",
                      convention: PromptConvention | None = None) -> list[list[tuple[str, str]]]:
    """For each item, up to `rounds` earlier (user, assistant) turns: other items on the same
    image, asked under the same convention and answered correctly. They are the image's other
    items in input order, starting after the scored one and wrapping around (so the contexts
    vary), without the item's own group (its circular copies / MME pair) or any item asking the
    same question, either of which would give the answer away."""
    items = [normalise_item(item, position) for position, item in enumerate(items)]
    by_image: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        by_image.setdefault(item["image_sha256"], []).append(position)
    turns = [(user_prompt(item, answer_format, convention), correct_reply(item, answer_format)) for item in items]
    histories = []
    for position, item in enumerate(items):
        same = by_image[item["image_sha256"]]
        at = same.index(position)
        order = same[at + 1:] + same[:at]
        chosen = [other for other in order
                  if (item["group"] is None or items[other]["group"] != item["group"])
                  and items[other]["question"] != item["question"]][:max(0, int(rounds))]
        histories.append([turns[other] for other in chosen])
    return histories


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


# ---------------------------------------------------------------- evaluate

def evaluate(model, processor, items: Sequence[Mapping[str, Any]], *, model_name: str, iteration: int,
             benchmark: str, mode: str = MODE, batch_size: int = 128, method: str = "auto",
             answer_format: str = "letter", convention: PromptConvention | None = None,
             max_new_tokens: int = 16, judge: Callable | None = None, rounds: int = 0,
             round_source: str = "same_image", round_max_new_tokens: int = 32) -> list[dict[str, Any]]:
    """Prediction rows (prediction schema) for `items`, in item order.

    mode "loglik" scores each candidate reply (`method`: "auto" picks the next-token or
    shared-prefix path, "shared_prefix" / "per_option" force one); mode "generate" generates
    up to `max_new_tokens` greedily and extracts the answer (`judge` is passed to the
    extractors). `convention` writes the prompts (default: `questions.mcq_prompt`'s).
    `rounds` / `round_source`: earlier turns before the scored question (see the module
    docstring); generic replies are generated with up to `round_max_new_tokens` tokens.
    """
    import torch

    from mmloop.io import progress

    if mode not in MODES:
        raise ValueError(f"evaluate: mode must be one of {MODES}, got {mode!r}")
    if method not in METHODS:
        raise ValueError(f"evaluate: method must be one of {METHODS}, got {method!r}")
    if round_source not in ROUND_SOURCES:
        raise ValueError(f"evaluate: round_source must be one of {ROUND_SOURCES}, got {round_source!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("max_new_tokens", max_new_tokens, 1),
                             ("rounds", rounds, 0), ("round_max_new_tokens", round_max_new_tokens, 1)):
        if int(value) < low:
            raise ValueError(f"evaluate: {name} must be >= {low}, got {value}")
    if round_source == "generic" and int(rounds) > len(GENERIC_INSTRUCTIONS):
        raise ValueError(f"evaluate: rounds must be <= {len(GENERIC_INSTRUCTIONS)} with round_source 'generic' "
                         f"(the generic instructions), got {rounds}")
    check_answer_format(answer_format)
    items = [normalise_item(item, position) for position, item in enumerate(items)]
    if not items:
        return []
    convention = convention or DEFAULT_CONVENTION
    batch_size = int(batch_size)
    images = decode_images(items)
    users = [user_prompt(item, answer_format, convention) for item in items]

    was_training = model.training
    model.eval()
    bar = progress(total=len(items), desc=f"evaluate {model_name} ({mode})", unit="item")
    try:
        with torch.inference_mode():
            if not rounds:
                histories: list[list[tuple[str, str]]] = [[] for _ in items]
            elif round_source == "same_image":
                histories = same_image_rounds(items, int(rounds), answer_format=answer_format, convention=convention)
            else:
                by_image = _generic_rounds(model, processor, items, images, int(rounds), batch_size,
                                           int(round_max_new_tokens))
                histories = [by_image[item["image_sha256"]] for item in items]
            texts = _chat_texts(processor, [_conversation(history, user) for history, user in zip(histories, users)])
            arrays = [images[item["image_sha256"]] for item in items]
            if mode == "loglik":
                results = _loglik(model, processor, items, texts, arrays, answer_format=answer_format,
                                  method=method, batch_size=batch_size, convention=convention, bar=bar)
            else:
                results = _generate_mode(model, processor, items, texts, arrays, max_new_tokens=int(max_new_tokens),
                                         batch_size=batch_size, judge=judge, bar=bar)
    finally:
        bar.close()
        if was_training:
            model.train()
    return [_prediction(item, **result, mode=mode, rounds=len(history), prompt=recorded_prompt(history, user),
                        model_name=model_name, iteration=iteration, benchmark=benchmark)
            for item, result, history, user in zip(items, results, histories, users)]


def _batches(texts: Sequence[str], batch_size: int) -> Iterable[list[int]]:
    """Positions in batches, in order of prompt length (stable): little padding, same result every run."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _loglik(model, processor, items, texts, arrays, *, answer_format, method, batch_size, convention,
            bar) -> list[dict[str, Any]]:
    replies = [option_replies(item, answer_format) for item in items]
    distinct = sorted({reply for item_replies in replies for reply in item_replies})
    texts_by_reply = continuation_texts(processor, distinct)
    anchors = tuple(dict.fromkeys([*MCQ_SUFFIXES.values(), convention.mcq_suffix, convention.yes_no_suffix]))
    # One tokenisation cache per answer type: a context's split only looks at its own replies.
    continuations = {}
    for answer_type in dict.fromkeys(item["answer_type"] for item in items):
        keys = sorted({reply for item, item_replies in zip(items, replies) if item["answer_type"] == answer_type
                       for reply in item_replies})
        continuations[answer_type] = _Continuations(processor.tokenizer, {key: texts_by_reply[key] for key in keys},
                                                    anchors=[anchor for anchor in anchors if anchor])
    results: list[dict[str, Any]] = [{} for _ in items]
    state = {"shared_prefix": True, "checked": False, "ties": []}
    tokenizer = processor.tokenizer
    padding_side = tokenizer.padding_side
    try:
        tokenizer.padding_side = "right"
        for batch in _batches(texts, batch_size):
            started = time.perf_counter()
            batch_scores = _score_batch(model, processor, [replies[i] for i in batch], [texts[i] for i in batch],
                                        [arrays[i] for i in batch],
                                        [continuations[items[i]["answer_type"]] for i in batch], method, batch_size,
                                        state, [items[i]["index"] for i in batch])
            elapsed_ms = (time.perf_counter() - started) * 1000.0 / len(batch)
            for i, scores in zip(batch, batch_scores):
                candidates = _candidates(items[i])
                best = max(range(len(scores)), key=lambda j: (scores[j], -j))
                results[i] = {"prediction": candidates[best], "option_scores": scores, "raw_output": None,
                              "extracted_by": "loglik", "latency_ms": elapsed_ms}
            bar.update(len(batch))
    finally:
        tokenizer.padding_side = padding_side
    if state["ties"]:
        warnings.warn(f"evaluate: {len(state['ties'])} item(s) have replies that tokenise identically (first: "
                      f"item {state['ties'][0]!r}), so their scores tie; is every reply word in the vocabulary?",
                      stacklevel=3)
    return results


def _generate_mode(model, processor, items, texts, arrays, *, max_new_tokens, batch_size, judge,
                   bar) -> list[dict[str, Any]]:
    from mmloop import answers

    results: list[dict[str, Any]] = [{} for _ in items]
    for batch in _batches(texts, batch_size):
        started = time.perf_counter()
        outputs = generate_texts(model, processor, [texts[i] for i in batch], [arrays[i] for i in batch],
                                 max_new_tokens=max_new_tokens)
        elapsed_ms = (time.perf_counter() - started) * 1000.0 / len(batch)
        for i, text in zip(batch, outputs):
            item = items[i]
            if item["answer_type"] == "yes_no":
                prediction, step = answers.extract_yes_no(text, judge=judge, question=item["question"])
            else:
                prediction, step = answers.extract_choice(text, item["options"], judge=judge,
                                                          question=item["question"])
            results[i] = {"prediction": prediction, "option_scores": [], "raw_output": text,
                          "extracted_by": step, "latency_ms": elapsed_ms}
        bar.update(len(batch))
    return results


def generate_texts(model, processor, texts: Sequence[str], arrays: Sequence[Any], *,
                   max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations of chat-template `texts` (one image each), batched with LEFT padding
    so every prompt ends where the new tokens start; only the new tokens, special tokens
    skipped, whitespace stripped. The tokenizer's padding side is restored afterwards."""
    tokenizer = processor.tokenizer
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = processor(text=list(texts), images=list(arrays), return_tensors="pt", padding=True,
                            add_special_tokens=False)
    finally:
        tokenizer.padding_side = padding_side
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
            texts = _chat_texts(processor, [_conversation(histories[sha], instruction) for sha in shas])
            replies = [""] * len(shas)
            for batch in _batches(texts, batch_size):
                outputs = generate_texts(model, processor, [texts[i] for i in batch],
                                         [images[shas[i]] for i in batch], max_new_tokens=max_new_tokens)
                for i, text in zip(batch, outputs):
                    replies[i] = text
                bar.update(len(batch))
            for sha, reply in zip(shas, replies):
                histories[sha].append((instruction, reply))
    finally:
        bar.close()
    return histories


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


# ---------------------------------------------------------------- log-likelihood scoring

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


def _score_batch(model, processor, replies, texts, arrays, continuations: Sequence[_Continuations], method: str,
                 batch_size: int, state: dict[str, Any] | None = None,
                 indices: Sequence[Any] | None = None) -> list[list[float]]:
    """Scores per item and reply. Items whose replies are each one token past the prompt take
    one forward pass (the next-token log-probs); the rest share each prompt's KV cache over
    their replies, or (method "per_option", or where that fails) get one sequence per reply."""
    state = state if state is not None else {"shared_prefix": True, "checked": False, "ties": []}
    encoded = processor(text=list(texts), images=list(arrays), return_tensors="pt", padding=True,
                        add_special_tokens=False)
    mask = encoded["attention_mask"]
    if not bool((mask.cumprod(dim=1).sum(dim=1) == mask.sum(dim=1)).all()):
        raise ValueError("evaluate: the processor padded on the left although the tokenizer's padding_side "
                         "is 'right'; scoring needs right padding so positions match an unbatched run")
    lengths = mask.sum(dim=1).tolist()
    ids = encoded["input_ids"]
    splits = [continuation.split(text, ids[row, :length].tolist())
              for row, (continuation, text, length) in enumerate(zip(continuations, texts, lengths))]
    option_ids = [[ids_by_reply[reply] for reply in item_replies]
                  for item_replies, (_, ids_by_reply) in zip(replies, splits)]
    for row, options in enumerate(option_ids):
        if len({tuple(option) for option in options}) < len(options):
            state["ties"].append(indices[row] if indices is not None else row)
    single = [method == "auto" and drop == 0 and all(len(ids) == 1 for ids in row)
              for (drop, _), row in zip(splits, option_ids)]
    scores: list[list[float]] = [[] for _ in replies]
    for use_single, rows in ((True, [r for r, one in enumerate(single) if one]),
                             (False, [r for r, one in enumerate(single) if not one])):
        if not rows:
            continue
        part = {key: value[rows] for key, value in encoded.items()} if len(rows) < len(replies) else dict(encoded)
        part_lengths = [lengths[r] for r in rows]
        part_drops = [splits[r][0] for r in rows]
        part_ids = [option_ids[r] for r in rows]
        if use_single:
            found = _score_next_token(model, part, part_lengths, part_ids)
        elif method == "per_option" or not state["shared_prefix"]:
            found = _score_per_option(model, part, part_lengths, part_drops, part_ids, batch_size)
        else:
            found = _score_shared_or_fall_back(model, part, part_lengths, part_drops, part_ids, batch_size,
                                               method, state)
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
    """Single-token replies: the log-softmax at each prompt's last token."""
    import torch

    last = torch.tensor([length - 1 for length in lengths])
    positions = torch.unique(last)
    logits, kept = _forward_logits(model, dict(encoded), positions)
    column = torch.searchsorted(positions, last) if kept else last
    rows = logits[torch.arange(len(lengths), device=logits.device), column.to(logits.device)].float()
    logprobs = torch.log_softmax(rows, dim=-1).cpu()
    return [[float(logprobs[row, token[0]]) for token in options] for row, options in enumerate(option_ids)]


def _score_shared_or_fall_back(model, encoded, lengths, drops, option_ids, batch_size: int, method: str,
                               state: dict[str, Any]) -> list[list[float]]:
    """The shared-prefix scores; the first time, one item is checked against the per-option path.
    With method "auto" a failure (an exception, or a check that disagrees) switches this
    evaluation to the per-option path; with "shared_prefix" it is raised."""
    try:
        found = _score_shared_prefix(model, encoded, lengths, drops, option_ids, batch_size)
        if not state["checked"]:
            # The item with the longest continuation exercises the cache the most.
            row = max(range(len(option_ids)), key=lambda r: max(len(ids) for ids in option_ids[r]))
            one = {key: value[[row]] for key, value in encoded.items()}
            expected = _score_per_option(model, one, [lengths[row]], [drops[row]], [option_ids[row]], batch_size)[0]
            tolerance = SHARED_PREFIX_TOLERANCE.get(str(getattr(model, "dtype", "float32")).replace("torch.", ""),
                                                    HALF_PRECISION_TOLERANCE)
            worst = max(abs(a - b) for a, b in zip(found[row], expected))
            if worst > tolerance:
                raise ValueError(f"shared-prefix scores differ from the per-option path by {worst:.3g} "
                                 f"(tolerance {tolerance:g})")
            state["checked"] = True
        return found
    except Exception as err:  # noqa: BLE001 - any model-specific failure means: use the plain path
        if method == "shared_prefix":
            raise
        state["shared_prefix"] = False
        warnings.warn(f"evaluate: shared-prefix scoring does not work for this model ({type(err).__name__}: "
                      f"{err}); scoring one full sequence per option instead", stacklevel=2)
        return _score_per_option(model, encoded, lengths, drops, option_ids, batch_size)


def _score_shared_prefix(model, encoded, lengths, drops, option_ids, batch_size: int) -> list[list[float]]:
    """Each prompt (minus its dropped tokens) runs once with the KV cache on; its last kept
    position gives every reply's first-token log-prob. Replies with more tokens then run
    their tokens 1.. against the cache rows of their item (`batch_size` replies at a time),
    with the prompt's padding and dropped tokens masked out and explicit positions, so each
    token sees exactly what it sees in the unbatched full sequence."""
    import torch

    kept = [length - drop for length, drop in zip(lengths, drops)]
    if min(kept) < 1:
        raise ValueError("evaluate: a reply's continuation replaces the whole prompt")
    device = getattr(model, "device", None)
    to_device = (lambda value: value.to(device) if device is not None and hasattr(value, "to") else value)  # noqa: E731
    inputs = {key: to_device(value) for key, value in encoded.items()}
    last = torch.tensor([k - 1 for k in kept])
    positions = torch.unique(last)
    try:
        output = model(**inputs, logits_to_keep=to_device(positions), use_cache=True)
        column = torch.searchsorted(positions, last)
    except TypeError:
        output = model(**inputs, use_cache=True)
        column = last
    cache = getattr(output, "past_key_values", None)
    if cache is None:
        raise NotImplementedError("the model returned no KV cache")
    logits = output.logits
    first = torch.log_softmax(logits[torch.arange(len(kept), device=logits.device),
                                     column.to(logits.device)].float(), dim=-1).cpu()
    scores = [[float(first[row, ids[0]]) for ids in options] for row, options in enumerate(option_ids)]

    width = encoded["input_ids"].shape[1]
    prefix_mask = (torch.arange(width)[None, :] < torch.tensor(kept)[:, None]).long()
    pad_id = _pad_id(encoded, lengths)
    sequences = [(row, option, ids) for row, options in enumerate(option_ids)
                 for option, ids in enumerate(options) if len(ids) > 1]
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        steps = max(len(ids) for *_, ids in chunk) - 1  # the last token is predicted, never fed
        input_ids = torch.full((len(chunk), steps), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), steps), dtype=torch.long)
        position_ids = torch.zeros((len(chunk), steps), dtype=torch.long)
        for r, (row, _, ids) in enumerate(chunk):
            input_ids[r, :len(ids) - 1] = torch.tensor(ids[:-1])
            attention[r, :len(ids) - 1] = 1
            position_ids[r] = kept[row] + torch.arange(steps)
        index = torch.tensor([row for row, *_ in chunk])
        logits = model(input_ids=to_device(input_ids),
                       attention_mask=to_device(torch.cat([prefix_mask[index], attention], dim=1)),
                       position_ids=to_device(position_ids), past_key_values=_select_cache(cache, index),
                       use_cache=True).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for r, (row, option, ids) in enumerate(chunk):
            scores[row][option] += sum(float(logprobs[r, j - 1, ids[j]]) for j in range(1, len(ids)))
    return scores


def _select_cache(cache, index):
    """A new cache holding rows `index` of `cache` (rows may repeat: one per reply), so the
    prompt's cache is reused by every reply without being modified."""
    from transformers import DynamicCache

    if isinstance(cache, DynamicCache):
        if any(getattr(cache, "is_sliding", None) or ()):
            raise NotImplementedError("sliding-window cache layers")
        layers = []
        for layer in cache.layers:
            if getattr(layer, "keys", None) is None:
                raise NotImplementedError("a cache layer without keys")
            layers.append((layer.keys.index_select(0, index.to(layer.keys.device)),
                           layer.values.index_select(0, index.to(layer.values.device))))
        return DynamicCache(layers)
    if isinstance(cache, tuple):  # the legacy format: ((keys, values), ...) per layer
        return tuple((keys.index_select(0, index.to(keys.device)), values.index_select(0, index.to(values.device)))
                     for keys, values in cache)
    raise NotImplementedError(f"cache type {type(cache).__name__}")


def _score_per_option(model, encoded, lengths, drops, option_ids, batch_size: int) -> list[list[float]]:
    """One sequence per (item, reply): prompt (minus dropped tokens) plus the continuation,
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


# ---------------------------------------------------------------- metrics and bad cases

@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How a benchmark is evaluated (params `evaluate`, or `mmloop eval`'s flags).

    `rounds` > 0 scores every item a second time after that many earlier turns
    (`round_source`), so single- and multi-round accuracy sit side by side; `circular`
    adds the rotations of every mcq item that has none in the file (CircularEval)."""

    mode: str = MODE
    answer_format: str = "letter"
    batch_size: int = 128
    rounds: int = 0
    round_source: str = "same_image"
    circular: bool = False
    max_new_tokens: int = 16
    judge: str | None = None  # "package.module:function", the extraction's step-3 hook

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None, answer_format: str = "letter") -> "EvalSettings":
        section = dict(section or {})
        known = {field.name for field in dataclasses.fields(cls)} - {"answer_format"}
        settings = {key: section[key] for key in known if section.get(key) is not None}
        return cls(answer_format=answer_format, **settings)


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


def run_benchmark(model, processor, items: Sequence[Mapping[str, Any]], settings: EvalSettings, *, kind: str,
                  benchmark: str, model_name: str, iteration: int
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(items scored, prediction rows, metrics) for a benchmark, the way the DVC stage and
    `mmloop eval` both run it. The items scored are `items` plus any circular copies.

    The metrics' top level is the single-round exact-match accuracy (`metric` says so) that
    the loop reads; labelled blocks follow: "circular", the benchmark's own metrics ("pope",
    "mme", "aokvqa_direct"), and "multi_round" (the same blocks after `rounds` earlier turns).
    The prompt convention and the scoring settings are recorded so the numbers can be reproduced."""
    from mmloop import metrics as benchmark_metrics
    from mmloop.loaders import circular_copies

    convention = conventions_for(kind)
    if settings.circular:
        items = circular_copies(items)
    common = dict(model_name=model_name, iteration=iteration, benchmark=benchmark, mode=settings.mode,
                  batch_size=settings.batch_size, answer_format=settings.answer_format, convention=convention,
                  max_new_tokens=settings.max_new_tokens, judge=load_judge(settings.judge))
    predictions = evaluate(model, processor, items, **common)
    blocks = benchmark_metrics.summary(predictions, kind)
    result = {"metric": "exact_match", **blocks.pop("exact_match"), **blocks,
              "benchmark": benchmark, "model": model_name, "iteration": int(iteration), "mode": settings.mode,
              "answer_format": settings.answer_format, "convention": convention.as_dict()}
    if settings.rounds:
        # Items without another question on their image get no earlier turn: they would only
        # repeat the single-round run, so the multi-round block covers the others and compares
        # them with their own single-round accuracy.
        later = [row for row in evaluate(model, processor, items, rounds=settings.rounds,
                                         round_source=settings.round_source, **common) if row["rounds"]]
        if later:
            predictions += later
            scored = {row["item"] for row in later}
            result["multi_round"] = {
                "rounds": settings.rounds, "round_source": settings.round_source,
                **benchmark_metrics.summary(later, kind),
                "single_round_same_items": benchmark_metrics.accuracy(
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
    for name in ("pope", "mme", "aokvqa_direct"):
        if name in result:
            lines.append(f"{name}: {json.dumps(result[name], sort_keys=True)}")
    return "\n".join(lines)


def badcases(predictions: Iterable[Mapping[str, Any]], items: Sequence[Mapping[str, Any]], iteration: int,
             data_root: str | os.PathLike = "data", *, source: str = "bench.tsv",
             answer_format: str = "letter", convention: PromptConvention | None = None) -> list[dict[str, Any]]:
    """Sample rows (origin "badcase") for the wrong predictions: the item's (single-round) user
    turn and the correct reply (letter or option text; Yes/No for yes_no items) as the
    assistant turn; `image` is the content-addressed store path when that file exists under
    `data_root`, else null (the image is then only in the benchmark file)."""
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
