"""Adaptive Bad-case Sampling (ABS, from MLLM-DataEngine).

Where the model errs most, the next round writes most data:
1. per-category error rates from the benchmark predictions, Laplace-smoothed so that no
   category's weight is exactly 0 (a category the model aces still gets a little data)
   or 1;
2. the budget is split in proportion to the error rates (largest remainder, deterministic);
   `strategy: uniform` splits it equally instead, the control arm;
3. each query gets an anchor bad case of its category, a few other bad cases of that
   category as in-context examples, and an image from the unlabeled pool: one of the
   top-K CLIP-nearest pool images to the anchor's image, or, at `random_ratio`, a random
   pool image. A pool image is used at most once per round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmloop.config import STRATEGIES, SampleConfig

OPERATOR_NEIGHBOUR = "neighbour"
OPERATOR_RANDOM = "random"


# ---------------------------------------------------------------- error rates and allocation

def error_rates(predictions: Iterable[Mapping[str, Any]], *, smoothing: float = 1.0,
                source: str = "predictions") -> dict[str, dict[str, float]]:
    """{category: {n, errors, rate}} with rate = (errors + s) / (n + 2s), strictly inside (0, 1)."""
    counts: dict[str, list[int]] = {}
    for position, row in enumerate(predictions):
        category = row.get("category")
        if category is None or (isinstance(category, float) and category != category):
            raise ValueError(f"{source}: row {position} (item {row.get('item')!r}) has no category")
        correct = row.get("correct")
        if correct is None:
            raise ValueError(f"{source}: row {position} (item {row.get('item')!r}) has no 'correct' value")
        entry = counts.setdefault(str(category), [0, 0])
        entry[0] += 1
        entry[1] += 0 if bool(correct) else 1
    if smoothing <= 0:
        raise ValueError(f"error_rates: smoothing must be > 0, got {smoothing}")
    return {category: {"n": n, "errors": errors, "rate": (errors + smoothing) / (n + 2 * smoothing)}
            for category, (n, errors) in sorted(counts.items())}


def category_weights(rates: Mapping[str, Mapping[str, float]], strategy: str = "abs") -> dict[str, float]:
    """Weights summing to 1: proportional to the error rate (abs) or equal (uniform)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {strategy!r} (have {', '.join(STRATEGIES)})")
    if not rates:
        return {}
    if strategy == "uniform":
        return {category: 1.0 / len(rates) for category in rates}
    total = sum(entry["rate"] for entry in rates.values())
    return {category: entry["rate"] / total for category, entry in rates.items()}


def allocate(weights: Mapping[str, float], budget: int) -> dict[str, int]:
    """Split `budget` by `weights` with the largest-remainder method.

    Ties in the remainder go to the larger weight, then the category name, so the split
    is deterministic and always sums to the budget.
    """
    if budget < 0:
        raise ValueError(f"allocate: budget must be >= 0, got {budget}")
    total = sum(weights.values())
    if not weights or total <= 0:
        if budget:
            raise ValueError("allocate: no category has a positive weight to spend the budget on")
        return {category: 0 for category in weights}
    quotas = {category: budget * weight / total for category, weight in weights.items()}
    shares = {category: int(quota) for category, quota in quotas.items()}
    left = budget - sum(shares.values())
    order = sorted(quotas, key=lambda c: (-(quotas[c] - shares[c]), -weights[c], c))
    for category in order[:left]:
        shares[category] += 1
    return dict(sorted(shares.items()))


# ---------------------------------------------------------------- query selection

@dataclass
class Slot:
    """One query to fill: its category, anchor bad case and in-context bad cases."""
    category: str
    anchor: Mapping[str, Any] | None
    in_context: list[Mapping[str, Any]]
    operator: str = OPERATOR_NEIGHBOUR


def plan_slots(allocation: Mapping[str, int], badcases_by_category: Mapping[str, Sequence[Mapping[str, Any]]],
               config: SampleConfig, rng) -> list[Slot]:
    """Anchors cycle through each category's bad cases in a seeded shuffled order; the in-context
    cases are other bad cases of the category (the anchor itself only when it is the only one);
    `random_ratio` of the anchored slots take a random image. Categories without bad cases get
    random images and no in-context cases."""
    slots: list[Slot] = []
    for category, count in sorted(allocation.items()):
        cases = list(badcases_by_category.get(category, ()))
        if not cases:
            slots += [Slot(category, None, [], OPERATOR_RANDOM) for _ in range(count)]
            continue
        order = [cases[i] for i in rng.permutation(len(cases))]
        for index in range(count):
            anchor = order[index % len(order)]
            others = [case for case in order if case is not anchor] or [anchor]
            take = min(config.in_context, len(others))
            chosen = sorted(rng.choice(len(others), size=take, replace=False)) if take else []
            slots.append(Slot(category, anchor, [others[i] for i in chosen]))
    anchored = [i for i, slot in enumerate(slots) if slot.anchor is not None]
    n_random = int(round(len(anchored) * float(config.random_ratio)))
    for i in rng.choice(anchored, size=n_random, replace=False) if n_random else []:
        slots[int(i)].operator = OPERATOR_RANDOM
    return slots


def assign_images(slots: Sequence[Slot], pool_embeddings, anchor_embedding, config: SampleConfig, rng
                  ) -> list[tuple[int, float | None]]:
    """A distinct pool index per slot (and its CLIP similarity to the anchor image).

    Neighbour slots pick at random among the `top_k` nearest pool images not yet used, so
    the pick falls back to the next-nearest unused ones as the nearest run out; random slots
    pick uniformly among unused images. Slots are filled in a seeded shuffled order so that
    no category gets first claim on the nearest images.
    """
    import numpy as np

    pool_size = len(pool_embeddings)
    if len(slots) > pool_size:
        raise ValueError(f"sample.budget ({len(slots)} queries) exceeds the unlabeled pool ({pool_size} images): "
                         f"each pool image is used at most once per round; lower sample.budget or grow the pool")
    used = np.zeros(pool_size, dtype=bool)
    similarity_cache: dict[str, Any] = {}
    picks: list[tuple[int, float | None]] = [(-1, None)] * len(slots)
    for slot_index in rng.permutation(len(slots)):
        slot = slots[int(slot_index)]
        similarities = None
        if slot.anchor is not None:
            key = slot.anchor["sample_id"]
            if key not in similarity_cache:
                similarity_cache[key] = pool_embeddings @ anchor_embedding(slot.anchor)
            similarities = similarity_cache[key]
        free = np.flatnonzero(~used)
        if slot.operator == OPERATOR_NEIGHBOUR:
            candidate_scores = similarities[free]
            k = min(int(config.top_k), len(free))
            nearest = free[np.argpartition(-candidate_scores, k - 1)[:k]] if k < len(free) else free
            choice = int(nearest[rng.integers(len(nearest))])
        else:
            choice = int(free[rng.integers(len(free))])
        used[choice] = True
        # float32 rounding can put a unit-norm dot product a hair outside [-1, 1].
        picks[int(slot_index)] = (choice, None if similarities is None
                                  else float(np.clip(similarities[choice], -1.0, 1.0)))
    return picks


def select_queries(predictions: Sequence[Mapping[str, Any]], badcases: Sequence[Mapping[str, Any]],
                   pool: Sequence[Mapping[str, Any]], pool_embeddings, anchor_embedding, *,
                   config: SampleConfig, seed: int, iteration: int, pool_source: str = "pool",
                   clip_name: str | None = None, predictions_source: str = "predictions"
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The query rows (sample schema, origin "query") and a summary for the metrics file.

    `pool` rows need `image` (path relative to the data root) and `image_sha256`, aligned with
    `pool_embeddings` (unit-norm rows). `anchor_embedding(badcase)` returns the unit-norm CLIP
    embedding of a bad case's image.
    """
    import numpy as np

    from mmloop.schema import make_sample_id, sample

    if len(pool) != len(pool_embeddings):
        raise ValueError(f"{pool_source}: {len(pool)} pool images but {len(pool_embeddings)} embeddings")
    rng = np.random.default_rng(seed)
    rates = error_rates(predictions, smoothing=float(config.smoothing), source=predictions_source)
    by_category: dict[str, list[Mapping[str, Any]]] = {}
    for case in sorted(badcases, key=lambda row: row["sample_id"]):
        by_category.setdefault(str(case.get("category")), []).append(case)
    for category in by_category:
        # A bad case's category should have predictions; if not, rate it as all-wrong with no evidence.
        rates.setdefault(category, {"n": 0, "errors": 0, "rate": 0.5})
    weights = category_weights(rates, config.strategy)
    allocation = allocate(weights, int(config.budget))
    slots = plan_slots(allocation, by_category, config, rng)
    picks = assign_images(slots, pool_embeddings, anchor_embedding, config, rng)

    records = []
    for slot, (pool_index, similarity) in zip(slots, picks):
        chosen = pool[pool_index]
        parents = ([slot.anchor["sample_id"]] if slot.anchor is not None else []) + \
                  [case["sample_id"] for case in slot.in_context]
        records.append(sample(
            sample_id=make_sample_id(chosen["image_sha256"], [], "query", int(iteration), parents),
            parent_ids=parents, iteration=int(iteration), origin="query",
            image=chosen["image"], image_sha256=chosen["image_sha256"], conversations=[],
            category=slot.category,
            provenance={"operator": slot.operator, "model": clip_name, "source": pool_source},
            scores={"clip": similarity},
        ))
    summary = summarise(rates, weights, allocation, slots, picks, config)
    return records, summary


def summarise(rates, weights, allocation, slots: Sequence[Slot], picks, config: SampleConfig) -> dict[str, Any]:
    import numpy as np

    by_operator: dict[str, list[float]] = {OPERATOR_NEIGHBOUR: [], OPERATOR_RANDOM: []}
    counts = {OPERATOR_NEIGHBOUR: 0, OPERATOR_RANDOM: 0}
    for slot, (_, similarity) in zip(slots, picks):
        counts[slot.operator] += 1
        if similarity is not None:
            by_operator[slot.operator].append(similarity)
    return {
        "strategy": config.strategy, "budget": int(config.budget), "smoothing": float(config.smoothing),
        "top_k": int(config.top_k), "random_ratio": float(config.random_ratio),
        "error_rates": {category: entry["rate"] for category, entry in rates.items()},
        "predictions": {category: {"n": entry["n"], "errors": entry["errors"]} for category, entry in rates.items()},
        "weights": weights, "allocation": allocation,
        "queries": len(slots), "neighbour": counts[OPERATOR_NEIGHBOUR], "random": counts[OPERATOR_RANDOM],
        "without_badcase": sum(1 for slot in slots if slot.anchor is None),
        "clip_similarity": {operator: (float(np.mean(values)) if values else None)
                            for operator, values in by_operator.items()},
    }


# ---------------------------------------------------------------- do neighbours look like the anchor?

def objects_by_sha(instances: Mapping[str, Any], source: str = "instances"
                   ) -> dict[str, list[tuple[str | None, str]]]:
    """COCO instances -> {image key: [(colour, shape name), ...]} (colour None without attributes):
    what `attribute_agreement` compares. Keys and errors are `sources.coco_objects`'."""
    from mmloop.sources import coco_objects

    return {key: [(obj.colour, obj.shape) for obj in objects]
            for key, objects in coco_objects(instances, source=source).items()}


def attribute_agreement(records: Sequence[Mapping[str, Any]], anchors: Mapping[str, Mapping[str, Any]],
                        objects: Mapping[str, Sequence[tuple[str | None, str]]]) -> dict[str, Any]:
    """Per operator: how often the pick holds an object with the anchor image's (colour, shape),
    and the mean Jaccard overlap of the colour sets. `anchors` maps bad case id -> bad case."""
    import numpy as np

    found: dict[str, dict[str, list[float]]] = {}
    for record in records:
        if not record["parent_ids"]:
            continue
        anchor = anchors.get(record["parent_ids"][0])
        anchor_objects = objects.get(anchor.get("image_sha256")) if anchor else None
        pick_objects = objects.get(record["image_sha256"])
        if not anchor_objects or pick_objects is None:
            continue
        entry = found.setdefault(record["provenance"]["operator"], {"shares_object": [], "colour_jaccard": []})
        entry["shares_object"].append(float(bool(set(anchor_objects) & set(pick_objects))))
        anchor_colours = {colour for colour, _ in anchor_objects}
        pick_colours = {colour for colour, _ in pick_objects}
        union = anchor_colours | pick_colours
        entry["colour_jaccard"].append(len(anchor_colours & pick_colours) / len(union) if union else 0.0)
    return {operator: {"n": len(values["shares_object"]),
                       "shares_object": float(np.mean(values["shares_object"])),
                       "colour_jaccard": float(np.mean(values["colour_jaccard"]))}
            for operator, values in sorted(found.items())}


# ---------------------------------------------------------------- bad case images

def badcase_images(badcases: Sequence[Mapping[str, Any]], *, manifest: str = "data/bench/bench.json",
                   source: str = "badcases") -> dict[str, Any]:
    """{bad case id: image} as a path relative to the data root or, for a bad case whose `image`
    is null (a benchmark image that is not in the store), a PIL image from the loop's benchmark
    (the file the bench stage's `manifest` names, in any format, loaded by
    `eval.manifest.loop_benchmark`), matched by `image_sha256`. The benchmark is loaded only
    when some bad case needs it."""
    import io

    from PIL import Image

    images: dict[str, Any] = {}
    missing: list[Mapping[str, Any]] = []
    for case in badcases:
        if case.get("image"):
            images[case["sample_id"]] = case["image"]
        elif not case.get("image_sha256"):
            raise ValueError(f"{source}: bad case {case['sample_id']} has neither 'image' nor 'image_sha256'")
        else:
            missing.append(case)
    if not missing:
        return images
    from mmloop.eval.manifest import loop_benchmark

    items, _ = loop_benchmark(manifest)
    by_sha: dict[str, bytes] = {}
    for item in items:
        by_sha.setdefault(item["image_sha256"], item["image"])
    for case in missing:
        data = by_sha.get(case["image_sha256"])
        if data is None:
            raise ValueError(f"{source}: bad case {case['sample_id']}: no image of the loop's benchmark (named in "
                             f"{manifest}) has image_sha256 {case['image_sha256']}")
        with Image.open(io.BytesIO(data)) as handle:
            images[case["sample_id"]] = handle.convert("RGB")
    return images
