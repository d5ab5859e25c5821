"""sample ITER PREV: Adaptive Bad-case Sampling -> data/iter=ITER/queries.parquet, metrics/sample/iter=ITER.json.

Reads the previous model's evaluation (predictions and bad cases), embeds the unlabeled
pool (params `pool`, through the image store) and the bad-case images with CLIP, and picks
one pool image per query.
"""

import sys
import time
from pathlib import Path

from mmloop import config, sources, stage
from mmloop.eval.manifest import MANIFEST
from mmloop.io import read_json, write_json
from mmloop.loop import sampling
from mmloop.models.clip import ClipScorer
from mmloop.schema import read_samples, write_samples
from mmloop.store import read_index
from mmloop.validation import validate

PARAMS = ("seed", "loop.seed", "sample", "pool", "clip.pretrained", "clip.threads")
DATA_ROOT = "data"
BENCH_INSTANCES = "data/world/instances_bench.json"


def inputs(iteration: str, prev: str) -> list[str]:
    return [f"data/iter={prev}/eval", "data/bench", "data/world", "data/store", "models/clip"]


def param_deps(params: config.Params) -> list[str]:
    """The pool the params name, and the benchmark file (bad cases' images may come from it)."""
    return list(dict.fromkeys([*params.pool.files, *params.bench.files]))


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python stages/sample.py ITERATION PREVIOUS_ITERATION")
    name, prev = argv
    params = stage.begin(f"sample@{name}", PARAMS, param_deps=param_deps, preload=["open_clip", "great_expectations"])
    predictions_path = f"{DATA_ROOT}/iter={prev}/eval/predictions.parquet"
    badcases_path = f"{DATA_ROOT}/iter={prev}/eval/badcases.parquet"
    output = f"{DATA_ROOT}/iter={name}/queries.parquet"
    predictions = read_samples(predictions_path)
    badcases = read_samples(badcases_path)
    index = read_index(DATA_ROOT)
    pool = sources.pool_images(params.pool, DATA_ROOT, index)
    pool_source = params.pool.instances if params.pool.kind == "coco" else params.pool.image_folder

    started = time.perf_counter()
    scorer = ClipScorer.selected(params.clip.pretrained, threads=params.clip.threads, root=DATA_ROOT)
    pool_embeddings = scorer.embed_images([row["image"] for row in pool], desc="clip pool")
    images = sampling.badcase_images(badcases, manifest=MANIFEST, source=badcases_path)
    ids = sorted(images)
    badcase_embeddings = dict(zip(ids, scorer.embed_images([images[i] for i in ids], desc="clip bad cases")))
    embed_s = time.perf_counter() - started

    records, summary = sampling.select_queries(
        predictions, badcases, pool, pool_embeddings, lambda case: badcase_embeddings[case["sample_id"]],
        config=params.sample, seed=config.stage_seed(params.seed, "sample", name, params.loop.seed),
        iteration=int(name), pool_source=pool_source, clip_name=scorer.name, predictions_source=predictions_path)

    # Do neighbours resemble the anchor? Measurable where both images are annotated: the embedded
    # world's bench scenes and an annotated pool.
    if params.pool.kind == "coco" and Path(BENCH_INSTANCES).is_file():
        pool_objects, _ = sources.pool_annotations(params.pool, DATA_ROOT, index)
        objects = {**sampling.objects_by_sha(read_json(BENCH_INSTANCES)),
                   **{sha: [(obj.colour, obj.shape) for obj in found] for sha, found in pool_objects.items()}}
        summary["attribute_agreement"] = sampling.attribute_agreement(
            records, {case["sample_id"]: case for case in badcases}, objects)
    summary.update(iteration=int(name), prev=prev, badcases=len(badcases), pool=len(pool),
                   clip=scorer.name, embed_s=round(embed_s, 2), seconds=round(time.perf_counter() - started, 2))

    validate(records, "queries", source=output, iteration=int(name), data_root=DATA_ROOT)
    write_samples(records, output)
    write_json(f"metrics/sample/iter={name}.json", summary)
    print(f"sample {name}: {len(records)} queries ({summary['neighbour']} neighbour, {summary['random']} random) "
          f"from {len(badcases)} bad cases; allocation {summary['allocation']}")


if __name__ == "__main__":
    main(sys.argv[1:])
