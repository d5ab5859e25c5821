"""The procedural scene world: seeded scenes of shapes, rendered once, annotated in COCO format.

A scene puts 1..max_objects objects in distinct cells of a grid x grid layout; each
object has a shape, a colour and a size, sits centred in its cell and is drawn with a
white outline. With a 64-px
image and a 4x4 grid every cell is one 16-px patch of the vision tower, which is what
lets a tiny frozen ViT read each object's attributes from a single patch feature.

Images are stored content-addressed once (`images/<sha[:2]>/<sha>.png`, relative to
the data root). Every scene is distinct across all splits, so no benchmark image is
also a seed or pool image.

Per split the world writes COCO instances (boxes, categories, plus `attributes`
{colour, size, row, col} per annotation and `sha256` per image) and COCO captions.
`file_name` is the image path relative to the data root.
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.config import Splits, WorldConfig
from mmloop.io import progress, sha256_bytes

COLOUR_RGB = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230),
    "yellow": (235, 215, 40), "purple": (150, 60, 200), "orange": (245, 140, 30),
    "white": (240, 240, 240), "cyan": (40, 200, 210), "pink": (245, 140, 190), "brown": (140, 90, 40),
}
BACKGROUND = (24, 24, 24)
# Every shape gets a 1-px outline in this one colour. The outline is the same pixels whatever
# the fill, so the tiny model's frozen patch embedding (linear in the pixels) carries the shape
# apart from the colour: shape's share of that embedding's variance doubles (see the README).
OUTLINE = (255, 255, 255)
# Side of a shape as a share of its cell: large shapes nearly fill the cell, small ones half.
SIZE_FRACTION = {"small": 0.45, "large": 0.9}
SHAPES_DRAWN = ("circle", "square", "triangle", "diamond")
SPLITS = tuple(Splits.model_fields)


def random_scene(config: WorldConfig, rng: random.Random) -> list[dict[str, Any]]:
    """Objects {shape, colour, size, row, col} in distinct cells, in row-major order."""
    count = rng.randint(config.min_objects, config.max_objects)
    cells = sorted(rng.sample(range(config.grid * config.grid), count))
    return [{"shape": rng.choice(config.shapes), "colour": rng.choice(config.colours),
             "size": rng.choice(config.sizes), "row": cell // config.grid, "col": cell % config.grid}
            for cell in cells]


def bbox(obj: Mapping[str, Any], config: WorldConfig) -> tuple[float, float, float, float]:
    """COCO [x, y, w, h] of an object: a square of its size centred in its cell."""
    side = round(config.cell * SIZE_FRACTION[obj["size"]])
    x = obj["col"] * config.cell + (config.cell - side) / 2
    y = obj["row"] * config.cell + (config.cell - side) / 2
    return (float(x), float(y), float(side), float(side))


def render(objects: Sequence[Mapping[str, Any]], config: WorldConfig) -> bytes:
    """The scene as PNG bytes (deterministic for the same objects and config)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (config.image_size, config.image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x, y, w, h = bbox(obj, config)
        box = [x, y, x + w - 1, y + h - 1]
        paint = {"fill": COLOUR_RGB[obj["colour"]], "outline": OUTLINE, "width": 1}
        if obj["shape"] == "circle":
            draw.ellipse(box, **paint)
        elif obj["shape"] == "square":
            draw.rectangle(box, **paint)
        elif obj["shape"] == "triangle":
            draw.polygon([(x + (w - 1) / 2, y), (x, y + h - 1), (x + w - 1, y + h - 1)], **paint)
        else:  # diamond
            draw.polygon([(x + (w - 1) / 2, y), (x + w - 1, y + (h - 1) / 2), (x + (w - 1) / 2, y + h - 1),
                          (x, y + (h - 1) / 2)], **paint)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def image_path(sha256: str) -> str:
    """Where an image lives, relative to the data root."""
    return f"images/{sha256[:2]}/{sha256}.png"


def _position(obj: Mapping[str, Any], config: WorldConfig) -> str:
    return f"in row {obj['row'] + 1}, column {obj['col'] + 1}"


def captions(objects: Sequence[Mapping[str, Any]], config: WorldConfig) -> list[str]:
    """Two captions: the objects in reading order, and the same with their grid cells."""
    from mmloop.questions import article

    names = [article(f"{obj['size']} {obj['colour']} {obj['shape']}") for obj in objects]
    placed = [f"{name} {_position(obj, config)}" for name, obj in zip(names, objects)]
    return [_join(names), _join(placed)]


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _signature(objects: Sequence[Mapping[str, Any]]) -> tuple:
    return tuple((o["row"], o["col"], o["shape"], o["colour"], o["size"]) for o in objects)


def generate(config: WorldConfig, seed: int) -> dict[str, list[list[dict[str, Any]]]]:
    """{split: [scene, ...]}: distinct scenes, none shared between splits, from one seeded RNG."""
    rng = random.Random(seed)
    seen: set[tuple] = set()
    result: dict[str, list[list[dict[str, Any]]]] = {}
    for split in SPLITS:
        wanted = getattr(config.splits, split)
        scenes: list[list[dict[str, Any]]] = []
        attempts = 0
        while len(scenes) < wanted:
            attempts += 1
            if attempts > 50 * max(wanted, 1):
                raise ValueError(f"params.yaml: world cannot make {wanted} distinct {split!r} scenes "
                                 f"(only {len(scenes)} found); grow the grid or the vocabularies")
            scene = random_scene(config, rng)
            signature = _signature(scene)
            if signature not in seen:
                seen.add(signature)
                scenes.append(scene)
        result[split] = scenes
    return result


def coco_files(split: str, scenes: Sequence[Sequence[Mapping[str, Any]]], shas: Sequence[str],
               config: WorldConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(instances, captions) COCO dicts of one split."""
    categories = [{"id": index + 1, "name": shape, "supercategory": "shape"}
                  for index, shape in enumerate(config.shapes)]
    category_id = {entry["name"]: entry["id"] for entry in categories}
    images, instances, caption_rows = [], [], []
    for image_id, (scene, sha) in enumerate(zip(scenes, shas), start=1):
        images.append({"id": image_id, "file_name": image_path(sha), "width": config.image_size,
                       "height": config.image_size, "sha256": sha})
        for obj in scene:
            x, y, w, h = bbox(obj, config)
            instances.append({
                "id": len(instances) + 1, "image_id": image_id, "category_id": category_id[obj["shape"]],
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                "attributes": {"colour": obj["colour"], "size": obj["size"], "row": obj["row"], "col": obj["col"]},
            })
        for text in captions(scene, config):
            caption_rows.append({"id": len(caption_rows) + 1, "image_id": image_id, "caption": text})
    info = {"description": f"mmloop procedural world, split {split}", "split": split}
    return ({"info": info, "images": images, "annotations": instances, "categories": categories},
            {"info": info, "images": images, "annotations": caption_rows})


def build(config: WorldConfig, seed: int, images_dir: str | Path, world_dir: str | Path) -> dict[str, Any]:
    """Render every split into `images_dir` (content-addressed) and write the COCO files into
    `world_dir` as instances_<split>.json / captions_<split>.json. Returns stats."""
    from mmloop.io import write_json

    images_dir, world_dir = Path(images_dir), Path(world_dir)
    stats: dict[str, Any] = {"images": 0, "objects": 0, "splits": {}}
    for split, scenes in generate(config, seed).items():
        shas = []
        for scene in progress(scenes, desc=f"world {split}", unit="img"):
            data = render(scene, config)
            sha = sha256_bytes(data)
            target = images_dir / image_path(sha).split("/", 1)[1]
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            shas.append(sha)
        instances, caption_file = coco_files(split, scenes, shas, config)
        write_json(world_dir / f"instances_{split}.json", instances)
        write_json(world_dir / f"captions_{split}.json", caption_file)
        counts = [len(scene) for scene in scenes]
        stats["splits"][split] = {"images": len(scenes), "objects": sum(counts),
                                  "objects_per_image": {str(k): counts.count(k) for k in sorted(set(counts))}}
        stats["images"] += len(scenes)
        stats["objects"] += sum(counts)
    return stats
