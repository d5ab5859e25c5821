"""world: render the procedural scenes -> data/images (content-addressed), data/world (COCO JSON per split)."""

from mmloop import config, stage
from mmloop.io import atomic_path, write_json
from mmloop.world import scenes

PARAMS = ("seed", "world")


def main() -> None:
    params = stage.begin("world", PARAMS)
    # Both folders are published together or not at all.
    with atomic_path("data/images", directory=True) as images, atomic_path("data/world", directory=True) as coco:
        stats = scenes.build(params.world, config.stage_seed(params.seed, "world"), images, coco)
    write_json("metrics/world.json", stats)
    splits = ", ".join(f"{name} {entry['images']}" for name, entry in stats["splits"].items())
    print(f"world: {stats['images']} images, {stats['objects']} objects ({splits})")


if __name__ == "__main__":
    main()
