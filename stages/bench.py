"""bench: the loop's benchmark -> data/bench/bench.json (the manifest the evaluate and sample stages load).

With params `bench.source` null: held-out bench scenes (data/world/instances_bench.json) ->
data/bench/bench.tsv (MMBench format), the embedded world's benchmark. Otherwise the user's
file (any format `mmloop eval` reads: MMBench TSV, POPE, MME, SEED-Bench, A-OKVQA, JSONL) is
read and checked here, at the door, and the manifest names it.
"""

from mmloop import config, stage
from mmloop.eval.benchmarks import FORMATS
from mmloop.eval.benchmarks.mmbench import write_mmbench
from mmloop.eval.manifest import MANIFEST, load_source, write_manifest
from mmloop.io import read_json
from mmloop.world.benchmark import family_counts, make_items

PARAMS = ("seed", "bench", "world.colours", "world.shapes", "world.max_objects")
DATA_ROOT = "data"
INSTANCES = "data/world/instances_bench.json"
OUTPUT = "data/bench/bench.tsv"
# Read only when bench.source is null; DVC deps are static, so they stay declared.
INPUTS = ("data/world", "data/images")


def param_deps(params: config.Params) -> list[str]:
    """The benchmark file and image folder the params name: editing one makes the stage stale."""
    return params.bench.files


def world_benchmark(params: config.StageParams) -> None:
    world = params.world
    items = make_items(read_json(INSTANCES), params.bench.items_per_family, config.stage_seed(params.seed, "bench"),
                       data_root=DATA_ROOT, max_count=world.max_objects, source=INSTANCES,
                       colours=world.colours, shapes=world.shapes)
    write_mmbench(items, OUTPUT)
    write_manifest(MANIFEST, items, format="mmbench", file=OUTPUT)
    counts = ", ".join(f"{family} {count}" for family, count in family_counts(items).items())
    print(f"bench {params.bench.name}: {len(items)} items in {OUTPUT} ({counts})")


def user_benchmark(params: config.StageParams) -> None:
    bench = params.bench
    if bench.format is not None and bench.format not in FORMATS:
        raise SystemExit(f"bench: params bench.format: unknown benchmark format {bench.format!r} "
                         f"(the formats: {', '.join(FORMATS)}; null guesses it from the file)")
    try:
        items, format = load_source(bench.source, bench.format, image_dir=bench.image_dir)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"bench: the benchmark of params bench.source ({bench.source}) cannot be used: "
                         f"{err}") from None
    written = write_manifest(MANIFEST, items, format=format, file=bench.source, image_dir=bench.image_dir)
    counts = ", ".join(f"{category} {count}" for category, count in written["categories"].items())
    print(f"bench {bench.name}: {len(items)} {format} items in {bench.source} ({counts})")


def main() -> None:
    params = stage.begin("bench", PARAMS, param_deps=param_deps)
    if params.bench.source is None:
        world_benchmark(params)
    else:
        user_benchmark(params)


if __name__ == "__main__":
    main()
