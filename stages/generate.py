"""generate ITER PREV: data/iter=ITER/queries.parquet -> generated.parquet, generated.tsv (its mcq items).

The teacher (params generate.backend) writes samples for each query; the openai teacher also
shows the bad cases of the previous model (data/iter=PREV/eval/badcases.parquet). A teacher
whose requests keep failing stops the stage before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmloop import config, sources, stage
from mmloop.io import write_json
from mmloop.loop import generation
from mmloop.schema import read_samples, write_samples
from mmloop.store import read_index
from mmloop.validation import validate

PARAMS = ("seed", "loop.seed", "answer_format", "generate", "pool")
DATA_ROOT = Path("data")


def inputs(iteration: str, prev: str) -> list[str]:
    return [f"data/iter={iteration}/queries.parquet", "data/store"]


def param_deps(params: config.Params) -> list[str]:
    """Files that these params make the stage read (DVC dep paths; ${item.prev} / ${key} allowed):
    the pool's annotations (the annotations teacher's "captions and boxes"), the openai teacher's
    prompt and the bad cases it shows."""
    deps = list(params.pool.files)
    if params.generate.backend == "openai":
        deps += [params.generate.openai.prompt, "data/iter=${item.prev}/eval"]
    return deps


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python stages/generate.py ITERATION PREVIOUS_ITERATION")
    iteration, prev = argv
    params = stage.begin(f"generate@{iteration}", PARAMS, param_deps=param_deps, preload=["great_expectations"])
    folder = DATA_ROOT / f"iter={iteration}"
    annotations = (sources.pool_annotations(params.pool, DATA_ROOT, read_index(DATA_ROOT))
                   if params.pool.kind == "coco" else None)
    rows, stats = generation.generate(
        read_samples(folder / "queries.parquet"), params.generate, annotations=annotations,
        answer_format=params.answer_format,
        seed=config.stage_seed(params.seed, "generate", iteration, params.loop.seed), iteration=iteration,
        data_root=DATA_ROOT, badcases_path=DATA_ROOT / f"iter={prev}" / "eval" / "badcases.parquet")

    generated_path, tsv_path = folder / "generated.parquet", folder / "generated.tsv"
    validate(rows, "samples", source=generated_path, iteration=int(iteration), data_root=DATA_ROOT)

    from mmloop.eval.benchmarks.mmbench import write_mmbench

    # Everything that can fail (validation, reading images for the TSV) happens before the first write.
    items = generation.mmbench_items(rows, data_root=DATA_ROOT)
    write_samples(rows, generated_path)
    write_mmbench(items, tsv_path)
    write_json(Path("metrics/generate") / f"iter={iteration}.json", stats)
    outcomes = stats["outcomes"]
    print(f"generate iter={iteration}: {stats['samples']} samples from {stats['queries']} queries "
          f"({outcomes['generated']} generated, {outcomes['skipped']} skipped by the teacher, "
          f"{outcomes['parse_failed']} parse failures, {outcomes['request_failed']} request failures, "
          f"{outcomes['duplicate']} duplicates)")
    if stats.get("unaskable"):
        print(f"generate iter={iteration}: warning: no question program asks the benchmark categories "
              f"{', '.join(stats['unaskable'])}; their queries were skipped (use generate.backend 'openai')")


if __name__ == "__main__":
    main(sys.argv[1:])
