"""bench: held-out bench scenes (data/world/instances_bench.json) -> data/bench/bench.tsv (MMBench format)."""

from mmloop import config, stage
from mmloop.io import read_json
from mmloop.eval.benchmarks.mmbench import write_mmbench
from mmloop.world.benchmark import family_counts, make_items

PARAMS = ("seed", "bench", "world.colours", "world.shapes", "world.max_objects")
DATA_ROOT = "data"
INSTANCES = "data/world/instances_bench.json"
OUTPUT = "data/bench/bench.tsv"
INPUTS = ("data/world", "data/images")


def main() -> None:
    params = stage.begin("bench", PARAMS)
    world = params.world
    items = make_items(read_json(INSTANCES), params.bench.items_per_family, config.stage_seed(params.seed, "bench"),
                       data_root=DATA_ROOT, max_count=world.max_objects, source=INSTANCES,
                       colours=world.colours, shapes=world.shapes)
    write_mmbench(items, OUTPUT)
    counts = ", ".join(f"{family} {count}" for family, count in family_counts(items).items())
    print(f"bench {params.bench.name}: {len(items)} items in {OUTPUT} ({counts})")


if __name__ == "__main__":
    main()
