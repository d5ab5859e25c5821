"""bench: held-out bench scenes (data/world/instances_bench.json) -> data/bench/bench.tsv (MMBench format)."""

from mmloop.benchmark import family_counts, make_items, write_mmbench
from mmloop.io import read_json
from mmloop.params import load_params, stage_seed

DATA_ROOT = "data"
INSTANCES = "data/world/instances_bench.json"
OUTPUT = "data/bench/bench.tsv"


def main() -> None:
    params = load_params()
    section = params.get("bench") or {}
    world = params.get("world") or {}
    vocabularies = {key: world[key] for key in ("colours", "shapes") if world.get(key)}
    items = make_items(read_json(INSTANCES), int(section.get("items_per_family", 400)), stage_seed(params, "bench"),
                       data_root=DATA_ROOT, max_count=int(world.get("max_objects", 4)), source=INSTANCES,
                       **vocabularies)
    write_mmbench(items, OUTPUT)
    counts = ", ".join(f"{family} {count}" for family, count in family_counts(items).items())
    print(f"bench {section.get('name', 'bench')}: {len(items)} items in {OUTPUT} ({counts})")


if __name__ == "__main__":
    main()
