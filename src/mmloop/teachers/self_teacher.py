"""SENA's self-generated preference pairs (arXiv 2412.15650): the model under training is its own teacher.

On unlabeled pool images, with no external teacher, the model makes (prompt, chosen, rejected) pairs:

1. Image-driven self-questioning. The model asks a question about the image (template
   "question", sampled at `temperature` with a seed per try). With `self_check` the model is then
   asked whether the image can answer that question (template "check"): by default the
   log-likelihoods of the two replies the template names (front matter `replies`, affirmative
   first) are compared, the question passes when the affirmative one is higher
   (`check_method="loglik"`); with `check_method="generate"` a greedy reply is read as yes/no.
   Images whose question fails are asked again, up to `max_question_tries` tries in all; an image
   whose tries all fail (an empty question counts as a failed try) is dropped as
   `unanswerable_question`. Without `self_check` the first question is used as it is (an empty
   one is dropped as `empty_question`).
2. Answer self-enhancement. The model answers its question (template "answer", greedy): the
   initial answer. With `self_enhance` it also describes the image (template "describe") and then
   refines its answer given the question, its description and its initial answer (template
   "refine"); the refined answer is `chosen`. Without it, `chosen` is the initial answer.
3. The rejected answer. The same question (template "answer", greedy) on the image after the
   DDPM forward process to step `t` (`mmloop.teachers.noise.noised_image`), the noise seeded from the
   pair id (`noise_seed`, recorded in the pair).
4. A pair whose chosen or rejected answer is empty is dropped as `empty_answer`; one whose
   answers agree once normalised (lower case, whitespace collapsed, final punctuation stripped)
   as `same_answer`.

Every step is one batched call over all images still in play (`generate`, `check`), through the
evaluation's own plumbing (`eval.scoring.generate_batched`, `eval.scoring.LoglikScorer`), so it
runs in-process on the CPU or a GPU. Given the same model, images, settings and seed, `run` gives
the same pairs: sampling runs under its own seeded torch RNG state (the global one is restored
afterwards), in length-ordered batches of `batch_size`, so the batch size is part of what decides
the sampled questions.
"""

from __future__ import annotations

import contextlib
import os
import string
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.io import progress, sha256_bytes, stable_hash
from mmloop.teachers.prompts import PromptTemplate, load_template

BACKEND = "self"
CATEGORY = "self"
# The templates' keys, in the order the steps run.
TEMPLATE_KEYS = ("question", "check", "answer", "describe", "refine")
DEFAULT_TEMPLATES = {key: f"prompts/self_{key}.j2" for key in TEMPLATE_KEYS}
# What `run` generates, each one batched call: the template keys plus "rejected" ("answer" on the noised image).
STEPS = ("question", "check", "answer", "describe", "refine", "rejected")
# Why an image gives no pair, in the order they are decided.
DROP_REASONS = ("unanswerable_question", "empty_question", "empty_answer", "same_answer")
CHECK_METHODS = ("loglik", "generate")
DEFAULT_CHECK_REPLIES = ("Yes", "No")
# The fields of a pair (and of a dropped record, which adds `reason`), in this order.
PAIR_FIELDS = ("pair_id", "parent_ids", "image", "image_sha256", "prompt", "chosen", "rejected", "initial_answer",
               "description", "noise_t", "noise_seed", "category", "provenance")
_FINAL_PUNCTUATION = string.punctuation + string.whitespace


def normalise_answer(text: str | None) -> str:
    """Lower case, whitespace collapsed, final punctuation stripped: what `same_answer` compares."""
    return " ".join((text or "").lower().split()).rstrip(_FINAL_PUNCTUATION)


def _seed_from(*parts: Any) -> int:
    """A 32-bit seed from a stable hash of `parts`."""
    return int(stable_hash(*parts, length=8), 16)


class _Sampling:
    """The model with `generate` sampling at `temperature` (plain temperature sampling: no top-k,
    no top-p), for `scoring.generate_batched`, which asks for greedy decoding."""

    def __init__(self, model, temperature: float):
        self._model, self._temperature = model, float(temperature)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, **kwargs: Any):
        kwargs.update(do_sample=True, temperature=self._temperature, top_k=0, top_p=1.0, num_beams=1)
        return self._model.generate(**kwargs)


class SelfTeacher:
    """The model under training making its own preference pairs (see the module docstring).

    `templates` overrides some or all of DEFAULT_TEMPLATES ({"question" | "check" | "answer" |
    "describe" | "refine": path}); only the templates the switches use are loaded. `t`,
    `noise_steps`, `beta_start` and `beta_end` are the DDPM forward process of the rejected
    answer's image. `max_new_tokens` bounds every generated reply (the description too, unless
    `max_description_tokens` is given). `data_root` is where the images' relative paths start;
    `iteration` goes into every pair id."""

    def __init__(self, model, processor, *, templates: Mapping[str, str | os.PathLike] | None = None,
                 max_question_tries: int = 3, temperature: float = 0.9, max_new_tokens: int = 48, t: int = 600,
                 self_check: bool = True, self_enhance: bool = True, batch_size: int = 16, seed: int = 0,
                 data_root: str | os.PathLike = "data", iteration: int = 0, check_method: str = "loglik",
                 max_description_tokens: int | None = None, noise_steps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02):
        from mmloop.teachers.noise import ddpm_alpha_bar

        for name, value in (("max_question_tries", max_question_tries), ("max_new_tokens", max_new_tokens),
                            ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"self teacher: {name} must be a positive integer, got {value!r}")
        if max_description_tokens is not None and (not isinstance(max_description_tokens, int)
                                                   or max_description_tokens < 1):
            raise ValueError(f"self teacher: max_description_tokens must be a positive integer or None, "
                             f"got {max_description_tokens!r}")
        if not float(temperature) >= 0:
            raise ValueError(f"self teacher: temperature must be >= 0 (0: greedy), got {temperature!r}")
        if check_method not in CHECK_METHODS:
            raise ValueError(f"self teacher: check_method must be one of {CHECK_METHODS}, got {check_method!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"self teacher: seed must be an integer, got {seed!r}")
        ddpm_alpha_bar(t, noise_steps, beta_start, beta_end)  # a bad step or schedule fails here, before any work

        self.model, self.processor = model, processor
        self.max_question_tries, self.temperature = max_question_tries, float(temperature)
        self.max_new_tokens = max_new_tokens
        self.max_description_tokens = max_description_tokens or max_new_tokens
        self.t, self.noise_steps, self.beta_start, self.beta_end = int(t), noise_steps, beta_start, beta_end
        self.self_check, self.self_enhance, self.check_method = bool(self_check), bool(self_enhance), check_method
        self.batch_size, self.seed = batch_size, seed
        self.data_root, self.iteration = Path(data_root), int(iteration)
        self.templates = self._load_templates(templates or {})
        self.check_replies = self._check_replies()
        self.wall_s: dict[str, float] = {}
        self._scorer = None

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, *, dtype: str = "float32", device: str | None = None,
                        **settings: Any) -> SelfTeacher:
        """The teacher of a saved model (`models.vlm.load`: a models/iter=N folder or a hub id)."""
        from mmloop.models import vlm

        model, processor = vlm.load(path_or_hub_id, dtype=dtype, device=device)
        return cls(model, processor, **settings)

    # ------------------------------------------------------------ templates

    def _load_templates(self, overrides: Mapping[str, str | os.PathLike]) -> dict[str, PromptTemplate]:
        unknown = set(overrides) - set(TEMPLATE_KEYS)
        if unknown:
            raise ValueError(f"self teacher: unknown template key(s) {sorted(unknown)} (have {list(TEMPLATE_KEYS)})")
        paths = {**DEFAULT_TEMPLATES, **overrides}
        used = ["question", "answer"] + (["check"] if self.self_check else []) + \
            (["describe", "refine"] if self.self_enhance else [])
        return {key: load_template(paths[key]) for key in TEMPLATE_KEYS if key in used}

    def _check_replies(self) -> tuple[str, str]:
        if not self.self_check:
            return DEFAULT_CHECK_REPLIES
        template = self.templates["check"]
        replies = template.meta.get("replies", list(DEFAULT_CHECK_REPLIES))
        if (not isinstance(replies, list) or len(replies) != 2 or not all(isinstance(r, str) and r.strip()
                                                                          for r in replies)
                or replies[0] == replies[1]):
            raise ValueError(f"{template.path}: front matter 'replies' must be two different non-empty strings, "
                             f"the affirmative one first (quote yes/no: YAML reads them as booleans), got {replies!r}")
        return replies[0], replies[1]

    def prompt_provenance(self) -> list[dict[str, str]]:
        """[{step, id ("self_question@v1"), sha256 of the template file}] of every template used."""
        return [{"step": key, "id": template.name, "sha256": template.file_sha256}
                for key, template in self.templates.items()]

    def _user_turns(self, key: str, contexts: Sequence[Mapping[str, Any]]) -> list[str]:
        return [self.templates[key].render(**context).text.strip() for context in contexts]

    def _chat_texts(self, users: Sequence[str]) -> list[str]:
        from mmloop.eval.prompts import chat_texts, conversation

        return chat_texts(self.processor, [conversation([], user) for user in users]) if users else []

    # ------------------------------------------------------------ the model calls (one batched call per step)

    @contextlib.contextmanager
    def _step(self, step: str, total: int):
        """One step's progress bar, under inference mode, its wall time added to `wall_s[step]`."""
        import torch

        started = time.perf_counter()
        bar = progress(total=total, desc=f"self teacher: {step}", unit="prompt")
        try:
            with torch.inference_mode():
                yield bar
        finally:
            bar.close()
            self.wall_s[step] = self.wall_s.get(step, 0.0) + time.perf_counter() - started

    @contextlib.contextmanager
    def _seeded(self, seed: int | None):
        """torch's RNG seeded with `seed` inside the block and restored after it (None: untouched)."""
        import torch

        if seed is None:
            yield
            return
        device = getattr(self.model, "device", None)
        with torch.random.fork_rng(devices=[device] if getattr(device, "type", "cpu") == "cuda" else []):
            torch.manual_seed(seed)
            yield

    def generate(self, step: str, texts: Sequence[str], arrays: Sequence[Any], *, max_new_tokens: int | None = None,
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        """The model's reply to each chat-template text, each with its image (uint8 RGB array):
        greedy, or sampled at `temperature` > 0 under a torch RNG seeded with `seed`."""
        from mmloop.eval import scoring

        if not texts:
            return []
        sampling = temperature > 0
        model = _Sampling(self.model, temperature) if sampling else self.model
        with self._step(step, len(texts)) as bar, self._seeded(seed if sampling else None):
            replies, _ = scoring.generate_batched(model, self.processor, texts, arrays, batch_size=self.batch_size,
                                                  max_new_tokens=max_new_tokens or self.max_new_tokens, bar=bar)
        return replies

    def check(self, questions: Sequence[str], arrays: Sequence[Any]) -> tuple[list[bool], list[float | None]]:
        """(whether the image can answer each question, the affirmative reply's log-likelihood minus
        the negative one's, None when the reply is generated), as the model itself judges."""
        from mmloop.eval import answers, scoring

        if not questions:
            return [], []
        users = self._user_turns("check", [{"question": question} for question in questions])
        texts = self._chat_texts(users)
        if self.check_method == "generate":
            replies = self.generate("check", texts, arrays)
            return [answers.extract_yes_no(reply)[0] == "yes" for reply in replies], [None] * len(replies)
        if self._scorer is None:
            self._scorer = scoring.LoglikScorer(self.model, self.processor, batch_size=self.batch_size)
        # Every check prompt ends with the template's last line: its tokenisation is cached once.
        anchor = self._user_turns("check", [{"question": ""}])[0].splitlines()[-1]
        with self._step("check", len(texts)) as bar:
            scores, _ = self._scorer.score(texts, arrays, [list(self.check_replies)] * len(texts),
                                           ["check"] * len(texts), (anchor,), list(range(len(texts))), bar)
        margins = [float(yes - no) for yes, no in scores]
        return [margin > 0 for margin in margins], margins

    # ------------------------------------------------------------ the run

    def run(self, images: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                dict[str, Any]]:
        """(pairs, dropped, stats) for pool images [{image (path relative to data_root),
        image_sha256, sample_id}]: at most one pair per image, and every image that gives none
        is in `dropped` with its reason. Pairs and dropped records have the PAIR_FIELDS (dropped
        ones add `reason`), in the order of `images`."""
        started = time.perf_counter()
        self.wall_s = {}
        records = _check_images(images)
        arrays = self._load_images(records)
        clean = [arrays[record["image_sha256"]] for record in records]
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        try:
            import torch

            with torch.inference_mode():
                asked = self._ask(clean)
                rows = self._answer(records, clean, asked)
        finally:
            if was_training:
                self.model.train()
        pairs = [row for row in rows if row.get("reason") is None]
        for row in pairs:
            row.pop("reason", None)
        dropped = [row for row in rows if row.get("reason") is not None]
        checks = sum(len(attempt["checks"]) for attempt in asked)
        passed = sum(sum(attempt["checks"]) for attempt in asked)
        stats = {
            "images": len(records), "pairs": len(pairs),
            "dropped": {reason: sum(row["reason"] == reason for row in dropped) for reason in DROP_REASONS},
            "mean_tries": (sum(attempt["tries"] for attempt in asked) / len(asked)) if asked else None,
            "checks": checks, "check_pass_rate": (passed / checks) if checks else None,
            "wall_s": {**{step: round(self.wall_s.get(step, 0.0), 3) for step in STEPS},
                       "total": round(time.perf_counter() - started, 3)},
        }
        return pairs, dropped, stats

    def _load_images(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """{image_sha256: uint8 RGB array}, each file read once and checked against its hash."""
        import io

        import numpy as np
        from PIL import Image

        arrays: dict[str, Any] = {}
        for record in records:
            sha = record["image_sha256"]
            if sha in arrays:
                continue
            path = self.data_root / record["image"]
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: image of pool sample {record['sample_id']!r} not found") from None
            if sha256_bytes(data) != sha:
                raise ValueError(f"{path}: image of pool sample {record['sample_id']!r} does not match its "
                                 f"image_sha256 {sha}")
            try:
                with Image.open(io.BytesIO(data)) as handle:
                    arrays[sha] = np.array(handle.convert("RGB"), dtype=np.uint8)
            except OSError as err:
                raise ValueError(f"{path}: image of pool sample {record['sample_id']!r} is not readable "
                                 f"({err})") from None
        return arrays

    def _ask(self, arrays: Sequence[Any]) -> list[dict[str, Any]]:
        """Per image: {question (the last one asked), tries, passed, margin, checks (each check's verdict)}."""
        asked = [{"question": "", "tries": 0, "passed": False, "margin": None, "checks": []} for _ in arrays]
        question_text = self._chat_texts(self._user_turns("question", [{}]))[0]
        pending = list(range(len(arrays)))
        for attempt in range(self.max_question_tries):
            questions = self.generate("question", [question_text] * len(pending), [arrays[i] for i in pending],
                                      temperature=self.temperature, seed=_seed_from(self.seed, "question", attempt))
            for i, question in zip(pending, questions):
                asked[i].update(question=question.strip(), tries=attempt + 1)
            if not self.self_check:
                for i in pending:
                    asked[i]["passed"] = bool(asked[i]["question"])
                break
            to_check = [i for i in pending if asked[i]["question"]]
            verdicts, margins = self.check([asked[i]["question"] for i in to_check], [arrays[i] for i in to_check])
            for i, verdict, margin in zip(to_check, verdicts, margins):
                asked[i].update(passed=bool(verdict), margin=margin)
                asked[i]["checks"].append(bool(verdict))
            pending = [i for i in pending if not asked[i]["passed"]]
            if not pending:
                break
        return asked

    def _answer(self, records, arrays, asked) -> list[dict[str, Any]]:
        """One row per image: the pair, or the dropped record with its `reason`."""
        from mmloop.teachers.noise import noised_image
        from mmloop.schema import make_sample_id

        rows = []
        for record, attempt in zip(records, asked):
            question = attempt["question"]
            pair_id = make_sample_id(record["image_sha256"], [{"role": "user", "content": question}], BACKEND,
                                     self.iteration)
            rows.append({
                "pair_id": pair_id, "parent_ids": [record["sample_id"]], "image": record["image"],
                "image_sha256": record["image_sha256"], "prompt": question or None, "chosen": None, "rejected": None,
                "initial_answer": None, "description": None, "noise_t": self.t,
                "noise_seed": _seed_from(pair_id, "noise"), "category": CATEGORY,
                "provenance": {"backend": BACKEND, "prompts": self.prompt_provenance(), "tries": attempt["tries"],
                               "check_method": self.check_method if self.self_check else None,
                               "check_margin": attempt["margin"], "temperature": self.temperature,
                               "seed": self.seed, "iteration": self.iteration},
                "reason": None if attempt["passed"] else
                ("unanswerable_question" if self.self_check else "empty_question"),
            })
        live = [i for i, row in enumerate(rows) if row["reason"] is None]
        if not live:
            return rows
        answer_texts = dict(zip(live, self._chat_texts(self._user_turns(
            "answer", [{"question": rows[i]["prompt"]} for i in live]))))
        initial = self.generate("answer", [answer_texts[i] for i in live], [arrays[i] for i in live])
        for i, answer in zip(live, initial):
            rows[i]["initial_answer"] = rows[i]["chosen"] = answer
        if self.self_enhance:
            describe_text = self._chat_texts(self._user_turns("describe", [{}]))[0]
            descriptions = self.generate("describe", [describe_text] * len(live), [arrays[i] for i in live],
                                         max_new_tokens=self.max_description_tokens)
            refine_texts = self._chat_texts(self._user_turns("refine", [
                {"question": rows[i]["prompt"], "description": description, "answer": answer}
                for i, description, answer in zip(live, descriptions, initial)]))
            refined = self.generate("refine", refine_texts, [arrays[i] for i in live])
            for i, description, answer in zip(live, descriptions, refined):
                rows[i].update(description=description, chosen=answer)
        for i in live:
            if not normalise_answer(rows[i]["chosen"]):
                rows[i]["reason"] = "empty_answer"
        live = [i for i in live if rows[i]["reason"] is None]
        if not live:
            return rows
        noised = [noised_image(arrays[i], self.t, seed=rows[i]["noise_seed"], steps=self.noise_steps,
                               beta_start=self.beta_start, beta_end=self.beta_end) for i in live]
        rejected = self.generate("rejected", [answer_texts[i] for i in live], noised)
        for i, answer in zip(live, rejected):
            rows[i]["rejected"] = answer
            if not normalise_answer(answer):
                rows[i]["reason"] = "empty_answer"
            elif normalise_answer(answer) == normalise_answer(rows[i]["chosen"]):
                rows[i]["reason"] = "same_answer"
        return rows


def _check_images(images: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pool records as plain dicts, or ValueError naming the first bad one."""
    records, seen = [], set()
    for position, image in enumerate(images):
        if not isinstance(image, Mapping):
            raise ValueError(f"self teacher: image {position} must be a mapping with image, image_sha256 and "
                             f"sample_id, got {type(image).__name__}")
        for key in ("image", "image_sha256", "sample_id"):
            if not isinstance(image.get(key), str) or not image[key]:
                raise ValueError(f"self teacher: image {position} ({image.get('sample_id')!r}): field {key!r} must "
                                 f"be a non-empty string")
        if image["sample_id"] in seen:
            raise ValueError(f"self teacher: sample_id {image['sample_id']!r} is given twice")
        seen.add(image["sample_id"])
        records.append({"image": image["image"], "image_sha256": image["image_sha256"].lower(),
                        "sample_id": image["sample_id"]})
    return records
