import json
import re
import runpy
from pathlib import Path

import pytest

from mmloop import config, questions, schema
from mmloop.io import sha256_file
from mmloop.loop import curation
from mmloop.validation import ValidationError, validate
from mmloop.world import scenes as world

WEIGHTS = {"colour": 0.24, "shape": 0.24, "size": 0.24, "existence": 0.24, "count": 0.02, "spatial": 0.02}
REPO = Path(__file__).resolve().parents[1]


def coco_world(folder: Path, images: int, seed: int = 1):
    """COCO instances/captions of `images` procedural scenes (hashes given, nothing rendered)."""
    world_config = world.WorldConfig(splits={"seed": images})
    scenes = world.generate(world_config, seed)["seed"]
    shas = [f"{index:064x}" for index in range(len(scenes))]
    instances, captions = world.coco_files("seed", scenes, shas, world_config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(instances))
    (folder / "captions.json").write_text(json.dumps(captions))
    return folder / "instances.json", folder / "captions.json", instances, captions


def params(sources, **settings):
    section = {"sources": sources, "turns_per_image": 6, "mcq_ratio": 0.75, "family_weights": dict(WEIGHTS)}
    section.update(settings)
    return {"seed": 0, "answer_format": "letter", "curate": section}  # letter replies: the checks read them


def curate(settings, data_root):
    """The curate stage's call: typed params, the stage's seed."""
    parsed = config.parse(settings)
    return curation.curate(parsed.curate, answer_format=parsed.answer_format,
                           seed=config.stage_seed(parsed.seed, "curate"), data_root=data_root)


def coco_source(instances, captions=None):
    source = {"kind": "coco", "instances": str(instances)}
    if captions:
        source["captions"] = str(captions)
    return source


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco")
    instances, captions, instances_dict, captions_dict = coco_world(folder, 300)
    rows, stats = curate(params([coco_source(instances, captions)]), data_root=folder)
    return rows, stats, instances_dict, captions_dict


# ---------------------------------------------------------------- COCO conversations

def test_family_mix_follows_the_weights(curated):
    rows, stats, _, _ = curated
    assert stats["samples"] == 300
    families = [record["program"]["family"] for row in rows for record in curation.turn_records(row)
                if record["program"]]
    assert len(families) == 300 * 5  # six turns per image, one of them the caption
    share = {family: families.count(family) / len(families) for family in questions.FAMILIES}
    for family, weight in WEIGHTS.items():
        assert share[family] == pytest.approx(weight, abs=0.01), (family, share)
    assert stats["families"] == {family: families.count(family) for family in questions.FAMILIES}
    assert stats["family_share"]["count"] == pytest.approx(0.02, abs=0.01)


def test_weights_change_the_mix(tmp_path):
    instances, captions, _, _ = coco_world(tmp_path, 200)
    uniform = {family: 1.0 for family in questions.FAMILIES}
    _, stats = curate(params([coco_source(instances, captions)], family_weights=uniform),
                               data_root=tmp_path)
    assert stats["family_share"]["count"] > 0.12
    only = {"count": 1.0, "colour": 0.0}
    rows, stats = curate(params([coco_source(instances)], family_weights=only), data_root=tmp_path)
    assert set(family for family, count in stats["families"].items() if count) == {"count"}
    assert stats["formats"]["caption"] == 0


def test_turns_formats_and_captions(curated):
    rows, stats, _, captions_dict = curated
    sentences = {curation.sentence(row["caption"]) for row in captions_dict["annotations"]}
    mcq = short = 0
    for row in rows:
        assert row["origin"] == "seed" and row["iteration"] == 0
        assert row["format"] == "conversation" and row["category"] == schema.MIXED_CATEGORY
        roles = [turn["role"] for turn in row["conversations"]]
        assert roles == ["user", "assistant"] * 6
        records = curation.turn_records(row)
        assert [record["turn"] for record in records] == list(range(6))
        assert [record["format"] for record in records].count("caption") == 1
        user_turns = [turn["content"] for turn in row["conversations"][::2]]
        assert len(set(user_turns)) == len(user_turns), "a question is repeated on one image"
        for record, (user, assistant) in zip(records, zip(row["conversations"][::2], row["conversations"][1::2])):
            if record["format"] == "caption":
                assert user["content"] == questions.CAPTION_QUESTION
                assert assistant["content"] in sentences and assistant["content"].endswith(".")
            mcq += record["format"] == "mcq"
            short += record["format"] == "short"
    assert mcq / (mcq + short) == pytest.approx(0.75, abs=0.04)
    assert stats["formats"] == {"mcq": mcq, "short": short, "caption": 300, "open": 0}
    assert stats["turns"] == 1800


def test_answers_re_execute(curated):
    rows, _, instances_dict, _ = curated
    objects = questions.objects_by_image(instances_dict)
    checked = 0
    for row in rows:
        scene = objects[row["image_sha256"]]
        pairs = list(zip(row["conversations"][::2], row["conversations"][1::2]))
        for record, (user, assistant) in zip(curation.turn_records(row), pairs):
            if record["format"] == "caption":
                continue
            answer = questions.answer_program(record["program"], scene)
            assert answer == record["answer"]
            if record["format"] == "mcq":
                assert user["content"].endswith(questions.MCQ_SUFFIX)
                letter = assistant["content"]
                assert letter in schema.OPTION_LETTERS[:len(record["options"])]
                assert record["options"][schema.OPTION_LETTERS.index(letter)] == answer
                assert f"{letter}. {answer}" in user["content"]
            else:
                assert user["content"] == questions.question_text(record["program"])
                assert assistant["content"] == questions.statement(record["program"], answer)
                assert assistant["content"].endswith(".") and len(assistant["content"].split()) > 2
            checked += 1
    assert checked == 1500


def test_deterministic_ids(tmp_path):
    instances, captions, _, _ = coco_world(tmp_path, 40)
    settings = params([coco_source(instances, captions)])
    first, _ = curate(settings, data_root=tmp_path)
    second, _ = curate(settings, data_root=tmp_path)
    assert first == second
    assert len({row["sample_id"] for row in first}) == 40
    assert all(row["sample_id"] == schema.make_sample_id(row["image_sha256"], row["conversations"], "seed")
               for row in first)
    other, _ = curate({**settings, "seed": 1}, data_root=tmp_path)
    assert {row["sample_id"] for row in other}.isdisjoint({row["sample_id"] for row in first})


def test_families_that_cannot_be_asked_are_redrawn(tmp_path):
    """Plain COCO (no attributes): colour, shape and size can't be asked; the turns still fill up."""
    instances, _, instances_dict, _ = coco_world(tmp_path, 30)
    for ann in instances_dict["annotations"]:
        del ann["attributes"]
    for image in instances_dict["images"]:
        del image["sha256"]
        payload = f"image {image['id']}".encode()
        (tmp_path / image["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / image["file_name"]).write_bytes(payload)
    instances.write_text(json.dumps(instances_dict))
    rows, stats = curate(params([coco_source(instances)]), data_root=tmp_path)
    assert stats["samples"] == 30 and stats["turns"] == 180
    assert stats["families"]["colour"] == stats["families"]["shape"] == stats["families"]["size"] == 0
    assert stats["families"]["existence"] > 0
    row = rows[0]
    assert row["image"] == instances_dict["images"][0]["file_name"]
    assert row["image_sha256"] == sha256_file(tmp_path / row["image"])  # computed from the file


def test_missing_image_file_without_sha(tmp_path):
    instances, _, instances_dict, _ = coco_world(tmp_path, 3)
    del instances_dict["images"][1]["sha256"]
    instances.write_text(json.dumps(instances_dict))
    with pytest.raises(FileNotFoundError, match=r"instances\.json: images\[1\] \(id 2\): field 'image'"):
        curate(params([coco_source(instances)]), data_root=tmp_path)


def test_caption_for_unknown_image(tmp_path):
    instances, captions, _, captions_dict = coco_world(tmp_path, 3)
    del captions_dict["images"]
    captions_dict["annotations"][4]["image_id"] = 99
    captions.write_text(json.dumps(captions_dict))
    with pytest.raises(ValueError, match=r"captions\.json: annotations\[4\] .*image_id 99"):
        curate(params([coco_source(instances, captions)]), data_root=tmp_path)


# ---------------------------------------------------------------- LLaVA JSON

def llava_setup(tmp_path, records):
    data_root = tmp_path / "data"
    folder = data_root / "llava"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"image a")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "b.png").write_bytes(b"image b")
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    return data_root, {"kind": "llava", "path": str(path), "image_folder": str(folder)}


GOOD = [
    {"id": "r0", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A shape."},
        {"from": "human", "value": "Which colour?"}, {"from": "gpt", "value": "It is red."}]},
    {"id": "r1", "image": "../../elsewhere/b.png", "conversations": [
        {"from": "human", "value": "Describe it. <image>"}, {"from": "gpt", "value": "A blue square."}]},
]


def test_llava_records(tmp_path):
    data_root, source = llava_setup(tmp_path, GOOD)
    rows, stats = curate(params([source]), data_root=data_root)
    first, second = rows
    assert first["image"] == "llava/a.png"
    assert first["image_sha256"] == sha256_file(data_root / "llava" / "a.png")
    assert first["conversations"] == [
        {"role": "user", "content": "What is shown?"}, {"role": "assistant", "content": "A shape."},
        {"role": "user", "content": "Which colour?"}, {"role": "assistant", "content": "It is red."}]
    assert second["image"] == str((tmp_path / "elsewhere" / "b.png").resolve())
    assert second["conversations"][0]["content"] == "Describe it."
    assert first["origin"] == "seed" and first["provenance"]["backend"] == "llava"
    assert first["provenance"]["source"] == source["path"]
    assert stats["turns"] == 3 and stats["formats"]["open"] == 3
    assert stats["sources"][source["path"]] == {"kind": "llava", "samples": 2, "turns": 3, "duplicates": 0}
    validate(rows, "samples", source="seed", iteration=0, data_root=data_root)


def _broken(change):
    records = json.loads(json.dumps(GOOD))
    change(records[1])
    return records


@pytest.mark.parametrize(("change", "error", "message"), [
    (lambda r: r.update(image="missing.png"), FileNotFoundError, r"field 'image' 'missing\.png'.*not found"),
    (lambda r: r.pop("image"), ValueError, r"field 'image' must be a non-empty path"),
    (lambda r: r["conversations"][1].update({"from": "bot"}), ValueError,
     r"conversations\[1\]: field 'from' must be one of human, gpt, system, got 'bot'"),
    (lambda r: r.update(conversations=[]), ValueError, r"field 'conversations' must be a non-empty list"),
    (lambda r: r["conversations"][0].update(value=None), ValueError,
     r"conversations\[0\]: field 'value' must be a string"),
    (lambda r: r["conversations"][0].update(value="<image>\n"), ValueError,
     r"conversations\[0\]: field 'value' is empty"),
    (lambda r: r["conversations"].reverse(), ValueError, r"must alternate human/gpt"),
    (lambda r: r["conversations"].pop(), ValueError, r"needs a human turn and a gpt answer"),
])
def test_llava_errors_name_file_record_and_field(tmp_path, change, error, message):
    data_root, source = llava_setup(tmp_path, _broken(change))
    with pytest.raises(error) as info:
        curate(params([source]), data_root=data_root)
    text = str(info.value)
    assert text.startswith(f"{source['path']}: record 1 (id 'r1')")
    assert re.search(message, text), text


def test_llava_file_not_a_list(tmp_path):
    data_root, source = llava_setup(tmp_path, {"id": "x"})
    with pytest.raises(ValueError, match=r"llava\.json: LLaVA JSON must be a list"):
        curate(params([source]), data_root=data_root)


# ---------------------------------------------------------------- params

@pytest.mark.parametrize(("settings", "message"), [
    ({"sources": [{"kind": "sharegpt", "path": "x.json"}]},
     r"curate\.sources\.0: Input tag 'sharegpt' .* expected tags: 'coco', 'llava'"),
    ({"sources": [{"kind": "coco"}]}, r"curate\.sources\.0\.coco\.instances: Field required"),
    ({"sources": [{"kind": "llava", "path": "x.json"}]}, r"curate\.sources\.0\.llava\.image_folder: Field required"),
    ({"sources": []}, r"curate\.sources: List should have at least 1 item"),
    ({"family_weights": {"colour": -1.0, "count": 1.0}},
     r"curate\.family_weights: .*must be non-negative, got \{'colour': -1\.0\}"),
    ({"family_weights": {"colour": 0.0, "count": 0}}, r"curate\.family_weights: .*no family has a positive weight"),
    ({"family_weights": {"color": 1.0}},
     r"curate\.family_weights: .*unknown family\(ies\) \['color'\] \(known: colour, shape, size, existence"),
    ({"family_weights": [1, 2]}, r"curate\.family_weights: Input should be a valid dictionary"),
    ({"mcq_ratio": 1.5}, r"curate\.mcq_ratio: Input should be less than or equal to 1 \(got 1\.5\)"),
    ({"turns_per_image": 0}, r"curate\.turns_per_image: Input should be greater than or equal to 1 \(got 0\)"),
    ({"turn_per_image": 3}, r"curate\.turn_per_image: Extra inputs are not permitted"),
])
def test_params_errors(settings, message):
    section = {"sources": [{"kind": "coco", "instances": "i.json"}], **settings}
    with pytest.raises(ValueError, match=r"^params\.yaml: 1 invalid parameter\(s\):\n  " + message):
        curate({"seed": 0, "curate": section}, data_root="data")


# ---------------------------------------------------------------- validation and the stage

@pytest.fixture()
def rendered(tmp_path, monkeypatch):
    """A real (small) world under tmp_path/data, params.yaml pointing at it, cwd = tmp_path."""
    world.build(world.WorldConfig(splits={"seed": 12}), 5, tmp_path / "data" / "images", tmp_path / "data" / "world")
    monkeypatch.chdir(tmp_path)
    settings = params([coco_source("data/world/instances_seed.json", "data/world/captions_seed.json")])
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    return settings


def test_validation_passes_and_catches_a_bad_hash(rendered):
    rows, _ = curate(rendered, data_root="data")
    assert len(rows) == 12
    validate(rows, "samples", source="data/seed/samples.parquet", iteration=0, data_root="data")
    rows[3]["image_sha256"] = "0" * 64
    with pytest.raises(ValidationError, match=rows[3]["sample_id"]):
        validate(rows, "samples", source="data/seed/samples.parquet", iteration=0, data_root="data")


def test_stage_writes_samples_and_metrics(rendered, capsys):
    runpy.run_path(str(REPO / "stages" / "curate.py"), run_name="__main__")
    rows = schema.read_samples("data/seed/samples.parquet")
    assert len(rows) == 12 and all(len(row["conversations"]) == 12 for row in rows)
    stats = json.loads(Path("metrics/curate.json").read_text())
    assert stats["samples"] == 12 and stats["turns"] == 72
    assert stats["formats"]["caption"] == 12
    assert sum(stats["families"].values()) == 60
    assert stats["sources"]["data/world/instances_seed.json"]["samples"] == 12
    assert capsys.readouterr().out.startswith("curate: 12 samples, 72 turns")
