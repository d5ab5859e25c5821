import base64
import io

import numpy as np
import pytest

from mmloop.config import SampleConfig
from mmloop.loop import sampling
from mmloop.schema import sample

CATEGORIES = ("colour", "count", "spatial")


def _predictions(errors_per_category, n=100):
    rows = []
    for category, errors in errors_per_category.items():
        rows += [{"item": f"{category}-{i}", "category": category, "correct": i >= errors} for i in range(n)]
    return rows


def _badcases(counts, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    cases, vectors = [], {}
    for category, count in counts.items():
        for i in range(count):
            case_id = f"badcase-0-shapes-{category}-{i}"
            cases.append(sample(sample_id=case_id, iteration=0, origin="badcase", category=category,
                                image=f"images/bench/{category}{i}.png", image_sha256=f"b{category}{i}"))
            vector = rng.normal(size=dim)
            vectors[case_id] = vector / np.linalg.norm(vector)
    return cases, vectors


def _pool(size, dim=8, seed=1):
    embeddings = np.random.default_rng(seed).normal(size=(size, dim))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    pool = [{"image": f"images/pool/{i}.png", "image_sha256": f"p{i:05d}"} for i in range(size)]
    return pool, embeddings.astype(np.float32)


def _run(config, *, errors=None, badcounts=None, pool_size=400, seed=7):
    errors = errors or {"colour": 10, "count": 50, "spatial": 70}
    cases, vectors = _badcases(badcounts or {category: 5 for category in errors})
    pool, embeddings = _pool(pool_size)
    return sampling.select_queries(_predictions(errors), cases, pool, embeddings, lambda c: vectors[c["sample_id"]],
                                   config=config, seed=seed, iteration=1), cases, embeddings, vectors


def test_abs_allocation_follows_error_rates_and_sums_to_budget():
    (records, summary), *_ = _run(SampleConfig(budget=100))
    allocation = summary["allocation"]
    assert sum(allocation.values()) == 100 == len(records)
    assert allocation["colour"] < allocation["count"] < allocation["spatial"]
    # (10+1)/102 : (50+1)/102 : (70+1)/102 of 100 -> 8.3, 38.6, 53.8 -> largest remainder
    assert allocation == {"colour": 8, "count": 38, "spatial": 54}
    assert {category: sum(r["category"] == category for r in records) for category in CATEGORIES} == allocation


def test_uniform_splits_equally():
    (records, summary), *_ = _run(SampleConfig(budget=100, strategy="uniform"))
    assert summary["allocation"] == {"colour": 34, "count": 33, "spatial": 33}


def test_allocate_is_deterministic_largest_remainder():
    assert sampling.allocate({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert sampling.allocate({"a": 0.5, "b": 0.3, "c": 0.2}, 7) == {"a": 4, "b": 2, "c": 1}
    assert sum(sampling.allocate({"a": 0.123, "b": 0.456, "c": 0.421}, 997).values()) == 997


def test_smoothing_never_gives_zero_or_one():
    rates = sampling.error_rates(_predictions({"colour": 0, "count": 100}, n=100), smoothing=1.0)
    assert 0 < rates["colour"]["rate"] < rates["count"]["rate"] < 1
    weights = sampling.category_weights(rates)
    assert weights["colour"] > 0 and sampling.allocate(weights, 200)["colour"] >= 1
    with pytest.raises(ValueError, match="smoothing"):
        SampleConfig(smoothing=0)


def test_no_pool_image_is_reused_and_neighbours_are_nearer():
    (records, summary), cases, embeddings, vectors = _run(SampleConfig(budget=300, top_k=4))
    shas = [r["image_sha256"] for r in records]
    assert len(set(shas)) == len(shas) == 300
    assert len({r["sample_id"] for r in records}) == 300
    sims = summary["clip_similarity"]
    assert sims["neighbour"] > sims["random"] + 0.2


def test_budget_larger_than_pool_is_an_error():
    with pytest.raises(ValueError, match="exceeds the unlabeled pool"):
        _run(SampleConfig(budget=50), pool_size=40)


def test_random_ratio_is_respected():
    (records, summary), *_ = _run(SampleConfig(budget=200, random_ratio=0.25))
    operators = [r["provenance"]["operator"] for r in records]
    assert operators.count("random") == summary["random"] == 50
    assert operators.count("neighbour") == 150
    (records, _), *_ = _run(SampleConfig(budget=50, random_ratio=0.0))
    assert {r["provenance"]["operator"] for r in records} == {"neighbour"}


def test_same_seed_same_queries_and_other_seed_differs():
    config = SampleConfig(budget=120)
    (first, _), *_ = _run(config, seed=3)
    (second, _), *_ = _run(config, seed=3)
    (third, _), *_ = _run(config, seed=4)
    assert first == second
    assert [r["sample_id"] for r in first] != [r["sample_id"] for r in third]


def test_lineage_fields_and_in_context_cases():
    (records, _), cases, embeddings, vectors = _run(SampleConfig(budget=60, in_context=2))
    by_id = {case["sample_id"]: case for case in cases}
    for record in records:
        assert record["origin"] == "query" and record["iteration"] == 1
        anchor, *in_context = record["parent_ids"]
        assert by_id[anchor]["category"] == record["category"]
        assert len(in_context) == 2 and anchor not in in_context
        assert all(by_id[i]["category"] == record["category"] for i in in_context)
        pool_index = int(record["image"].split("/")[-1].split(".")[0])
        assert record["scores"]["clip"] == pytest.approx(float(embeddings[pool_index] @ vectors[anchor]), abs=1e-5)
    # Anchors cycle through the category's bad cases before repeating.
    colour_anchors = [r["parent_ids"][0] for r in records if r["category"] == "colour"]
    assert len(set(colour_anchors[:5])) == min(5, len(colour_anchors))


def test_category_without_badcases_gets_random_images():
    (records, summary), *_ = _run(SampleConfig(budget=90),
                                  badcounts={"colour": 0, "count": 3, "spatial": 1})
    colour = [r for r in records if r["category"] == "colour"]
    assert colour and len(colour) == summary["allocation"]["colour"]
    assert all(r["parent_ids"] == [] and r["provenance"]["operator"] == "random" for r in colour)
    assert all(r["scores"]["clip"] is None for r in colour)
    spatial = [r for r in records if r["category"] == "spatial"]
    # The only bad case of a category is its own in-context example.
    assert all(r["parent_ids"] == [r["parent_ids"][0]] * 2 for r in spatial)


def test_attribute_agreement_counts_shared_objects():
    records = [sample(sample_id="q1", parent_ids=["b"], iteration=1, origin="query", image_sha256="p1",
                      provenance={"operator": "neighbour"}),
               sample(sample_id="q2", parent_ids=["b"], iteration=1, origin="query", image_sha256="p2",
                      provenance={"operator": "random"})]
    objects = {"a": [("red", "circle")], "p1": [("red", "circle"), ("blue", "square")], "p2": [("green", "circle")]}
    result = sampling.attribute_agreement(records, {"b": {"image_sha256": "a"}}, objects)
    assert result["neighbour"] == {"n": 1, "shares_object": 1.0, "colour_jaccard": 0.5}
    assert result["random"]["shares_object"] == 0.0


def test_objects_by_sha_reads_colour_and_shape_through_the_coco_reader():
    instances = {"images": [{"id": 1, "file_name": "a.png", "sha256": "p1"},
                            {"id": 2, "file_name": "b.png", "sha256": "p2"}],
                 "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 8, 8],
                                  "attributes": {"colour": "red"}},
                                 {"id": 2, "image_id": 1, "category_id": 1, "bbox": [8, 8, 8, 8]}]}
    assert sampling.objects_by_sha(instances) == {"p1": [("red", "square"), (None, "circle")], "p2": []}
    instances["annotations"][1]["category_id"] = 3
    with pytest.raises(ValueError, match=r"pool\.json: annotations\[1\] \(id 2\): field 'category_id' 3 is not the id of a "):
        sampling.objects_by_sha(instances, source="pool.json")


def _png(colour):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_badcase_image_from_the_loops_benchmark_by_sha(tmp_path):
    """A bad case whose image is not in the store gets it from the benchmark the manifest names
    (here an MMBench TSV with embedded images), matched by image_sha256."""
    from mmloop.eval.benchmarks.mmbench import write_mmbench
    from mmloop.eval.manifest import write_manifest
    from mmloop.io import sha256_bytes
    from mmloop.world.benchmark import mmbench_row

    red, green = _png((255, 0, 0)), _png((0, 255, 0))
    rows = [mmbench_row(index, "What colour is it?", ["red", "green"], answer, "colour",
                        base64.b64encode(data).decode())
            for index, (answer, data) in enumerate([("red", red), ("green", green)])]
    tsv = tmp_path / "user" / "bench.tsv"
    write_mmbench(rows, tsv)
    manifest = tmp_path / "bench.json"
    write_manifest(manifest, rows, format="mmbench", file=tsv)
    cases = [{"sample_id": "badcase-0-x-0", "image": None, "image_sha256": sha256_bytes(green)},
             {"sample_id": "badcase-0-x-1", "image": "images/ab/c.png", "image_sha256": "c"}]
    images = sampling.badcase_images(cases, manifest=str(manifest))
    assert images["badcase-0-x-0"].getpixel((0, 0)) == (0, 255, 0)
    assert images["badcase-0-x-1"] == "images/ab/c.png"
    with pytest.raises(ValueError, match="badcase-0-x-2: no image of the loop's benchmark .*image_sha256 nope"):
        sampling.badcase_images([{"sample_id": "badcase-0-x-2", "image": None, "image_sha256": "nope"}],
                                manifest=str(manifest))
    # Every image in the store: the benchmark is not needed, not even its manifest.
    assert sampling.badcase_images(cases[1:], manifest=str(tmp_path / "absent.json")) == {
        "badcase-0-x-1": "images/ab/c.png"}


def test_badcase_image_from_a_pope_benchmark(tmp_path):
    """Any format: the image file of a POPE question."""
    import json

    from mmloop.eval.manifest import load_source, write_manifest
    from mmloop.io import sha256_bytes

    blue = _png((0, 0, 255))
    (tmp_path / "b.png").write_bytes(blue)
    (tmp_path / "pope_random.jsonl").write_text(
        json.dumps({"question_id": 1, "image": "b.png", "text": "Is there a cat?", "label": "no"}) + "\n")
    items, kind = load_source(tmp_path / "pope_random.jsonl")
    write_manifest(tmp_path / "bench.json", items, format=kind, file=tmp_path / "pope_random.jsonl")
    images = sampling.badcase_images([{"sample_id": "badcase-1-x", "image": None, "image_sha256": sha256_bytes(blue)}],
                                     manifest=str(tmp_path / "bench.json"))
    assert images["badcase-1-x"].getpixel((3, 3)) == (0, 0, 255)
