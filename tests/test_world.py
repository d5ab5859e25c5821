import json

import pytest

from mmloop import config, questions, sources
from mmloop.io import sha256_file
from mmloop.world import scenes as world

SMALL = world.WorldConfig(splits={"seed": 40, "pool": 30, "bench": 20})


def test_scenes_are_distinct_across_splits_and_seeded():
    scenes = world.generate(SMALL, seed=3)
    assert {split: len(items) for split, items in scenes.items()} == {"seed": 40, "pool": 30, "bench": 20}
    signatures = [world._signature(scene) for items in scenes.values() for scene in items]
    assert len(set(signatures)) == len(signatures)
    assert world.generate(SMALL, seed=3) == scenes
    assert world.generate(SMALL, seed=4) != scenes
    for scene in scenes["seed"]:
        cells = [(obj["row"], obj["col"]) for obj in scene]
        assert len(set(cells)) == len(cells) and 1 <= len(scene) <= SMALL.max_objects


def test_objects_sit_centred_in_patch_aligned_cells():
    large = world.bbox({"size": "large", "row": 1, "col": 2}, SMALL)
    small = world.bbox({"size": "small", "row": 1, "col": 2}, SMALL)
    for x, y, w, h in (large, small):
        assert (x + w / 2, y + h / 2) == (2 * 16 + 8, 1 * 16 + 8)
        assert 32 <= x and x + w <= 48 and 16 <= y and y + h <= 32
    assert large[2] > 1.5 * small[2]


def test_render_draws_each_object_in_its_colour():
    from io import BytesIO

    from PIL import Image

    objects = [{"shape": "square", "colour": "red", "size": "large", "row": 0, "col": 0},
               {"shape": "circle", "colour": "blue", "size": "small", "row": 3, "col": 3}]
    png = world.render(objects, SMALL)
    assert png == world.render(objects, SMALL)
    image = Image.open(BytesIO(png)).convert("RGB")
    assert image.getpixel((8, 8)) == world.COLOUR_RGB["red"]
    x, y, _, _ = world.bbox(objects[0], SMALL)
    assert image.getpixel((int(x), 8)) == image.getpixel((8, int(y))) == world.OUTLINE
    assert image.getpixel((56, 56)) == world.COLOUR_RGB["blue"]
    assert image.getpixel((8, 56)) == world.BACKGROUND


def test_build_writes_content_addressed_images_and_coco(tmp_path):
    stats = world.build(SMALL, 0, tmp_path / "images", tmp_path / "world")
    assert stats["images"] == 90
    instances = json.loads((tmp_path / "world" / "instances_bench.json").read_text())
    captions = json.loads((tmp_path / "world" / "captions_bench.json").read_text())
    assert len(instances["images"]) == 20 and len(captions["annotations"]) == 40
    for image in instances["images"]:
        path = tmp_path / image["file_name"]
        assert image["file_name"] == world.image_path(image["sha256"])
        assert sha256_file(path) == image["sha256"]
    objects = sources.coco_objects(instances)
    first = instances["images"][0]
    assert len(objects[first["sha256"]]) == sum(a["image_id"] == first["id"] for a in instances["annotations"])
    caption = next(c["caption"] for c in captions["annotations"] if c["image_id"] == first["id"])
    for obj in objects[first["sha256"]]:
        assert f"{obj.size} {obj.colour} {obj.shape}" in caption


def test_every_family_can_be_asked_on_the_world():
    import random

    rng = random.Random(0)
    asked = {family: 0 for family in questions.FAMILIES}
    for scene in world.generate(SMALL, seed=1)["seed"]:
        objects = [questions.SceneObject(id=i, shape=o["shape"], bbox=world.bbox(o, SMALL), colour=o["colour"],
                                         size=o["size"], row=o["row"], col=o["col"]) for i, o in enumerate(scene)]
        for family in questions.FAMILIES:
            asked[family] += questions.make_question(family, objects, rng) is not None
    assert all(count > 5 for count in asked.values()), asked


def test_bad_params_name_the_key():
    with pytest.raises(ValueError, match=r"world: .*colours must be a non-empty subset .*got \['red', 'mauve'\]"):
        config.parse({"world": {"colours": ["red", "mauve"]}})
    with pytest.raises(ValueError, match=r"world\.colors: Extra inputs are not permitted"):
        config.parse({"world": {"colors": ["red"]}})
    with pytest.raises(ValueError, match=r"world: .*image_size \(60\) must be a multiple of grid \(8\)"):
        config.parse({"world": {"image_size": 60, "grid": 8}})
