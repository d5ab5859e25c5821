"""End to end on real photos: the whole loop (`dvc repro`, two iterations) on scikit-image's sample
photos, with the user's data the way params take it.

- curate.sources: COCO instances (hand-written boxes, real category names, an `iscrowd` region)
  and COCO captions (several per image), a LLaVA file (two records of one photo) and a ShareGPT
  file, over photos in the repository's own `photos/` folder (one grayscale PNG among them);
- pool: COCO instances over other photos (annotated: a mirrored copy, a second name for a seed
  photo's bytes, an RGBA PNG, a grayscale JPEG, and an image without annotations);
- bench.source: an MMBench TSV (base64 images) over yet other photos, answered with letters;
- base.model: a tiny random-weight Qwen2.5-VL (tests/tiny_vlms.py) instead of the trained LLaVA;
- generate.backend: openai, against the local OpenAI-compatible test server (with faults).

One module fixture runs the loop once; the tests read what it left.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from checkout import copy_checkout
from test_pipeline import _merge, _run

skimage_data = pytest.importorskip(
    "skimage.data", reason="scikit-image (its sample photos) is not installed: pip install scikit-image")

pytestmark = pytest.mark.slow

ARCHITECTURE = "qwen2_5_vl"  # fast on the CPU; the processor resizes any photo to a few image tokens
PHOTOS = "photos"
REAL = "real"  # the annotation and benchmark files, as a user would keep them next to the photos


# ---------------------------------------------------------------- the photos


def _rgb(array):
    from PIL import Image

    return Image.fromarray(array)


def _photos() -> dict[str, tuple[object, str]]:
    """{file name under photos/: (PIL image, PIL format to save it in)}; "copy:<skimage file>" keeps
    the shipped file's own bytes (a camera JPEG as the user has it), "same:<name>" copies an earlier
    photo's file."""
    from PIL import Image, ImageOps

    astronaut, coffee, chelsea = _rgb(skimage_data.astronaut()), _rgb(skimage_data.coffee()), _rgb(skimage_data.chelsea())
    left, right, _ = skimage_data.stereo_motorcycle()
    rocket = _rgb(skimage_data.rocket())
    # A real photo with an alpha channel: the coffee cup, its background faded out towards the edges.
    fade = Image.radial_gradient("L").resize(coffee.size).point(lambda value: 255 - value // 2)
    coffee_rgba = coffee.convert("RGBA")
    coffee_rgba.putalpha(fade)
    return {
        # the seed (curate.sources)
        "astronaut.png": (astronaut, "PNG"),
        "coffee.jpg": (coffee, "JPEG"),
        "chelsea.jpg": (chelsea, "JPEG"),
        "rocket.jpg": (None, "copy:rocket.jpg"),
        "camera.png": (_rgb(skimage_data.camera()), "PNG"),  # grayscale (mode L): the store converts it
        "retina.jpg": (None, "copy:retina.jpg"),  # named by the LLaVA source
        "clock.png": (_rgb(skimage_data.clock()), "PNG"),  # grayscale, named by the ShareGPT source
        # the pool
        "pool/motorcycle_left.jpg": (_rgb(left), "JPEG"),
        "pool/motorcycle_right.jpg": (_rgb(right), "JPEG"),
        "pool/kitty.jpg": (None, "same:chelsea.jpg"),  # the seed's cat again, under another name
        "pool/astronaut_mirrored.jpg": (ImageOps.mirror(astronaut), "JPEG"),
        "pool/coffee_faded.png": (coffee_rgba, "PNG"),  # RGBA: composited on white by the store
        "pool/rocket_gray.jpg": (rocket.convert("L"), "JPEG"),  # a grayscale JPEG
        "pool/logo.png": (_rgb(skimage_data.logo()), "PNG"),  # RGBA, and no annotations at all
    }


def _write_photos(folder: Path) -> None:
    import skimage

    shipped = Path(skimage.__file__).parent / "data"
    for name, (image, how) in _photos().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if how.startswith("copy:"):
            shutil.copyfile(shipped / how.split(":", 1)[1], path)
        elif how.startswith("same:"):
            shutil.copyfile(folder / how.split(":", 1)[1], path)
        else:
            image.save(path, format=how, **({"quality": 90} if how == "JPEG" else {}))


# ---------------------------------------------------------------- COCO instances and captions

# COCO ids where COCO has the category; the rest are the user's own.
CATEGORIES = {"person": 1, "motorcycle": 4, "bench": 15, "cat": 17, "cup": 47, "spoon": 50,
              "rocket": 91, "flag": 92, "tower": 93, "light": 94, "tripod": 95}

# [x, y, width, height] in the photo's pixels; (name, box, iscrowd).
SEED_BOXES = {
    "astronaut.png": [("person", [24, 16, 344, 480], 0), ("rocket", [352, 0, 112, 288], 0),
                      ("flag", [0, 0, 90, 512], 0)],
    "coffee.jpg": [("cup", [169, 19, 244, 290], 0), ("spoon", [319, 66, 103, 262], 0)],
    "chelsea.jpg": [("cat", [20, 0, 420, 300], 0)],
    "rocket.jpg": [("rocket", [300, 130, 40, 290], 0), ("tower", [0, 0, 90, 427], 0),
                   ("tower", [560, 0, 80, 427], 0), ("light", [60, 340, 400, 85], 1)],  # the lights: a crowd
    "camera.png": [("person", [0, 64, 320, 448], 0), ("tripod", [224, 136, 192, 376], 0)],
}
CAPTIONS = {
    "astronaut.png": ["An astronaut in an orange suit smiles in front of a flag.",
                      "A woman in a space suit holds her helmet next to a model of the space shuttle.",
                      "Portrait of a smiling astronaut with the American flag behind her."],
    "coffee.jpg": ["A cup of espresso on a red saucer with a spoon.",
                   "A red coffee cup sits on a wooden table.",
                   "Top view of a coffee cup and its saucer."],
    "chelsea.jpg": ["A close-up of a tabby cat with green eyes.",
                    "A cat looks into the camera.",
                    "The face of a striped cat."],
    "rocket.jpg": ["A rocket stands on the launch pad at dusk between two towers.",
                   "A launch pad lit up at night with a rocket ready to fly.",
                   "Floodlights shine around a rocket before launch."],
    "camera.png": ["A black and white photo of a man with a camera on a tripod.",
                   "A cameraman films on a lawn, buildings in the distance.",
                   "A man in a coat looks through a camera on a tripod."],
}
POOL_BOXES = {
    "pool/motorcycle_left.jpg": [("motorcycle", [104, 69, 579, 394], 0), ("bench", [35, 104, 243, 197], 0)],
    "pool/motorcycle_right.jpg": [("motorcycle", [60, 69, 579, 394], 0)],
    "pool/kitty.jpg": [("cat", [20, 0, 420, 300], 0)],
    "pool/astronaut_mirrored.jpg": [("person", [144, 16, 344, 480], 0), ("rocket", [48, 0, 112, 288], 0),
                                    ("flag", [422, 0, 90, 512], 0)],
    "pool/coffee_faded.png": [("cup", [169, 19, 244, 290], 0), ("spoon", [319, 66, 103, 262], 0)],
    "pool/rocket_gray.jpg": [("rocket", [300, 130, 40, 290], 0), ("tower", [0, 0, 90, 427], 0),
                             ("tower", [560, 0, 80, 427], 0)],
    "pool/logo.png": [],
}


def _coco(boxes: dict[str, list], folder: Path, first_id: int) -> dict:
    from PIL import Image

    images, annotations = [], []
    for number, (name, objects) in enumerate(boxes.items(), start=first_id):
        with Image.open(folder / name) as image:
            width, height = image.size
        images.append({"id": number, "file_name": name, "width": width, "height": height})
        for category, bbox, crowd in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": CATEGORIES[category],
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd})
    categories = [{"id": number, "name": name, "supercategory": "thing"} for name, number in CATEGORIES.items()]
    return {"info": {"description": "mmloop real-photo test"}, "images": images, "annotations": annotations,
            "categories": categories}


def _captions(instances: dict) -> dict:
    ids = {image["file_name"]: image["id"] for image in instances["images"]}
    rows = [{"id": 1000 + position, "image_id": ids[name], "caption": caption}
            for position, (name, caption) in enumerate((name, caption) for name, captions in CAPTIONS.items()
                                                       for caption in captions)]
    return {"images": instances["images"], "annotations": rows}


# ---------------------------------------------------------------- LLaVA and ShareGPT

LLAVA = [  # two records of one image: merged into one conversation
    {"id": "retina-1", "image": "retina.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat kind of photo is this?"},
        {"from": "gpt", "value": "A photo of the back of an eye: the retina, with its blood vessels."}]},
    {"id": "retina-2", "image": "retina.jpg", "conversations": [
        {"from": "human", "value": "What colour is the background?\n<image>"},
        {"from": "gpt", "value": "Black, around the orange disc of the retina."}]},
]
SHAREGPT = [
    {"id": "clock-1", "images": ["clock.png"], "messages": [
        {"role": "system", "content": "You describe photographs."},
        {"role": "user", "content": "<image>What does the picture show?"},
        {"role": "assistant", "content": "A wall clock, photographed in black and white."},
        {"role": "user", "content": "Is it a digital clock?"},
        {"role": "assistant", "content": "No, it has hands."}]},
]


# ---------------------------------------------------------------- the MMBench benchmark

def _bench_photos() -> dict[str, object]:
    return {"hubble": _rgb(skimage_data.hubble_deep_field()), "cells": _rgb(skimage_data.immunohistochemistry()),
            "coins": _rgb(skimage_data.coins()), "moon": _rgb(skimage_data.moon()),
            "colorwheel": _rgb(skimage_data.colorwheel()), "page": _rgb(skimage_data.page())}


# (photo, category, question, hint, options A-D ("" = none), answer letter)
BENCH = [
    ("hubble", "image_topic", "What does this image show?", "", ["galaxies in deep space", "a coffee cup",
                                                                  "a page of text", "a cat"], "A"),
    ("cells", "image_topic", "What does this image show?", "A photo taken through a microscope.",
     ["a moon", "stained tissue cells", "a motorcycle", "a rocket"], "B"),
    ("coins", "image_topic", "What is in the picture?", "", ["a flag", "a cup", "coins", "a bench"], "C"),
    ("moon", "image_topic", "What is in the picture?", "", ["a person", "a cat", "a spoon", "the moon"], "D"),
    ("colorwheel", "image_topic", "What kind of image is this?", "", ["a colour wheel", "a landscape",
                                                                       "a portrait", ""], "A"),
    ("hubble", "attribute_recognition", "What is the background colour of the image?", "",
     ["white", "black", "green", "red"], "B"),
    ("coins", "attribute_recognition", "Is this image in colour or in grayscale?", "",
     ["in colour", "in grayscale", "", ""], "B"),
    ("moon", "attribute_recognition", "What texture covers the surface?", "",
     ["craters", "fur", "bricks", "grass"], "A"),
    ("page", "attribute_recognition", "Is the text printed in black or in red?", "",
     ["in red", "in blue", "in black", ""], "C"),
    ("colorwheel", "object_localization", "Where is the centre of the colour wheel?", "",
     ["top left corner", "bottom edge", "in the middle of the image", "right edge"], "C"),
    ("page", "object_localization", "Where is the text in the image?", "It is a scanned page.",
     ["nowhere", "across the whole image", "only in a corner", ""], "B"),
    ("cells", "object_localization", "Where are the cells in the image?", "",
     ["all over the image", "only at the top", "only at the bottom", "nowhere"], "A"),
]


def _write_bench(path: Path) -> None:
    encoded = {}
    for name, image in _bench_photos().items():
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if image.mode == "RGB" else "PNG")
        encoded[name] = base64.b64encode(buffer.getvalue()).decode("ascii")
    l2 = {"image_topic": "coarse_perception", "attribute_recognition": "fine-grained_perception (instance-level)",
          "object_localization": "fine-grained_perception (instance-level)"}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                         "image"])
        for index, (photo, category, question, hint, options, answer) in enumerate(BENCH):
            writer.writerow([index, question, hint, *options, answer, category, l2[category], encoded[photo]])


# ---------------------------------------------------------------- params


def _params(model: Path, server_url: str) -> dict:
    return {
        "answer_format": "letter",
        # The embedded world still feeds the tiny CLIP; as small as it goes.
        "world": {"splits": {"seed": 200, "pool": 20, "bench": 40}},
        "curate": {
            "sources": [{"kind": "coco", "instances": f"{REAL}/instances_seed.json",
                         "captions": f"{REAL}/captions_seed.json", "image_folder": PHOTOS},
                        {"kind": "llava", "path": f"{REAL}/llava.json", "image_folder": PHOTOS},
                        {"kind": "sharegpt", "path": f"{REAL}/sharegpt.json", "image_folder": PHOTOS}],
            "unusable": "error",
            "turns_per_image": 4,
            "caption_turns": 1,
            # Real COCO has no colour, shape or size attributes: existence, count and spatial apply.
            "family_weights": {"colour": 0.0, "shape": 0.0, "size": 0.0, "existence": 0.4, "count": 0.3,
                               "spatial": 0.3},
        },
        "pool": {"kind": "coco", "instances": f"{REAL}/instances_pool.json", "image_folder": PHOTOS},
        "bench": {"name": "real-photos", "source": f"{REAL}/mmbench.tsv", "format": "mmbench"},
        "clip": {"epochs": 1},
        "base": {"model": str(model)},
        "evaluate": {"batch_size": 16},
        "sample": {"budget": 6, "top_k": 4},
        "generate": {
            "backend": "openai",
            "format_mix": {"mcq": 0.6, "short": 0.2, "conversation": 0.2},
            "openai": {"model": "gpt-test", "base_url": server_url, "api_key_env": "MMLOOP_TEST_KEY",
                       "concurrency": 4, "timeout": 5.0, "backoff_base": 0.01, "backoff_max": 0.2,
                       "max_attempts": 10, "image_mode": "image", "image_max_side": 128,
                       "prompt": "prompts/generate.j2"},
        },
        "train": {"epochs": 1, "batch_size": 4, "logging_steps": 1},
    }


# ---------------------------------------------------------------- the run


def _ran(out: str) -> list[str]:
    """The stages `dvc repro` ran, in order (evaluate-base runs `stages/evaluate.py 0`: evaluate@0)."""
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]


def _stage_times(root: Path, ran: list[str]) -> dict[str, float]:
    """{stage: wall seconds of its process} in the order the stages ran (metrics/startup)."""
    walls = {}
    for path in (root / "metrics" / "startup").glob("*.json"):
        entry = json.loads(path.read_text())
        walls[entry["stage"]] = entry["wall_s"]
    return {name: walls.get("evaluate@0" if name == "evaluate-base" else name) for name in ran}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    import tiny_vlms
    from openai_server import FaultConfig, OpenAIServer

    root = copy_checkout(tmp_path_factory.mktemp("mmloop-real"))

    _write_photos(root / PHOTOS)
    (root / REAL).mkdir()
    seed = _coco(SEED_BOXES, root / PHOTOS, first_id=1)
    (root / REAL / "instances_seed.json").write_text(json.dumps(seed, indent=1))
    (root / REAL / "captions_seed.json").write_text(json.dumps(_captions(seed), indent=1))
    (root / REAL / "instances_pool.json").write_text(json.dumps(_coco(POOL_BOXES, root / PHOTOS, first_id=101),
                                                                indent=1))
    (root / REAL / "llava.json").write_text(json.dumps(LLAVA, indent=1))
    (root / REAL / "sharegpt.json").write_text(json.dumps(SHAREGPT, indent=1))
    _write_bench(root / REAL / "mmbench.tsv")
    model = tiny_vlms.build(ARCHITECTURE, tmp_path_factory.mktemp("tiny-model") / ARCHITECTURE)

    secret = f"sk-test-{uuid.uuid4().hex}"
    server = OpenAIServer(FaultConfig(fault_rate=0.15, fault_kinds=("429", "500", "garbage"), seed=5,
                                      expected_key=secret)).start()
    try:
        params = _merge(yaml.safe_load((root / "params.yaml").read_text()), _params(model, server.url))
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", CI="true")
        _run(["mmloop", "graph", "--write"], root, env)  # declare the files the params now name
        for args in (["git", "init", "-q"], ["git", "add", "-A"],
                     ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "real photos"]):
            _run(args, root, env)
        started = time.perf_counter()
        out = _run(["dvc", "repro"], root, dict(env, MMLOOP_TEST_KEY=secret))
        wall = time.perf_counter() - started
    finally:
        server.stop()
    times = _stage_times(root, _ran(out))
    print(f"\ndvc repro on real photos: {wall:.0f} s; stages (wall s): "
          + ", ".join(f"{stage} {seconds}" for stage, seconds in times.items()))
    return {"root": root, "env": env, "out": out, "server": server, "secret": secret, "wall": wall}


def _read(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _iterations(root: Path) -> list[str]:
    return list(yaml.safe_load((root / "params.yaml").read_text())["loop"]["iterations"])


def test_every_stage_ran_and_wrote_its_outputs(loop):
    root = loop["root"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    declared = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    iterations = _iterations(root)
    expected = {name for name, body in declared.items() if "foreach" not in body}
    expected |= {f"{name}@{key}" for name, body in declared.items() if "foreach" in body for key in iterations}
    assert set(lock) == expected
    for name, entry in lock.items():
        for out in entry.get("outs", []):
            assert (root / out["path"]).exists(), f"{name}: output {out['path']} missing"
    assert sorted(_ran(loop["out"])) == sorted(expected)
    assert loop["server"].counters.unauthorised == 0 and sum(loop["server"].counters.attempts.values()) > 0
    with open(root / "metrics" / "history.csv") as handle:
        assert [row["iteration"] for row in csv.DictReader(handle)] == ["0", *iterations]


def test_the_store_took_every_photo_once_and_normalised_the_odd_ones(loop):
    root = loop["root"]
    index = {row["original"]: row for row in _read(root / "data" / "store" / "index.parquet")}
    photos = {f"{PHOTOS}/{name}" for name in _photos()}
    assert photos <= set(index)
    assert index[f"{PHOTOS}/camera.png"]["converted"] == "L"
    assert index[f"{PHOTOS}/clock.png"]["converted"] == "L"
    assert index[f"{PHOTOS}/pool/rocket_gray.jpg"]["converted"] == "L"
    assert index[f"{PHOTOS}/pool/coffee_faded.png"]["converted"] == "RGBA"
    assert index[f"{PHOTOS}/pool/logo.png"]["converted"] == "RGBA"
    assert index[f"{PHOTOS}/coffee.jpg"]["converted"] is None  # 8-bit RGB JPEG: its own bytes
    # One stored file for the cat, whichever name it came under.
    assert index[f"{PHOTOS}/pool/kitty.jpg"]["sha256"] == index[f"{PHOTOS}/chelsea.jpg"]["sha256"]
    rocket = root / PHOTOS / "rocket.jpg"
    assert index[f"{PHOTOS}/rocket.jpg"]["sha256"] == hashlib.sha256(rocket.read_bytes()).hexdigest()
    from PIL import Image

    for row in index.values():
        stored = root / "data" / row["path"]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row["sha256"]
        with Image.open(stored) as image:
            assert image.mode == "RGB" and image.size == (row["width"], row["height"])


def test_samples_name_stored_images_whose_sha256_matches(loop):
    root = loop["root"]
    files = [root / "data" / "seed" / "samples.parquet"]
    for key in _iterations(root):
        files += [root / "data" / f"iter={key}" / name for name in ("queries.parquet", "generated.parquet",
                                                                     "kept.parquet", "replay_pool.parquet")]
    stored = {row["sha256"] for row in _read(root / "data" / "store" / "index.parquet")}
    checked: dict[str, str] = {}
    for path in files:
        rows = _read(path)
        assert rows, f"{path} is empty"
        for row in rows:
            assert row["image"].startswith("store/"), (path, row["sample_id"], row["image"])
            assert row["image_sha256"] in stored
            if row["image"] not in checked:
                checked[row["image"]] = hashlib.sha256((root / "data" / row["image"]).read_bytes()).hexdigest()
            assert checked[row["image"]] == row["image_sha256"], (path, row["sample_id"])
    # The seed covers every photo of the three sources, the queries only pool photos.
    index = _read(root / "data" / "store" / "index.parquet")
    seed_photos = {*SEED_BOXES, *(record["image"] for record in LLAVA), *(record["images"][0] for record in SHAREGPT)}
    seed_shas = {row["sha256"] for row in index if row["original"] in {f"{PHOTOS}/{name}" for name in seed_photos}}
    pool_shas = {row["sha256"] for row in index if row["original"] in {f"{PHOTOS}/{name}" for name in POOL_BOXES}}
    assert {row["image_sha256"] for row in _read(files[0])} == seed_shas
    for key in _iterations(root):
        queries = _read(root / "data" / f"iter={key}" / "queries.parquet")
        assert {row["image_sha256"] for row in queries} <= pool_shas


def test_the_bench_metrics_have_the_tsv_categories(loop):
    root = loop["root"]
    categories = sorted({category for _, category, *_ in BENCH})
    manifest = json.loads((root / "data" / "bench" / "bench.json").read_text())
    assert manifest["format"] == "mmbench" and manifest["file"] == f"{REAL}/mmbench.tsv"
    assert manifest["items"] == len(BENCH) and sorted(manifest["categories"]) == categories
    counts = {category: sum(1 for _, name, *_ in BENCH if name == category) for category in categories}
    for key in ["0", *_iterations(root)]:
        metrics = json.loads((root / "metrics" / "eval" / f"iter={key}.json").read_text())
        assert metrics["benchmark"] == "real-photos" and metrics["answer_format"] == "letter"
        assert sorted(metrics["categories"]) == categories and metrics["n_per_category"] == counts
        assert set(metrics["l2_categories"]) == {"coarse_perception", "fine-grained_perception (instance-level)"}
    with open(root / "metrics" / "history.csv") as handle:
        assert set(categories) <= set(next(csv.DictReader(handle)))
    # The bad cases are the TSV's items, on its own (base64) photos.
    header, *rows = (line.split("\t") for line in (root / REAL / "mmbench.tsv").read_text().splitlines())
    photos = {hashlib.sha256(base64.b64decode(row[header.index("image")])).hexdigest() for row in rows}
    badcases = _read(root / "data" / "iter=0" / "eval" / "badcases.parquet")
    assert badcases and {row["image_sha256"] for row in badcases} <= photos


def test_the_lora_rounds_changed_the_model(loop):
    root = loop["root"]
    last = _iterations(root)[-1]
    before, after = (_read(root / "data" / f"iter={key}" / "eval" / "predictions.parquet") for key in ("0", last))
    assert [row["item"] for row in before] == [row["item"] for row in after]
    assert any(a["option_scores"] != b["option_scores"] for a, b in zip(before, after))
    for key in _iterations(root):
        stats = json.loads((root / "metrics" / "train" / f"iter={key}.json").read_text())
        assert stats["steps"] > 0 and stats["kept"] > 0 and stats["first_loss"] != stats["final_loss"]


def test_lineage_of_a_kept_sample_ends_at_the_photo(loop):
    root, env = loop["root"], loop["env"]
    last = _iterations(root)[-1]
    kept = _read(root / "data" / f"iter={last}" / "kept.parquet")
    assert kept, f"iteration {last} kept nothing"
    index = _read(root / "data" / "store" / "index.parquet")
    sample = kept[0]
    out = _run(["mmloop", "lineage", sample["sample_id"]], root, env)
    print(f"\nmmloop lineage {sample['sample_id']}\n{out}")
    prev = yaml.safe_load((root / "params.yaml").read_text())["loop"]["iterations"][last]["prev"]
    assert f"- {sample['sample_id']}  [generated, iteration {last}" in out and "  kept" in out
    assert f"[query, iteration {last}" in out and f"[badcase, iteration {prev}" in out
    assert "made by: backend=openai, model=gpt-test" in out
    assert "source: mmbench.tsv#" in out  # the bad cases' photos are benchmark items, not stored files
    photos = sorted(row["original"] for row in index if row["sha256"] == sample["image_sha256"])
    assert photos and all(photo.startswith(f"{PHOTOS}/") for photo in photos)
    for photo in photos:
        assert f"from: {photo}" in out
    # trace() gives the query the same originals as the index: files in the user's photo folder.
    from mmloop import lineage

    chain = lineage.trace(sample["sample_id"], data_root=root / "data")
    query = next(node for node in chain if node["origin"] == "query")
    assert [entry["original"] for entry in query["originals"]] == photos
    assert all((root / entry["original"]).is_file() for entry in query["originals"])


def test_the_key_reached_no_file(loop):
    root, secret = loop["root"], loop["secret"]
    leaked = subprocess.run(["grep", "-rlF", "--exclude-dir=.git", secret, str(root)], capture_output=True, text=True)
    assert leaked.stdout == ""


def test_the_seed_reads_all_three_sources(loop):
    root = loop["root"]
    stats = json.loads((root / "metrics" / "curate.json").read_text())["sources"]
    assert {name: (entry["kind"], entry["records"], entry["samples"], entry["merged"]) for name, entry in stats.items()} \
        == {f"{REAL}/instances_seed.json": ("coco", len(SEED_BOXES), len(SEED_BOXES), 0),
            f"{REAL}/llava.json": ("llava", 2, 1, 1), f"{REAL}/sharegpt.json": ("sharegpt", 1, 1, 0)}
    seed = _read(root / "data" / "seed" / "samples.parquet")
    by_source = {json.loads(row["provenance"]["source"])["files"][0]: row for row in seed}
    # The two LLaVA records of the retina photo, one conversation in file order, <image> removed.
    assert [turn["content"] for turn in by_source[f"{REAL}/llava.json"]["conversations"]] == [
        "What kind of photo is this?", LLAVA[0]["conversations"][1]["value"],
        "What colour is the background?", LLAVA[1]["conversations"][1]["value"]]
    assert by_source[f"{REAL}/sharegpt.json"]["conversations"][0] == {"role": "system",
                                                                      "content": "You describe photographs."}


def test_editing_a_photo_makes_the_store_stale(loop):
    from PIL import Image

    root, env = loop["root"], loop["env"]
    assert json.loads(_run(["dvc", "status", "--json"], root, env)) == {}  # the run is complete and repeatable
    photo = root / PHOTOS / "pool" / "logo.png"
    original = photo.read_bytes()
    with Image.open(io.BytesIO(original)) as image:
        image.rotate(90).save(photo)
    try:
        stale = json.loads(_run(["dvc", "status", "--json"], root, env))
    finally:
        photo.write_bytes(original)
    assert "store" in stale and {f"sample@{key}" for key in _iterations(root)} <= set(stale)
