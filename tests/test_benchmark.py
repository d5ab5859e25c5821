"""The bench stage's MMBench TSV: items from held-out scenes, the round trip, and its errors."""

import base64
import runpy
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mmloop import config
from mmloop.eval.benchmarks import mmbench
from mmloop.io import read_json, sha256_bytes
from mmloop.questions import FAMILIES, L2_CATEGORY
from mmloop.world import benchmark
from mmloop.world import scenes as world

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-world")
    world.build(world.WorldConfig(splits={"bench": 60}), 3, root / "images", root / "world")
    return root, read_json(root / "world" / "instances_bench.json")


def test_items_are_balanced_spread_and_match_their_images(bench_world):
    root, instances = bench_world
    items = benchmark.make_items(instances, 12, seed=5, data_root=root)
    assert benchmark.family_counts(items) == {family: 12 for family in FAMILIES}
    assert [item["index"] for item in items] == list(range(len(items)))
    files = {image["sha256"]: image["file_name"] for image in instances["images"]}
    for family in FAMILIES:
        of_family = [item for item in items if item["category"] == family]
        # 60 images, 12 questions: every question of a family is on a different image.
        assert len({item["image"] for item in of_family}) == 12
    for item in items:
        data = base64.b64decode(item["image"])
        assert (root / files[sha256_bytes(data)]).read_bytes() == data
        options = [item[key] for key in "ABCD" if item.get(key)]
        assert item["answer"] in "ABCD"[:len(options)]
        assert item["l2-category"] == L2_CATEGORY[item["category"]]
        assert item["hint"] == ""
    # 2-option families leave C and D out.
    assert all("C" not in item for item in items if item["category"] in ("size", "existence"))


def test_items_are_deterministic_and_seeded(bench_world):
    root, instances = bench_world
    first = benchmark.make_items(instances, 10, seed=1, data_root=root)
    assert first == benchmark.make_items(instances, 10, seed=1, data_root=root)
    other = benchmark.make_items(instances, 10, seed=2, data_root=root)
    assert [item["question"] for item in first] != [item["question"] for item in other]


def test_mmbench_row_letters_the_answer_and_follows_the_category():
    row = benchmark.mmbench_row(3, "How many circles are there?", ["2", "0", "1"], "1", "count", "aW1n",
                                sample_id="gen-3")
    assert row == {"index": 3, "question": "How many circles are there?", "hint": None, "answer": "C",
                   "category": "count", "l2-category": "instance", "image": "aW1n", "sample_id": "gen-3",
                   "A": "2", "B": "0", "C": "1"}
    # A category that is no question family (a real benchmark's) is its own l2-category.
    assert benchmark.mmbench_row(0, "q", ["x", "y"], "x", "ocr", "aW1n", hint="")["l2-category"] == "ocr"
    with pytest.raises(ValueError):
        benchmark.mmbench_row(0, "q", ["x", "y"], "z", "ocr", "aW1n")


def test_too_few_images_is_a_clear_error(bench_world):
    root, instances = bench_world
    with pytest.raises(ValueError, match=r"bench\.json: only \d+ distinct 'size' questions .* 60 images"):
        benchmark.make_items(instances, 5000, seed=0, data_root=root, families=("size",), source="bench.json")


def test_round_trip(bench_world, tmp_path):
    root, instances = bench_world
    items = benchmark.make_items(instances, 4, seed=0, data_root=root)
    items[0]["hint"] = "Look at the top row."
    for position, item in enumerate(items):
        item["sample_id"] = f"gen-{position}"
    path = tmp_path / "bench.tsv"
    assert mmbench.write_mmbench(items, path) == len(items)
    header = path.read_text().splitlines()[0].split("\t")
    assert header == ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                      "image", "sample_id"]
    back = mmbench.read_mmbench(path)
    assert len(back) == len(items)
    shas = {image["sha256"] for image in instances["images"]}
    for original, read in zip(items, back):
        options = [original[key] for key in "ABCD" if original.get(key)]
        assert read["index"] == str(original["index"])
        assert read["question"] == original["question"]
        assert read["options"] == options
        assert read["answer"] == original["answer"]
        assert read["category"] == original["category"]
        assert read["l2_category"] == original["l2-category"]
        assert read["image"] == base64.b64decode(original["image"])
        assert read["image_sha256"] == sha256_bytes(read["image"]) and read["image_sha256"] in shas
        assert read["sample_id"] == original["sample_id"]
    assert back[0]["hint"] == "Look at the top row."
    assert all(read["hint"] is None for read in back[1:])


def _write(path, rows, columns=mmbench.COLUMNS):
    path.write_text("\n".join(["\t".join(columns)] + ["\t".join(str(row.get(c, "")) for c in columns) for row in rows])
                    + "\n")


PNG = base64.b64encode(b"\x89PNG fake bytes").decode("ascii")


def _row(index, **fields):
    row = {"index": index, "question": "What colour is it?", "A": "red", "B": "None", "answer": "B",
           "category": "colour", "l2-category": "attribute", "image": PNG}
    row.update(fields)
    return row


def test_read_keeps_text_options_and_resolves_image_references(tmp_path):
    path = tmp_path / "mm.tsv"
    _write(path, [_row(0, C="NA"), _row(1, image="0", hint="nan")])
    items = mmbench.read_mmbench(path)
    assert items[0]["options"] == ["red", "None", "NA"]  # no "NA"/"None" turned into NaN
    assert items[1]["image"] == items[0]["image"] == b"\x89PNG fake bytes"  # MMBench's image de-duplication
    assert items[0]["hint"] is None and items[1]["hint"] is None  # empty, and a NaN written as text
    _write(path, [_row(0, hint="Count only circles.")])
    assert mmbench.read_mmbench(path)[0]["hint"] == "Count only circles."


@pytest.mark.parametrize("rows, columns, message", [
    ([_row(0)], [c for c in mmbench.COLUMNS if c != "answer"], r"mm\.tsv: missing column\(s\) 'answer'"),
    ([_row(0), _row(7, answer="C")], mmbench.COLUMNS,
     r"mm\.tsv: row 1 \(index '7'\): field 'answer': 'C' is not among the non-empty options A, B"),
    ([_row(0), _row(1), _row(2, image="not base64!")], mmbench.COLUMNS,
     r"mm\.tsv: row 2 \(index '2'\): field 'image' is not valid base64"),
    ([_row(0, image="")], mmbench.COLUMNS, r"row 0 \(index '0'\): field 'image' is empty"),
    ([_row(0, A="", C="blue")], mmbench.COLUMNS, r"row 0 .*options must be 2 or more non-empty"),
    ([_row(0, question=" ")], mmbench.COLUMNS, r"row 0 .*field 'question' is empty"),
])
def test_read_errors_name_file_row_and_field(tmp_path, rows, columns, message):
    path = tmp_path / "mm.tsv"
    _write(path, rows, columns)
    with pytest.raises(ValueError, match=message):
        mmbench.read_mmbench(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv: benchmark TSV not found"):
        mmbench.read_mmbench(tmp_path / "nope.tsv")


def test_bench_stage(tmp_path, monkeypatch, capsys):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["world"]["splits"] = {"bench": 40}
    params["bench"]["items_per_family"] = 6
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    world.build(config.parse(params).world, 0, tmp_path / "data" / "images", tmp_path / "data" / "world")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(REPO / "stages" / "bench.py"), run_name="__main__")
    items = mmbench.read_mmbench(tmp_path / "data" / "bench" / "bench.tsv")
    assert Counter(item["category"] for item in items) == {family: 6 for family in FAMILIES}
    assert "36 items" in capsys.readouterr().out
