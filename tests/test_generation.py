"""Generation through the teacher interface, and the generate stage end to end (tests/openai_server.py)."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from mmloop import config, schema, sources
from mmloop.loop import elimination, generation
from mmloop.store import ImageStore
from mmloop.teachers import annotations
from mmloop.validation import validate
from openai_server import FaultConfig, OpenAIServer

REPO = Path(__file__).resolve().parents[1]

FAMILIES = ("colour", "shape", "size", "existence", "count", "spatial")
SHAPES = {1: "circle", 2: "square", 3: "triangle"}


def png(seed: int) -> bytes:
    """A 64x64 RGB PNG of its own colour."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (seed * 40 % 256, 80, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def world(tmp_path, images=6):
    """A small COCO instances file and stored images: objects on a 4x4 grid of 16-px cells."""
    coco = {"images": [], "annotations": [], "categories": [
        {"id": key, "name": name, "supercategory": "shape"} for key, name in SHAPES.items()]}
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    annotation_id = 0
    for image_id in range(images):
        payload = png(image_id)
        sha = hashlib.sha256(payload).hexdigest()
        file_name = f"images/{sha[:2]}/{sha}.png"
        (tmp_path / file_name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file_name).write_bytes(payload)
        coco["images"].append({"id": image_id, "file_name": file_name, "sha256": sha, "width": 64, "height": 64})
        for slot in range(1 + image_id % 4):
            row, col = (slot * 2 + image_id) % 4, (slot * 3 + image_id) % 4
            size = "large" if (slot + image_id) % 2 else "small"
            side = 12 if size == "large" else 6
            annotation_id += 1
            coco["annotations"].append({
                "id": annotation_id, "image_id": image_id, "category_id": 1 + (slot + image_id) % 3,
                "bbox": [col * 16 + (16 - side) / 2, row * 16 + (16 - side) / 2, side, side], "area": side * side,
                "iscrowd": 0, "attributes": {"colour": colours[(slot * 2 + image_id) % 6], "size": size,
                                             "row": row, "col": col}})
    path = tmp_path / "world" / "instances_pool.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))
    return path, coco


def queries(coco, per_image=None):
    rows = []
    for image in coco["images"]:
        for family in per_image or FAMILIES:
            rows.append(schema.sample(
                sample_id=f"que-{image['id']}-{family}", parent_ids=[f"badcase-0-shapes-{image['id']}"], iteration=1,
                origin="query", image=image["file_name"], image_sha256=image["sha256"], conversations=[],
                category=family, provenance={"operator": "neighbour"}, scores={"clip": 0.5}))
    return rows


def run(tmp_path, format_mix=None):
    path, coco = world(tmp_path)
    settings = config.GenerateConfig(format_mix=format_mix or {"mcq": 0.75, "short": 0.25})
    annotations = (sources.coco_objects(json.loads(path.read_text())), [category["name"] for category in coco["categories"]])
    return generation.generate(queries(coco), settings, annotations=annotations, answer_format="letter",
                               seed=config.stage_seed(3, "generate", 1),
                               iteration=1, data_root=tmp_path, badcases_path=tmp_path / "absent.parquet"), path


def test_generation_is_deterministic_valid_and_verifies(tmp_path):
    (rows, stats), path = run(tmp_path)
    (again, _), _ = run(tmp_path)
    assert rows == again
    assert rows, "no rows generated"
    outcomes = stats["outcomes"]
    assert stats["backend"] == "annotations" and stats["queries"] == 36 and sum(outcomes.values()) == 36
    assert outcomes["generated"] == stats["samples"] == len(rows) and outcomes["skipped"] > 0
    assert outcomes["parse_failed"] == outcomes["request_failed"] == 0
    assert sum(entry["queries"] for entry in stats["categories"].values()) == 36
    validate(rows, "samples", source="generated.parquet", iteration=1, data_root=tmp_path)
    objects = sources.coco_objects(json.loads(path.read_text()))
    for row in rows:
        assert row["origin"] == "generated" and row["provenance"]["backend"] == "annotations"
        assert row["provenance"]["prompt_id"] == f"annotations/{row['category']}"
        assert row["parent_ids"][0].startswith("que-")
        assert elimination.verify_answer(row, objects) is True, row["sample_id"]
    assert {row["format"] for row in rows} == {"mcq", "short"}


def test_formats_follow_format_mix(tmp_path):
    (rows, _), _ = run(tmp_path, {"short": 1.0})
    assert rows and all(row["format"] == "short" and row["options"] == [] for row in rows)
    assert all(len(row["conversations"][1]["content"].split()) > 1 for row in rows)  # a full sentence
    (rows, _), _ = run(tmp_path, {"mcq": 1.0})
    for row in rows:
        reply = row["conversations"][1]["content"]
        assert row["options"][ord(reply) - ord("A")] == row["answer"]
        assert row["conversations"][0]["content"].endswith(
            "Answer with the option's letter from the given choices directly.")


def test_unknown_backend_and_format_are_refused(tmp_path):
    with pytest.raises(ValueError, match="generate.backend"):
        config.parse({"generate": {"backend": "gpt"}})
    import random

    with pytest.raises(ValueError, match="format_mix"):
        annotations.draw_format({"essay": 1.0}, random.Random(0))


def test_mmbench_items_hold_the_mcq_rows(tmp_path):
    import base64

    (rows, _), _ = run(tmp_path)
    items = generation.mmbench_items(rows, data_root=tmp_path)
    mcq = [row for row in rows if row["format"] == "mcq"]
    assert len(items) == len(mcq)
    for item, row in zip(items, mcq):
        assert item[item["answer"]] == row["answer"]
        assert hashlib.sha256(base64.b64decode(item["image"])).hexdigest() == row["image_sha256"]


# ---------------------------------------------------------------- the stage, with the openai teacher

def stage_repo(root, server_url, **openai):
    """A repository for stages/generate.py: params, the world's annotations, queries of iteration 1
    and the bad cases of iteration 0 they came from."""
    data = root / "data"
    path, coco = world(data)
    store = ImageStore(data / "store")  # what the store stage does for the pool
    for image in coco["images"]:
        store.add(data / image["file_name"], image["file_name"])
    store.write_index()
    schema.write_samples(queries(coco), data / "iter=1" / "queries.parquet")
    badcases = [schema.sample(sample_id=f"badcase-0-shapes-{image['id']}", origin="badcase", iteration=0,
                              image=image["file_name"], image_sha256=image["sha256"], category="colour",
                              format="mcq", question="What colour is the circle?", options=["red", "blue"],
                              answer="red", conversations=[{"role": "user", "content": "What colour is the circle?"},
                                                           {"role": "assistant", "content": "B"}])
                for image in coco["images"]]
    schema.write_samples(badcases, data / "iter=0" / "eval" / "badcases.parquet")
    teacher = {"model": "gpt-test", "base_url": server_url, "api_key_env": "MMLOOP_TEST_KEY", "concurrency": 2,
               "timeout": 5.0, "backoff_base": 0.01, "backoff_max": 0.05, "max_attempts": 2, "image_mode": "caption",
               "prompt": str(REPO / "prompts" / "generate.j2"), "journal": str(root / ".mmloop" / "journal.sqlite"),
               **openai}
    params = {"seed": 0, "answer_format": "letter", "pool": {"instances": str(path.relative_to(root))},
              "generate": {"backend": "openai", "format_mix": {"mcq": 1.0}, "openai": teacher}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def run_stage(root, secret):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MMLOOP_TEST_KEY": secret}
    return subprocess.run([sys.executable, str(REPO / "stages" / "generate.py"), "1", "0"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_teacher_that_rejects_every_request_fails_the_stage_and_publishes_nothing(tmp_path):
    secret = f"sk-test-{uuid.uuid4().hex}"
    server = OpenAIServer(FaultConfig(expected_key="sk-the-right-one-000000")).start()
    try:
        stage_repo(tmp_path, server.url, max_consecutive_failures=5)
        done = run_stage(tmp_path, secret)
    finally:
        server.stop()
    assert done.returncode != 0
    assert "CircuitBreakerOpen" in done.stderr and "5 requests in a row" in done.stderr
    assert "status_401 x5" in done.stderr and f"{server.url}/chat/completions" in done.stderr
    assert "MMLOOP_TEST_KEY" in done.stderr and secret not in done.stdout + done.stderr
    assert 5 <= server.counters.unauthorised <= 5 + 2  # the breaker stopped the other 30 queries
    assert not (tmp_path / "data" / "iter=1" / "generated.parquet").exists()
    assert not (tmp_path / "data" / "iter=1" / "generated.tsv").exists()
    assert not (tmp_path / "metrics").exists()


def test_skips_and_parse_failures_are_counted_under_their_own_names(tmp_path):
    secret = f"sk-test-{uuid.uuid4().hex}"
    server = OpenAIServer(FaultConfig(skip_rate=0.3, broken_rate=0.3, seed=1)).start()
    try:
        stage_repo(tmp_path, server.url)
        done = run_stage(tmp_path, secret)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "metrics" / "generate" / "iter=1.json").read_text())
    outcomes = stats["outcomes"]
    assert outcomes["skipped"] > 0 and outcomes["parse_failed"] > 0 and outcomes["generated"] > 0
    assert outcomes["request_failed"] == outcomes["duplicate"] == 0
    assert outcomes["generated"] + outcomes["skipped"] + outcomes["parse_failed"] == stats["queries"] == 36
    rows = schema.read_samples(tmp_path / "data" / "iter=1" / "generated.parquet")
    reasons = [row["reject_reason"] for row in rows]
    assert reasons.count("skipped") == outcomes["skipped"] and reasons.count("parse_failed") == outcomes["parse_failed"]
    assert stats["samples"] == reasons.count(None) == outcomes["generated"]
    assert stats["rates"]["skipped"] == pytest.approx(outcomes["skipped"] / 36)
    assert (f"{stats['samples']} samples from 36 queries ({outcomes['generated']} generated, "
            f"{outcomes['skipped']} skipped by the teacher, {outcomes['parse_failed']} parse failures, "
            f"0 request failures, 0 duplicates)") in done.stdout


def test_param_deps_name_the_files_each_backend_reads():
    spec = importlib.util.spec_from_file_location("generate_stage", REPO / "stages" / "generate.py")
    stage_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage_module)
    offline = config.parse({"pool": {"instances": "data/coco/a.json", "image_folder": "data/photos"}})
    assert stage_module.param_deps(offline) == ["data/coco/a.json", "data/photos"]
    teacher = config.parse({"generate": {"backend": "openai", "openai": {"model": "m", "prompt": "prompts/v2.j2"}}})
    assert stage_module.param_deps(teacher) == ["data/world/instances_pool.json", "prompts/v2.j2",
                                                "data/iter=${item.prev}/eval"]


def test_a_benchmark_category_no_program_asks_is_skipped_and_named(tmp_path):
    path, coco = world(tmp_path)
    rows = queries(coco, per_image=("colour", "attribute_recognition"))
    settings = config.GenerateConfig(format_mix={"mcq": 1.0})
    annotations = (sources.coco_objects(json.loads(path.read_text())), [category["name"] for category in coco["categories"]])
    generated, stats = generation.generate(rows, settings, annotations=annotations, answer_format="letter", seed=0,
                                           iteration=1, data_root=tmp_path, badcases_path=tmp_path / "absent.parquet")
    assert stats["unaskable"] == ["attribute_recognition"]
    assert stats["categories"]["attribute_recognition"]["skipped"] == len(coco["images"])
    assert generated and {row["category"] for row in generated} == {"colour"}


def test_the_annotations_teacher_needs_an_annotated_pool(tmp_path):
    settings = config.GenerateConfig()
    with pytest.raises(ValueError, match="pool has none"):
        generation.make_teacher(settings, annotations=None, answer_format="letter", seed=0, iteration=1,
                                data_root=tmp_path, badcases_path=tmp_path / "absent.parquet")
