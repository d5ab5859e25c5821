"""world: render the procedural scenes -> data/images (content-addressed), data/world (COCO JSON per split)."""

from mmloop import world
from mmloop.io import atomic_path, write_json
from mmloop.params import load_params, stage_seed


def main() -> None:
    params = load_params()
    config = world.WorldConfig.from_params(params.get("world") or {})
    # Both folders are published together or not at all.
    with atomic_path("data/images", directory=True) as images, atomic_path("data/world", directory=True) as coco:
        stats = world.build(config, stage_seed(params, "world"), images, coco)
    write_json("metrics/world.json", stats)
    splits = ", ".join(f"{name} {entry['images']}" for name, entry in stats["splits"].items())
    print(f"world: {stats['images']} images, {stats['objects']} objects ({splits})")


if __name__ == "__main__":
    main()
