"""User data at the door (mmloop.sources): every bad input stops with the file, the record and the
field, and nothing is published; good COCO, LLaVA and ShareGPT data and image folders are read.

The bad inputs go the way real data goes: the images a source names are imported into a real
ImageStore (what the `store` stage does), then the curate stage runs on params.yaml."""

import json
import re
import runpy
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mmloop import config, questions, sources
from mmloop.loop import curation
from mmloop.schema import read_samples
from mmloop.store import ImageStore, read_index

REPO = Path(__file__).resolve().parents[1]
INSTANCES, CAPTIONS, LLAVA = "data/coco/instances.json", "data/coco/captions.json", "data/llava.json"
OUTPUTS = ("data/seed/samples.parquet", "metrics/curate.json")
WEIGHTS = {"existence": 1.0, "count": 1.0, "spatial": 1.0}  # what plain COCO (no attributes) answers


def picture(path: Path, colour=(200, 30, 30), size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def coco() -> dict:
    return {
        "images": [{"id": 1, "file_name": "images/a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "images/b.png", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [40, 4, 10, 10], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 64, 48], "iscrowd": 1},
        ],
    }


def captions() -> dict:
    return {"annotations": [{"id": 1, "image_id": 1, "caption": "a dog and a cat"},
                            {"id": 2, "image_id": 1, "caption": "two animals, far apart"},
                            {"id": 3, "image_id": 2, "caption": "a crowd of cats"}]}


def llava() -> list:
    return [
        {"id": "r0", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A red square."}]},
        {"id": "r1", "image": "b.png", "conversations": [
            {"from": "human", "value": "Describe it. <image>"}, {"from": "gpt", "value": "It is blue."},
            {"from": "human", "value": "Anything else?"}, {"from": "gpt", "value": "No."}]},
    ]


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """cwd = tmp_path with data/images/{a,b}.png, data/llava/{a,b}.png and a good COCO + LLaVA file."""
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "data/images/a.png")
    picture(tmp_path / "data/images/b.png", colour=(20, 20, 220))
    picture(tmp_path / "data/llava/a.png", colour=(1, 2, 3))
    picture(tmp_path / "data/llava/b.png", colour=(4, 5, 6))
    write(INSTANCES, coco())
    write(CAPTIONS, captions())
    write(LLAVA, llava())
    return tmp_path


def write(path: str, value) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value))


COCO_SOURCE = {"kind": "coco", "instances": INSTANCES, "captions": CAPTIONS}
LLAVA_SOURCE = {"kind": "llava", "path": LLAVA, "image_folder": "data/llava"}


def settings(*source_list, **curate):
    return {"seed": 0, "answer_format": "letter",
            "curate": {"sources": list(source_list), "family_weights": dict(WEIGHTS), **curate}}


def build_store(params: config.Params, pool: bool = False):
    """What the store stage does: import every image the sources (and the pool) name."""
    store = ImageStore("data/store", prefix="store")
    named = [*params.curate.sources, *([params.pool] if pool else [])]
    for source in named:
        for ref in sources.image_references(source, "data"):
            store.add(ref.path, ref.where)
    store.write_index()
    return read_index("data")


def run_stage(raw: dict):
    """Store, then the curate stage as DVC runs it; (samples, metrics)."""
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    build_store(config.parse(raw))
    runpy.run_path(str(REPO / "stages" / "curate.py"), run_name="__main__")
    return read_samples(OUTPUTS[0]), json.loads(Path(OUTPUTS[1]).read_text())


def fails(raw: dict, message: str, error=ValueError) -> str:
    """The pipeline stops with `message` (a regex) and publishes nothing."""
    with pytest.raises(error) as info:
        run_stage(raw)
    text = str(info.value)
    assert re.search(message, text), text
    for output in OUTPUTS:
        assert not Path(output).exists(), output
    return text


# ---------------------------------------------------------------- bad inputs

def edit_coco(change):
    value = coco()
    change(value)
    write(INSTANCES, value)


def annotation(index, **fields):
    return lambda value: value["annotations"][index].update(fields)


@pytest.mark.parametrize(("change", "message"), [
    (annotation(0, bbox=[-5, 2, 10, 10]),
     r"^data/coco/instances\.json: annotations\[0\] \(id 1\): field 'bbox' \[-5, 2, 10, 10\] lies outside "
     r"the image \(images\[0\] declares 64x48, 1 px tolerance\)$"),
    (annotation(1, bbox=[60, 40, 10, 10]),
     r"^data/coco/instances\.json: annotations\[1\] \(id 2\): field 'bbox' \[60, 40, 10, 10\] lies outside"),
    (annotation(0, bbox=[2, 2, -3, 10]),
     r"^data/coco/instances\.json: annotations\[0\] \(id 1\): field 'bbox' \[2, 2, -3, 10\] must have a "
     r"positive width and height$"),
    (annotation(0, bbox=["2", "2", "10", "10"]),
     r"^data/coco/instances\.json: annotations\[0\] \(id 1\): field 'bbox' must be 4 numbers \[x, y, width, "
     r"height\], got \['2', '2', '10', '10'\]$"),
    (annotation(0, bbox=[2, 2, 10]), r"annotations\[0\] \(id 1\): field 'bbox' must be 4 numbers"),
    (annotation(2, category_id=9),
     r"^data/coco/instances\.json: annotations\[2\] \(id 3\): field 'category_id' 9 is not the id of a "
     r"category in 'categories'$"),
    (annotation(2, image_id=7), r"annotations\[2\] \(id 3\): field 'image_id' 7 is not the id of an image"),
    (lambda value: value["images"][1].update(id=1),
     r"^data/coco/instances\.json: images\[1\] \(id 1\): field 'id' repeats the id of images\[0\]; image ids "
     r"must be unique$"),
    (lambda value: value["categories"][1].update(id=1),
     r"categories\[1\] \(id 1\): field 'id' repeats the id of categories\[0\]; category ids must be unique$"),
    (lambda value: value["images"][0].update(width=640, height=480),
     r"^data/coco/instances\.json: images\[0\] \(id 1\): fields 'width' x 'height' declare 640x480, but the "
     r"image file 'images/a\.png' is 64x48$"),
    (lambda value: value["images"][0].update(sha256="0" * 64),
     r"images\[0\] \(id 1\): field 'sha256' 0{64} is not the sha256 of the image file 'images/a\.png'"),
    (lambda value: value.pop("categories"), r"^data/coco/instances\.json: COCO instances has no 'categories' list$"),
])
def test_bad_coco_instances(project, change, message):
    edit_coco(change)
    fails(settings(COCO_SOURCE), message)


def test_box_outside_the_real_image_when_no_size_is_declared(project):
    def change(value):
        for image in value["images"]:
            del image["width"], image["height"]
        value["annotations"][1]["bbox"] = [50, 4, 15.5, 10]  # 1.5 px past the 64-px edge
    edit_coco(change)
    fails(settings(COCO_SOURCE), r"annotations\[1\] \(id 2\): field 'bbox' \[50, 4, 15\.5, 10\] lies outside "
                                 r"the image \(image file 64x48, 1 px tolerance\)")


def test_box_within_the_rounding_tolerance_is_accepted(project):
    edit_coco(annotation(1, bbox=[50, 4, 14.9, 10]))  # 0.9 px past the edge: COCO rounding
    rows, _ = run_stage(settings(COCO_SOURCE))
    assert len(rows) == 2


def test_random_bytes_named_jpg_are_refused_by_the_store(project):
    Path("data/images/b.png").unlink()
    Path("data/images/noise.jpg").write_bytes(bytes(range(256)) * 4)
    edit_coco(lambda value: value["images"][1].update(file_name="images/noise.jpg"))
    fails(settings(COCO_SOURCE),
          r"^data/coco/instances\.json: images\[1\] \(id 2\): field 'file_name': \S+/data/images/noise\.jpg: not an? "
          r"(decodable )?image")
    assert not Path("data/store/index.parquet").exists()


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd"])
def test_image_paths_outside_the_root(project, name):
    edit_coco(lambda value: value["images"][0].update(file_name=name))
    fails(settings(COCO_SOURCE), rf"^data/coco/instances\.json: images\[0\] \(id 1\): field 'file_name': "
                                 rf"'{re.escape(name)}' resolves to \S*/etc/passwd, outside ")
    records = llava()
    records[1]["image"] = name
    write(LLAVA, records)
    fails(settings(LLAVA_SOURCE), rf"^data/llava\.json: record 1 \(id 'r1'\): field 'image': '{re.escape(name)}' "
                                  rf"resolves to \S*/etc/passwd, outside ")


def test_a_symlink_out_of_the_root(project, tmp_path):
    picture(tmp_path / "elsewhere" / "c.png")
    Path("data/llava/c.png").symlink_to(tmp_path / "elsewhere" / "c.png")
    records = llava()
    records[0]["image"] = "c.png"
    write(LLAVA, records)
    fails(settings(LLAVA_SOURCE), r"record 0 \(id 'r0'\): field 'image': 'c\.png' resolves to \S+/elsewhere/c\.png, "
                                  r"outside")


def test_unusable_image_skipped_and_counted_or_an_error(project):
    edit_coco(lambda value: value.update(annotations=[]))
    write(CAPTIONS, {"annotations": [{"id": 1, "image_id": 2, "caption": "a blue picture"}]})
    rows, stats = run_stage(settings(COCO_SOURCE))
    assert [row["image_sha256"] for row in rows] == [read_index("data").lookup("data/images/b.png", "").sha256]
    entry = stats["sources"][INSTANCES]
    assert entry["skipped"] == {sources.NO_CONTENT: 1}
    assert entry["records"] == 2 and entry["images"] == 1 and entry["samples"] == 1
    for output in OUTPUTS:
        Path(output).unlink()
    fails(settings(COCO_SOURCE, unusable="error"),
          r"^data/coco/instances\.json: images\[0\] \(id 1\): has no annotation and no caption \(curate\.unusable "
          r"is 'error'; 'skip' leaves such images out\)$")


def test_no_usable_image_at_all_is_an_error(project):
    edit_coco(lambda value: value.update(annotations=[]))
    fails(settings({"kind": "coco", "instances": INSTANCES}),
          r"curate\.sources gave no usable sample \(data/coco/instances\.json: 2 records, skipped "
          r"\{'no annotations or captions': 2\}\)")


@pytest.mark.parametrize(("caption", "message"), [
    ("x" * 100_000, r"^data/coco/captions\.json: annotations\[1\] \(id 2\): field 'caption' is 100000 characters "
                    r"long, more than curate\.max_text_chars \(4000\)$"),
    ("\u200b\u200b\u2060\ufeff", r"^data/coco/captions\.json: annotations\[1\] \(id 2\): field 'caption' has no "
                                 r"visible text, got '\\u200b\\u200b\\u2060\\ufeff'$"),
    (" \n\t ", r"annotations\[1\] \(id 2\): field 'caption' has no visible text"),
    (["a", "list"], r"annotations\[1\] \(id 2\): field 'caption' must be a string, got list"),
])
def test_bad_captions(project, caption, message):
    value = captions()
    value["annotations"][1]["caption"] = caption
    write(CAPTIONS, value)
    fails(settings(COCO_SOURCE), message)


def test_caption_for_an_unknown_image(project):
    value = captions()
    value["annotations"][2]["image_id"] = 99
    write(CAPTIONS, value)
    fails(settings(COCO_SOURCE), r"^data/coco/captions\.json: annotations\[2\] \(id 3\): field 'image_id' 99 matches "
                                 r"no image of the instances file \(by id\)$")


def edit_llava(index, change):
    records = llava()
    change(records[index])
    write(LLAVA, records)


def turn(index, **fields):
    return lambda record: record["conversations"][index].update(fields)


@pytest.mark.parametrize(("change", "message"), [
    (turn(2, value="And this one <image>?"),
     r"^data/llava\.json: record 1 \(id 'r1'\): field 'conversations' has 2 '<image>' tokens, needs exactly one "
     r"\(multi-image records are not supported\)$"),
    (turn(0, value="Describe it."),
     r"^data/llava\.json: record 1 \(id 'r1'\): field 'conversations' has 0 '<image>' tokens, needs exactly one "
     r"\(where the image goes; text-only records are not supported\)$"),
    (lambda record: record["conversations"].pop(),
     r"^data/llava\.json: record 1 \(id 'r1'\): field 'conversations' ends on a user turn; it must end on an "
     r"assistant answer$"),
    (lambda record: record["conversations"].reverse(),
     r"^data/llava\.json: record 1 \(id 'r1'\): field 'conversations\[0\]' has role 'assistant' where 'user' "
     r"belongs: turns alternate user/assistant \(a system turn may lead\)$"),
    (turn(1, value="<image> here"), r"record 1 \(id 'r1'\): field 'conversations\[1\]': field 'value' holds "
                                    r"'<image>' in the assistant's turn; the image belongs to a user turn$"),
    (turn(1, **{"from": "bot"}), r"record 1 \(id 'r1'\): field 'conversations\[1\]': field 'from' must be one of "
                                 r"human, user, gpt, assistant, system, got 'bot'$"),
    (turn(3, value="\u200b"), r"record 1 \(id 'r1'\): field 'conversations\[3\]': field 'value' has no visible "
                              r"text"),
    (turn(3, value="y" * 5000), r"field 'conversations\[3\]': field 'value' is 5000 characters long, more than "
                                r"curate\.max_text_chars \(4000\)"),
    (lambda record: record.update(conversations=[]), r"record 1 \(id 'r1'\): field 'conversations' must be a "
                                                     r"non-empty list of turns"),
    (lambda record: record.pop("image"), r"^data/llava\.json: record 1 \(id 'r1'\): field 'image' must be a "
                                         r"non-empty path, got None$"),
    (lambda record: record.update(image="missing.png"), r"record 1 \(id 'r1'\): field 'image': \S+missing\.png: "
                                                        r"image file not found"),
])
def test_bad_llava_records(project, change, message):
    edit_llava(1, change)
    error = FileNotFoundError if "not found" in message else ValueError
    fails(settings(LLAVA_SOURCE), message, error)


@pytest.mark.parametrize(("record", "message"), [
    ({"id": 5, "images": ["a.png", "b.png"], "messages": [{"role": "user", "content": "<image><image>Compare."},
                                                          {"role": "assistant", "content": "Same."}]},
     r"^data/share\.json: record 0 \(id 5\): field 'images' must list exactly one image path, got 2 images "
     r"\(multi-image records are not supported\)$"),
    ({"images": ["a.png"], "image": "a.png", "messages": []},
     r"^data/share\.json: record 0: needs exactly one of the fields 'images' \(a list of one path\) or 'image', "
     r"not both$"),
    ({"image": "a.png", "messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Hi"}],
      "conversations": []},
     r"^data/share\.json: record 0: needs one of the fields 'messages' or 'conversations', not both$"),
    ({"image": "a.png", "messages": [{"role": "human", "content": "<image>Hi"}]},
     r"record 0: field 'messages\[0\]': field 'role' must be one of user, assistant, system, got 'human'$"),
    ({"image": "a.png", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "<image>Hi"}]},
     r"record 0: field 'messages' ends on a user turn; it must end on an assistant answer$"),
])
def test_bad_sharegpt_records(project, record, message):
    write("data/share.json", [record])
    fails(settings({"kind": "sharegpt", "path": "data/share.json", "image_folder": "data/llava"}), message)


@pytest.mark.parametrize(("source", "value", "message"), [
    (COCO_SOURCE, [], r"^data/coco/instances\.json: expected a COCO instances object with 'images', 'annotations' "
                      r"and 'categories' lists, got list$"),
    (LLAVA_SOURCE, {"id": "x"}, r"^data/llava\.json: expected a list of records, got object$"),
    (LLAVA_SOURCE, ["just text"], r"^data/llava\.json: record 0 must be an object, got string$"),
])
def test_wrong_top_level_type(project, source, value, message):
    write(source.get("instances") or source["path"], value)
    fails(settings(source), message)


@pytest.mark.parametrize(("data", "message"), [
    ('{"images": "caf\xe9"}'.encode("latin-1"),
     r"^data/coco/instances\.json: not UTF-8 text: byte 0xe9 at offset 15 \(invalid continuation byte\); save the "
     r"file as UTF-8$"),
    (b'{"images": [], "x": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 bytes (CESU-8)
     r"^data/coco/instances\.json: not UTF-8 text: byte 0xed at offset 21"),
    (b'{"images": [],\n "x": "ok \\ud83d"}',
     r"^data/coco/instances\.json: line 2, column 11: '\\ud83d' is a lone UTF-16 surrogate, not a character"),
    (b'{"images": [],\n "x": "\\udc00\\ud83d\\ude00"}', r"^data/coco/instances\.json: line 2, column 8: '\\udc00'"),
    (b'{"images": [}', r"^data/coco/instances\.json: not valid JSON \(line 1, column 13\): Expecting value$"),
    (b'{"images": NaN}', r"^data/coco/instances\.json: not valid JSON: NaN is not a JSON number$"),
])
def test_undecodable_and_invalid_json(project, data, message):
    Path(INSTANCES).write_bytes(data)
    fails(settings(COCO_SOURCE), message)


def test_read_json_file_accepts_pairs_escaped_backslashes_and_a_bom(tmp_path):
    path = tmp_path / "ok.json"
    path.write_bytes(b'\xef\xbb\xbf["\\ud83d\\ude00", "\\\\ud800", "caf\xc3\xa9"]')
    assert sources.read_json_file(path) == ["\U0001F600", "\\ud800", "caf\u00e9"]
    with pytest.raises(FileNotFoundError, match=r"missing\.json: file not found"):
        sources.read_json_file(tmp_path / "missing.json")


# ---------------------------------------------------------------- good data

def test_coco_with_every_caption(project):
    value = captions()
    value["annotations"].append({"id": 4, "image_id": 1, "caption": "  A dog and a cat.  "})  # same sentence as 1
    write(CAPTIONS, value)
    rows, stats = run_stage(settings(COCO_SOURCE, caption_turns=5))
    index = read_index("data")
    first, second = rows
    stored = index.lookup("data/images/a.png", "")
    assert first["image"] == stored.path and first["image"].startswith("store/")
    assert first["image_sha256"] == stored.sha256
    caption_turns = {question["content"]: answer["content"] for question, answer in zip(first["conversations"][::2],
                                                                                       first["conversations"][1::2])
                     if question["content"] in curation.CAPTION_PROMPTS}
    # every caption of the image once (the repeated one once, in a drawn order), the first asked the usual way
    assert set(caption_turns) == {questions.CAPTION_QUESTION, curation.CAPTION_PROMPTS[1]}
    assert sorted(caption_turns.values()) == ["A dog and a cat.", "Two animals, far apart."]
    assert len(first["conversations"]) == 12  # 2 caption turns + 4 question turns
    assert json.loads(first["provenance"]["source"]) == {"files": [INSTANCES, CAPTIONS], "ids": [1], "records": [0]}
    assert json.loads(second["provenance"]["source"])["ids"] == [2]
    entry = stats["sources"][INSTANCES]
    assert entry == {"kind": "coco", "records": 2, "images": 2, "samples": 2, "duplicates": 0, "merged": 0,
                     "skipped": {}, "turns": sum(len(row["conversations"]) // 2 for row in rows)}
    assert stats["formats"]["caption"] == 3


def test_read_coco_objects_crowd_and_vocabulary(project):
    params = config.parse(settings(COCO_SOURCE))
    index = build_store(params)
    data = sources.read_coco(params.curate.sources[0], "data", index, max_text_chars=100, unusable="skip")
    assert data.vocabulary == ["dog", "cat"]
    assert [image.id for image in data.images] == [1, 2]
    assert data.images[0].objects == [
        questions.SceneObject(id=1, shape="dog", bbox=(2.0, 2.0, 10.0, 10.0)),
        questions.SceneObject(id=2, shape="cat", bbox=(40.0, 4.0, 10.0, 10.0))]
    assert data.images[1].objects[0].crowd is True
    assert data.images[0].captions == ["a dog and a cat", "two animals, far apart"]
    assert data.images[1].stored == index.lookup("data/images/b.png", "")


def test_family_weights_the_data_cannot_answer_warn(project, capsys):
    raw = settings(COCO_SOURCE, family_weights={"colour": 1.0, "existence": 1.0})
    _, stats = run_stage(raw)
    assert stats["families"]["colour"] == 0 and stats["families"]["existence"] > 0
    assert len(stats["warnings"]) == 1
    assert stats["warnings"][0].startswith("curate.family_weights gives colour 50.0% of the question turns, but "
                                           "the COCO sources answered 0.0% (0 turns): colour questions need the "
                                           "per-object attribute 'colour'")
    assert f"curate: warning: {stats['warnings'][0]}" in capsys.readouterr().err


def test_llava_records_of_one_image_are_merged(project):
    records = llava()
    records.append({"id": "r2", "image": "./a.png", "conversations": [
        {"from": "human", "value": "<image>Is it red?"}, {"from": "gpt", "value": "Yes."}]})
    records.append(json.loads(json.dumps(records[0])) | {"id": "r3"})  # the same conversation again
    write(LLAVA, records)
    rows, stats = run_stage(settings(LLAVA_SOURCE))
    assert len(rows) == 2
    merged = rows[0]
    assert merged["conversations"] == [
        {"role": "user", "content": "What is shown?"}, {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": "Is it red?"}, {"role": "assistant", "content": "Yes."}]
    assert json.loads(merged["provenance"]["source"]) == {"files": [LLAVA], "ids": ["r0", "r2"], "records": [0, 2]}
    assert merged["provenance"]["backend"] == "llava"
    assert rows[1]["conversations"][0] == {"role": "user", "content": "Describe it."}
    assert stats["sources"][LLAVA] == {"kind": "llava", "records": 4, "images": 2, "samples": 2, "turns": 4,
                                       "duplicates": 0, "merged": 1, "skipped": {sources.DUPLICATE_RECORD: 1}}
    assert stats["formats"]["open"] == 4


def test_sharegpt_in_both_message_forms(project):
    records = [
        {"id": "s0", "images": ["a.png"], "messages": [
            {"role": "system", "content": "You describe images."},
            {"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "Red."}]},
        {"image": "b.png", "conversations": [
            {"from": "user", "value": "What colour? <image>"}, {"from": "assistant", "value": "Blue."}]},
        {"id": "s2", "images": ["a.png"], "messages": [
            {"role": "system", "content": "You describe images."},
            {"role": "user", "content": "<image>\nHow big?"}, {"role": "assistant", "content": "64 by 48."}]},
    ]
    write("data/share.json", records)
    rows, stats = run_stage(settings({"kind": "sharegpt", "path": "data/share.json", "image_folder": "data/llava"}))
    assert [row["conversations"] for row in rows] == [
        [{"role": "system", "content": "You describe images."},
         {"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Red."},
         {"role": "user", "content": "How big?"}, {"role": "assistant", "content": "64 by 48."}],
        [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Blue."}]]
    assert [json.loads(row["provenance"]["source"])["ids"] for row in rows] == [["s0", "s2"], [None]]
    assert rows[0]["provenance"]["backend"] == "sharegpt"
    assert (rows[0]["question"], rows[0]["answer"]) == ("What colour?", "64 by 48.")  # not the system turn
    assert stats["sources"]["data/share.json"]["merged"] == 1


def test_sharegpt_records_of_one_image_with_different_system_turns(project):
    records = [{"image": "a.png", "messages": [{"role": "system", "content": "One."},
                                               {"role": "user", "content": "<image>Hi"},
                                               {"role": "assistant", "content": "Hello."}]},
               {"image": "a.png", "messages": [{"role": "system", "content": "Two."},
                                               {"role": "user", "content": "<image>Bye"},
                                               {"role": "assistant", "content": "Goodbye."}]}]
    write("data/share.json", records)
    fails(settings({"kind": "sharegpt", "path": "data/share.json", "image_folder": "data/llava"}),
          r"^data/share\.json: record 1: its system turn differs from that of record 0, which shows the same image")


# ---------------------------------------------------------------- the pool

def test_folder_pool(project):
    picture(Path("pool/z.png"))
    picture(Path("pool/sub/deeper/a.JPG"), colour=(0, 90, 0))
    picture(Path("pool/m.webp"), colour=(0, 0, 90))
    picture(Path("pool/copy.png"))  # the same pixels as z.png: one pool image
    Path("pool/notes.txt").write_text("not an image")
    picture(Path("pool/.thumbs/hidden.png"), colour=(9, 9, 9))
    pool = config.PoolConfig(kind="folder", image_folder="pool")
    refs = sources.image_references(pool, "data")
    assert [ref.path for ref in refs] == [Path(name).resolve() for name in
                                          ("pool/copy.png", "pool/m.webp", "pool/sub/deeper/a.JPG", "pool/z.png")]
    assert refs[2].where == "pool: image 'sub/deeper/a.JPG'"
    raw = {"pool": {"kind": "folder", "image_folder": "pool"}, **settings(COCO_SOURCE)}
    index = build_store(config.parse(raw), pool=True)
    images = sources.pool_images(pool, "data", index)
    assert [image["image_sha256"] for image in images] == [
        index.lookup(f"pool/{name}", "").sha256 for name in ("copy.png", "m.webp", "sub/deeper/a.JPG")]
    assert all(image["image"].startswith("store/") for image in images)
    with pytest.raises(ValueError, match=r"pool\.kind is 'folder': the annotations teacher .* needs an annotated "
                                         r"pool"):
        sources.pool_annotations(pool, "data", index)
    Path("empty").mkdir()
    with pytest.raises(ValueError, match=r"^empty: the unlabeled pool \(pool\.image_folder\) has no images$"):
        sources.pool_images(config.PoolConfig(kind="folder", image_folder="empty"), "data", index)


def test_coco_pool(project):
    pool = config.PoolConfig(kind="coco", instances=INSTANCES)
    raw = {"pool": {"kind": "coco", "instances": INSTANCES}, **settings(COCO_SOURCE)}
    index = build_store(config.parse(raw), pool=True)
    images = sources.pool_images(pool, "data", index)
    shas = [index.lookup(f"data/images/{name}", "").sha256 for name in ("a.png", "b.png")]
    assert images == [{"image": index.by_sha(sha).path, "image_sha256": sha} for sha in shas]
    objects, vocabulary = sources.pool_annotations(pool, "data", index)
    assert vocabulary == ["dog", "cat"]
    assert [obj.shape for obj in objects[shas[0]]] == ["dog", "cat"] and objects[shas[1]][0].crowd
    write(INSTANCES, {**coco(), "images": [], "annotations": []})
    with pytest.raises(ValueError, match=r"^data/coco/instances\.json: the unlabeled pool has no images$"):
        sources.pool_images(pool, "data", index)


def test_curation_needs_the_store(project):
    with pytest.raises(FileNotFoundError, match=r"data/store/index\.parquet: image store index not found"):
        curation.curate(config.parse(settings(COCO_SOURCE)).curate, answer_format="letter", seed=0, data_root="data")


def test_two_files_sharing_an_image_id_keep_their_own_objects(project):
    """Image id 1 of two COCO files names two different photos: each keeps its own objects."""
    other = "data/coco/other.json"
    picture(project / "data/images/rocket.png", colour=(9, 9, 9))
    write(other, {"images": [{"id": 1, "file_name": "images/rocket.png", "width": 64, "height": 48}],
                  "categories": [{"id": 1, "name": "rocket"}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 5, 8, 30], "iscrowd": 0}]})
    params = config.parse(settings(COCO_SOURCE, {"kind": "coco", "instances": other}))
    index = build_store(params)
    first, second = (sources.read_coco(source, "data", index) for source in params.curate.sources)
    assert [obj.shape for obj in first.images[0].objects] == ["dog", "cat"]
    assert [obj.shape for obj in second.images[0].objects] == ["rocket"]
    assert first.images[0].stored.sha256 != second.images[0].stored.sha256
    rows, _ = run_stage(settings(COCO_SOURCE, {"kind": "coco", "instances": other}))
    rocket = [row for row in rows if row["image_sha256"] == second.images[0].stored.sha256]
    assert rocket and "dog" not in json.dumps(rocket[0]["conversations"]) and "cat" not in json.dumps(
        rocket[0]["conversations"])


def world_coco(**changes):
    instances = {"images": [{"id": 1, "file_name": "images/aa.png", "sha256": "aa", "width": 64, "height": 64},
                            {"id": 2, "file_name": "images/b.png"}],
                 "categories": [{"id": 7, "name": "circle"}],
                 "annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 4, 4],
                                  "attributes": {"colour": "red", "size": "small", "row": 0, "col": 0}}]}
    instances.update(changes)
    return instances


def test_coco_objects_key_by_sha256_else_id():
    objects = sources.coco_objects(world_coco())
    assert objects == {"aa": [questions.SceneObject(5, "circle", (0.0, 0.0, 4.0, 4.0), "red", "small", 0, 0)],
                       "2": []}
    assert [sources.image_key(image) for image in world_coco()["images"]] == ["aa", "2"]


@pytest.mark.parametrize("changes, message", [
    ({"categories": None}, r"^inst\.json: field 'categories': expected a list"),
    ({"images": [{"sha256": "aa"}]}, r"^inst\.json: images\[0\] has no 'id' field$"),
    ({"annotations": [{"id": 5, "image_id": 1, "bbox": [0, 0, 4, 4]}]},
     r"^inst\.json: annotations\[0\] \(id 5\) has no 'category_id' field$"),
    ({"annotations": [{"id": 5, "image_id": 9, "category_id": 7, "bbox": [0, 0, 4, 4]}]},
     r"annotations\[0\] \(id 5\): field 'image_id' 9 is not the id of an image in 'images'$"),
    ({"annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 4]}]},
     r"annotations\[0\] \(id 5\): field 'bbox' must be 4 numbers"),
    ({"annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [62, 0, 4, 4]}]},
     r"annotations\[0\] \(id 5\): field 'bbox' \[62, 0, 4, 4\] lies outside the image \(images\[0\] declares"),
])
def test_coco_objects_errors_name_file_record_and_field(changes, message):
    with pytest.raises(ValueError, match=message):
        sources.coco_objects(world_coco(**changes), source="inst.json")
