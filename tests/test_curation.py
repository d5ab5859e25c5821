import json
import re
import runpy
from pathlib import Path

import pytest
from PIL import Image

from mmloop import config, questions, schema, sources
from mmloop.io import sha256_bytes, sha256_file
from mmloop.loop import curation
from mmloop.store import ImageStore, MissingImage, read_index
from mmloop.validation import ValidationError, validate
from mmloop.world import scenes as world

WEIGHTS = {"colour": 0.24, "shape": 0.24, "size": 0.24, "existence": 0.24, "count": 0.02, "spatial": 0.02}
REPO = Path(__file__).resolve().parents[1]


def coco_world(folder: Path, images: int, seed: int = 1):
    """COCO instances/captions of `images` procedural scenes, rendered under `folder` (the data root)."""
    world_config = world.WorldConfig(splits={"seed": images, "pool": 0, "bench": 0})
    scenes = world.generate(world_config, seed)["seed"]
    shas = []
    for scene in scenes:
        data = world.render(scene, world_config)
        shas.append(sha256_bytes(data))
        (folder / world.image_path(shas[-1])).parent.mkdir(parents=True, exist_ok=True)
        (folder / world.image_path(shas[-1])).write_bytes(data)
    instances, captions = world.coco_files("seed", scenes, shas, world_config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(instances))
    (folder / "captions.json").write_text(json.dumps(captions))
    return folder / "instances.json", folder / "captions.json", instances, captions


def params(sources, **settings):
    # caption_turns 2: the world's two captions per image, both used
    section = {"sources": sources, "turns_per_image": 6, "caption_turns": 2, "mcq_ratio": 0.75,
               "family_weights": dict(WEIGHTS)}
    section.update(settings)
    return {"seed": 0, "answer_format": "letter", "curate": section}  # letter replies: the checks read them


def build_store(parsed: config.Params, data_root) -> None:
    """What the store stage does: import every image the curate sources name into data_root/store."""
    store = ImageStore(Path(data_root) / "store", prefix="store")
    for source in parsed.curate.sources:
        for ref in sources.image_references(source, data_root):
            store.add(ref.path, ref.where)
    store.write_index()


def curate(settings, data_root, store=True):
    """The store stage (unless `store` is False), then the curate stage's call: typed params, the stage's seed."""
    parsed = config.parse(settings)
    if store:
        build_store(parsed, data_root)
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
    assert len(families) == 300 * 4  # six turns per image, two of them the image's two captions
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
    rows, stats, instances_dict, captions_dict = curated
    sha_of = {image["id"]: image["sha256"] for image in instances_dict["images"]}
    sentences: dict[str, set[str]] = {}
    for caption in captions_dict["annotations"]:
        sentences.setdefault(sha_of[caption["image_id"]], set()).add(curation.sentence(caption["caption"]))
    mcq = short = 0
    for row in rows:
        assert row["image"] == f"store/{row['image_sha256'][:2]}/{row['image_sha256']}.png"
        assert row["origin"] == "seed" and row["iteration"] == 0
        assert row["format"] == "conversation" and row["category"] == schema.MIXED_CATEGORY
        roles = [turn["role"] for turn in row["conversations"]]
        assert roles == ["user", "assistant"] * 6
        records = curation.turn_records(row)
        assert [record["turn"] for record in records] == list(range(6))
        assert [record["format"] for record in records].count("caption") == 2
        user_turns = [turn["content"] for turn in row["conversations"][::2]]
        assert len(set(user_turns)) == len(user_turns), "a question is repeated on one image"
        captions = set()
        for record, (user, assistant) in zip(records, zip(row["conversations"][::2], row["conversations"][1::2])):
            if record["format"] == "caption":
                assert user["content"] in curation.CAPTION_PROMPTS[:2]
                assert assistant["content"].endswith(".")
                captions.add(assistant["content"])
            mcq += record["format"] == "mcq"
            short += record["format"] == "short"
        assert captions == sentences[row["image_sha256"]]  # every caption of the image, once each
    assert mcq / (mcq + short) == pytest.approx(0.75, abs=0.04)
    assert stats["formats"] == {"mcq": mcq, "short": short, "caption": 600, "open": 0}
    assert stats["warnings"] == []
    assert stats["turns"] == 1800


def test_answers_re_execute(curated):
    rows, _, instances_dict, _ = curated
    objects = sources.coco_objects(instances_dict)
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
    assert checked == 1200


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
    """Plain COCO (no attributes, no sha256): colour, shape and size can't be asked; the turns still
    fill up, and the metrics warn that the weights ask for them."""
    instances, _, instances_dict, _ = coco_world(tmp_path, 30)
    for ann in instances_dict["annotations"]:
        del ann["attributes"]
    for image in instances_dict["images"]:
        del image["sha256"]
    instances.write_text(json.dumps(instances_dict))
    rows, stats = curate(params([coco_source(instances)]), data_root=tmp_path)
    assert stats["samples"] == 30 and stats["turns"] == 180
    assert stats["families"]["colour"] == stats["families"]["shape"] == stats["families"]["size"] == 0
    assert stats["families"]["existence"] > 0
    assert [warning.split(" ")[2] for warning in stats["warnings"]] == ["colour", "shape", "size"]
    assert "need the per-object attribute 'colour'" in stats["warnings"][0]
    row = rows[0]
    stored = read_index(tmp_path).lookup(tmp_path / instances_dict["images"][0]["file_name"], "")
    assert row["image"] == stored.path and row["image"].startswith("store/")
    assert row["image_sha256"] == stored.sha256 == sha256_file(tmp_path / row["image"])


def test_image_not_in_the_store(tmp_path):
    instances, _, instances_dict, _ = coco_world(tmp_path, 3)
    settings = params([coco_source(instances)])
    curate(settings, data_root=tmp_path)  # stores the three images
    extra = dict(instances_dict["images"][0], id=4, file_name="images/new.png")
    (tmp_path / "images" / "new.png").write_bytes((tmp_path / instances_dict["images"][0]["file_name"]).read_bytes())
    instances.write_text(json.dumps({**instances_dict, "images": [*instances_dict["images"], extra]}))
    with pytest.raises(MissingImage, match=r"instances\.json: images\[3\] \(id 4\): field 'file_name': \S+new\.png "
                                           r"is not in the image store .*run the store stage"):
        curate(settings, data_root=tmp_path, store=False)


def test_caption_turns_bounds_the_caption_turns_per_image(tmp_path):
    instances, captions, _, captions_dict = coco_world(tmp_path, 20)
    rows, stats = curate(params([coco_source(instances, captions)], caption_turns=1), data_root=tmp_path)
    by_image: dict[int, set[str]] = {}
    for caption in captions_dict["annotations"]:
        by_image.setdefault(caption["image_id"], set()).add(curation.sentence(caption["caption"]))
    every = set().union(*by_image.values())
    for row in rows:
        answers = [answer["content"] for question, answer in zip(row["conversations"][::2], row["conversations"][1::2])
                   if question["content"] in curation.CAPTION_PROMPTS]
        assert len(answers) == 1 and answers[0] in every  # one of the image's two captions
    assert stats["formats"]["caption"] == 20 and stats["turns"] == 120


def test_caption_for_unknown_image(tmp_path):
    instances, captions, _, captions_dict = coco_world(tmp_path, 3)
    del captions_dict["images"]
    captions_dict["annotations"][4]["image_id"] = 99
    captions.write_text(json.dumps(captions_dict))
    with pytest.raises(ValueError, match=r"captions\.json: annotations\[4\] \(id 5\): field 'image_id' 99 matches "
                                         r"no image of the instances file \(by id\)$"):
        curate(params([coco_source(instances, captions)]), data_root=tmp_path)


def test_the_world_captions_match_through_their_images(tmp_path):
    """The world's captions file lists its images: captions are matched by sha256 / file_name, not id."""
    instances, captions, _, captions_dict = coco_world(tmp_path, 3)
    for image in captions_dict["images"]:
        image["id"] += 100
    for row in captions_dict["annotations"]:
        row["image_id"] += 100
    captions.write_text(json.dumps(captions_dict))
    rows, stats = curate(params([coco_source(instances, captions)]), data_root=tmp_path)
    assert stats["formats"]["caption"] == 6
    assert json.loads(rows[2]["provenance"]["source"]) == {"files": [str(instances), str(captions)], "ids": [3],
                                                          "records": [2]}


# ---------------------------------------------------------------- LLaVA JSON

def llava_setup(tmp_path, records):
    data_root = tmp_path / "data"
    folder = data_root / "llava"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / "a.png")
    Image.new("RGB", (32, 32), (0, 0, 200)).save(folder / "b.png")
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records))
    return data_root, {"kind": "llava", "path": str(path), "image_folder": str(folder)}


GOOD = [
    {"id": "r0", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A shape."},
        {"from": "human", "value": "Which colour?"}, {"from": "gpt", "value": "It is red."}]},
    {"id": "r1", "image": "b.png", "conversations": [
        {"from": "human", "value": "Describe it. <image>"}, {"from": "gpt", "value": "A blue square."}]},
]


def test_llava_records(tmp_path):
    data_root, source = llava_setup(tmp_path, GOOD)
    rows, stats = curate(params([source]), data_root=data_root)
    first, second = rows
    index = read_index(data_root)
    assert first["image"] == index.lookup(data_root / "llava" / "a.png", "").path
    assert first["image_sha256"] == sha256_file(data_root / "llava" / "a.png")
    assert first["image_sha256"] == sha256_file(data_root / first["image"])
    assert first["conversations"] == [
        {"role": "user", "content": "What is shown?"}, {"role": "assistant", "content": "A shape."},
        {"role": "user", "content": "Which colour?"}, {"role": "assistant", "content": "It is red."}]
    assert second["image"] == index.lookup(data_root / "llava" / "b.png", "").path
    assert second["conversations"][0]["content"] == "Describe it."
    assert first["origin"] == "seed" and first["provenance"]["backend"] == "llava"
    assert json.loads(first["provenance"]["source"]) == {"files": [source["path"]], "ids": ["r0"], "records": [0]}
    assert stats["turns"] == 3 and stats["formats"]["open"] == 3
    assert stats["sources"][source["path"]] == {"kind": "llava", "records": 2, "images": 2, "samples": 2, "turns": 3,
                                                "duplicates": 0, "merged": 0, "skipped": {}}
    assert stats["warnings"] == []
    validate(rows, "samples", source="seed", iteration=0, data_root=data_root)


def _broken(change):
    records = json.loads(json.dumps(GOOD))
    change(records[1])
    return records


@pytest.mark.parametrize(("change", "error", "message"), [
    (lambda r: r.update(image="missing.png"), FileNotFoundError,
     r"field 'image': \S+missing\.png: image file not found"),
    (lambda r: r.update(image="../../elsewhere/b.png"), ValueError,
     r"field 'image': '\.\./\.\./elsewhere/b\.png' resolves to \S+, outside"),
    (lambda r: r.pop("image"), ValueError, r"field 'image' must be a non-empty path"),
    (lambda r: r["conversations"][1].update({"from": "bot"}), ValueError,
     r"field 'conversations\[1\]': field 'from' must be one of human, user, gpt, assistant, system, got 'bot'"),
    (lambda r: r.update(conversations=[]), ValueError, r"field 'conversations' must be a non-empty list"),
    (lambda r: r["conversations"][0].update(value=None), ValueError,
     r"field 'conversations\[0\]': field 'value' must be a string, got null"),
    (lambda r: r["conversations"][0].update(value="<image>\n"), ValueError,
     r"field 'conversations\[0\]': field 'value' has no visible text"),
    (lambda r: r["conversations"].reverse(), ValueError, r"turns alternate user/assistant"),
    (lambda r: r["conversations"].pop(), ValueError, r"field 'conversations' ends on a user turn"),
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
    with pytest.raises(ValueError, match=r"llava\.json: expected a list of records, got object$"):
        curate(params([source]), data_root=data_root)


# ---------------------------------------------------------------- params

@pytest.mark.parametrize(("settings", "message"), [
    ({"sources": [{"kind": "parquet", "path": "x.json"}]},
     r"curate\.sources\.0: Input tag 'parquet' .* expected tags: 'coco', 'llava', 'sharegpt'"),
    ({"sources": [{"kind": "sharegpt", "path": "x.json"}]},
     r"curate\.sources\.0\.sharegpt\.image_folder: Field required"),
    ({"unusable": "drop"}, r"curate\.unusable: Input should be 'error' or 'skip'"),
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
    world.build(world.WorldConfig(splits={"seed": 12, "pool": 0, "bench": 0}), 5, tmp_path / "data" / "images",
                tmp_path / "data" / "world")
    monkeypatch.chdir(tmp_path)
    settings = params([coco_source("data/world/instances_seed.json", "data/world/captions_seed.json")])
    build_store(config.parse(settings), "data")
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    return settings


def test_validation_passes_and_catches_a_bad_hash(rendered):
    rows, _ = curate(rendered, data_root="data", store=False)
    assert len(rows) == 12
    validate(rows, "samples", source="data/seed/samples.parquet", iteration=0, data_root="data")
    rows[3]["image_sha256"] = "0" * 64
    with pytest.raises(ValidationError, match=rows[3]["sample_id"]):
        validate(rows, "samples", source="data/seed/samples.parquet", iteration=0, data_root="data")


def test_stage_writes_samples_and_metrics(rendered, capsys):
    runpy.run_path(str(REPO / "stages" / "curate.py"), run_name="__main__")
    rows = schema.read_samples("data/seed/samples.parquet")
    assert len(rows) == 12 and all(len(row["conversations"]) == 12 for row in rows)
    assert all(row["image"].startswith("store/") for row in rows)
    stats = json.loads(Path("metrics/curate.json").read_text())
    assert stats["samples"] == 12 and stats["turns"] == 72
    assert stats["formats"]["caption"] == 24
    assert sum(stats["families"].values()) == 48
    assert stats["sources"]["data/world/instances_seed.json"]["samples"] == 12
    assert stats["warnings"] == []
    out = capsys.readouterr().out
    assert out.startswith("curate: 12 samples, 72 turns") and out.rstrip().endswith("0 records skipped, 0 merged")


def test_stage_publishes_nothing_on_bad_input(rendered):
    instances = json.loads(Path("data/world/instances_seed.json").read_text())
    instances["annotations"][5]["bbox"] = [60, 60, 14, 14]
    Path("data/world/instances_seed.json").write_text(json.dumps(instances))
    with pytest.raises(ValueError, match=r"^data/world/instances_seed\.json: annotations\[5\] \(id 6\): field 'bbox' "
                                         r"\[60, 60, 14, 14\] lies outside the image"):
        runpy.run_path(str(REPO / "stages" / "curate.py"), run_name="__main__")
    assert not Path("data/seed/samples.parquet").exists() and not Path("metrics/curate.json").exists()
