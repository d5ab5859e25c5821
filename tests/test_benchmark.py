"""The bench stage: the world's MMBench TSV (items from held-out scenes, the round trip, its errors),
a user's benchmark checked at the door, and the manifest that names the loop's benchmark."""

import base64
import io
import json
import runpy
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mmloop import config
from mmloop.eval import manifest
from mmloop.eval.benchmarks import mmbench
from mmloop.io import read_json, sha256_bytes
from mmloop.questions import FAMILIES, L2_CATEGORY
from mmloop.schema import bench_item
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
    assert f"{6 * len(FAMILIES)} items" in capsys.readouterr().out
    # The manifest names the world's TSV, and the evaluate and sample stages load exactly its items.
    assert read_json(tmp_path / "data" / "bench" / "bench.json") == {
        "format": "mmbench", "file": "data/bench/bench.tsv", "image_dir": None, "items": 6 * len(FAMILIES),
        "categories": {family: 6 for family in sorted(FAMILIES)}}
    loaded, kind = manifest.loop_benchmark("data/bench/bench.json")
    assert kind == "mmbench" and loaded == items


# ---------------------------------------------------------------- a user's benchmark (params bench.source)

def _png(colour, size=(8, 8)):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _user_mmbench(path):
    """An MMBench TSV of 3 items on 2 PIL-made images, categories ocr (2) and colour (1)."""
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    rows = [benchmark.mmbench_row(index, question, ["red", "blue"], answer, category,
                                  base64.b64encode(image).decode())
            for index, (question, answer, category, image) in enumerate([
                ("What colour is it?", "red", "colour", red), ("Which word is written?", "blue", "ocr", blue),
                ("Which word is written here?", "red", "ocr", red)])]
    path.parent.mkdir(parents=True, exist_ok=True)
    mmbench.write_mmbench(rows, path)
    return red, blue


def _user_pope(folder, name="pope_random.jsonl", records=None):
    """A POPE JSONL of 4 yes/no questions about 2 image files beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(_png((255, 0, 0)))
    (folder / "b.png").write_bytes(_png((0, 255, 0)))
    records = records if records is not None else [
        {"question_id": 1, "image": "a.png", "text": "Is there a circle in the image?", "label": "yes"},
        {"question_id": 2, "image": "a.png", "text": "Is there a dog in the image?", "label": "no"},
        {"question_id": 3, "image": "b.png", "text": "Is there a square in the image?", "label": "yes"},
        {"question_id": 4, "image": "b.png", "text": "Is there a cat in the image?", "label": "no"}]
    path = folder / name
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _run_bench_stage(root, monkeypatch, **bench):
    """The bench stage in `root` (no world built there) with params bench.* overridden."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["bench"].update(bench)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    runpy.run_path(str(REPO / "stages" / "bench.py"), run_name="__main__")
    return read_json(root / "data" / "bench" / "bench.json")


def test_bench_stage_names_a_user_mmbench_tsv(tmp_path, monkeypatch, capsys):
    red, blue = _user_mmbench(tmp_path / "mine" / "bench.tsv")
    written = _run_bench_stage(tmp_path, monkeypatch, source="mine/bench.tsv")
    assert written == {"format": "mmbench", "file": "mine/bench.tsv", "image_dir": None, "items": 3,
                       "categories": {"colour": 1, "ocr": 2}}
    assert not (tmp_path / "data" / "bench" / "bench.tsv").exists()  # the world's benchmark is not made
    assert "3 mmbench items in mine/bench.tsv" in capsys.readouterr().out
    items, kind = manifest.loop_benchmark(tmp_path / "data" / "bench" / "bench.json")
    assert kind == "mmbench"
    assert [item["category"] for item in items] == ["colour", "ocr", "ocr"]
    assert [item["image_sha256"] for item in items] == [sha256_bytes(red), sha256_bytes(blue), sha256_bytes(red)]


def test_bench_stage_names_a_user_pope_jsonl(tmp_path, monkeypatch):
    _user_pope(tmp_path / "pope")
    written = _run_bench_stage(tmp_path, monkeypatch, source="pope/pope_random.jsonl")
    assert written == {"format": "pope", "file": "pope/pope_random.jsonl", "image_dir": None, "items": 4,
                       "categories": {"random": 4}}
    items, kind = manifest.loop_benchmark("data/bench/bench.json")
    assert kind == "pope"
    assert [(item["answer_type"], item["answer"]) for item in items] == [
        ("yes_no", "yes"), ("yes_no", "no"), ("yes_no", "yes"), ("yes_no", "no")]
    assert items[2]["image"] == (tmp_path / "pope" / "b.png").read_bytes()


def test_bench_stage_takes_the_format_and_image_dir_from_params(tmp_path, monkeypatch):
    """A POPE file under a name nothing can be guessed from, its images in another folder."""
    _user_pope(tmp_path / "images")
    (tmp_path / "images" / "pope_random.jsonl").rename(tmp_path / "questions.txt")
    written = _run_bench_stage(tmp_path, monkeypatch, source="questions.txt", format="pope", image_dir="images")
    assert (written["format"], written["file"], written["image_dir"]) == ("pope", "questions.txt", "images")
    items, kind = manifest.loop_benchmark("data/bench/bench.json")
    assert kind == "pope" and len(items) == 4 and items[0]["image"] == (tmp_path / "images" / "a.png").read_bytes()


@pytest.mark.parametrize("bench, message", [
    ({"source": "nope.tsv"}, r"bench\.source \(nope\.tsv\) cannot be used: nope\.tsv: benchmark file not found"),
    ({"source": "pope/pope_random.jsonl", "format": "pope2"}, r"params bench\.format: unknown benchmark format"),
    ({"source": "pope/pope_random.jsonl", "image_dir": "elsewhere"},
     r"pope_random\.jsonl: line 1 \(question_id '1'\): field 'image': image file .*elsewhere/a\.png' not found"),
    ({"source": "empty.tsv"}, r"empty\.tsv: the benchmark has no items"),
    ({"source": "pope/broken_random.jsonl"}, r"broken_random\.jsonl: item '1': field 'image' is not a readable image"),
])
def test_bench_stage_refuses_a_user_file_the_loop_cannot_use(tmp_path, monkeypatch, bench, message):
    _user_pope(tmp_path / "pope")
    (tmp_path / "pope" / "broken.png").write_bytes(b"not an image")
    _user_pope(tmp_path / "pope", "broken_random.jsonl",
               [{"question_id": 1, "image": "broken.png", "text": "Is there a cat?", "label": "no"}])
    (tmp_path / "empty.tsv").write_text("\t".join(mmbench.COLUMNS) + "\n")
    with pytest.raises(SystemExit, match=message):
        _run_bench_stage(tmp_path, monkeypatch, **bench)
    assert not (tmp_path / "data" / "bench" / "bench.json").exists()


def test_every_item_of_the_loops_benchmark_needs_a_category():
    item = bench_item(index="7", question="Is it red?", answer_type="yes_no", answer="yes", category=" ",
                      image=_png((255, 0, 0)), image_sha256="s")
    with pytest.raises(ValueError, match=r"mine\.jsonl: item '7': field 'category' is missing"):
        manifest.check_items([item], "mine.jsonl")
    manifest.check_items([{**item, "category": "colour"}], "mine.jsonl")
    with pytest.raises(ValueError, match=r"mine\.jsonl: benchmark item '7': field 'answer'"):
        manifest.check_items([{**item, "category": "colour", "answer": "maybe"}], "mine.jsonl")


def test_a_benchmark_file_changed_after_the_bench_stage_is_refused(tmp_path):
    path = _user_pope(tmp_path)
    items, _ = manifest.load_source(path)
    manifest.write_manifest(tmp_path / "bench.json", items, format="pope", file=path)
    assert len(manifest.loop_benchmark(tmp_path / "bench.json")[0]) == 4
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"1 items .* says 4 .*rerun the bench stage"):
        manifest.loop_benchmark(tmp_path / "bench.json")
    (tmp_path / "bench.json").write_text(json.dumps({"format": "pope", "file": str(path)}))
    with pytest.raises(ValueError, match=r"bench\.json: benchmark manifest lacks field\(s\) 'image_dir', 'items'"):
        manifest.loop_benchmark(tmp_path / "bench.json")
    with pytest.raises(FileNotFoundError, match=r"nope\.json: benchmark manifest not found; the bench stage writes it"):
        manifest.loop_benchmark(tmp_path / "nope.json")


def test_manifest_paths_are_relative_to_root(tmp_path):
    _user_pope(tmp_path / "pope")
    items, kind = manifest.load_source(tmp_path / "pope" / "pope_random.jsonl")
    manifest.write_manifest(tmp_path / "bench.json", items, format=kind, file="pope/pope_random.jsonl")
    assert manifest.loop_benchmark(tmp_path / "bench.json", root=tmp_path) == (items, "pope")


def test_a_stage_names_an_invalid_seed_and_its_value(tmp_path, monkeypatch):
    """`seed: zero`: params are parsed (strictly) before any stage reads a value."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["seed"] = "zero"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"params\.yaml: 1 invalid parameter\(s\):\n  seed: Input should be a valid "
                                         r"integer \(got 'zero'\)"):
        runpy.run_path(str(REPO / "stages" / "bench.py"), run_name="__main__")
