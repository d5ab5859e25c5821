"""generate ITER: data/iter=ITER/queries.parquet -> generated.parquet, generated.tsv (its mcq items)."""

from __future__ import annotations

import sys
from pathlib import Path

from mmloop.generation import generate, mmbench_items
from mmloop.io import write_json
from mmloop.params import load_params
from mmloop.schema import read_samples, write_samples
from mmloop.validation import validate

DATA_ROOT = Path("data")


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python stages/generate.py ITERATION")
    iteration = argv[0]
    params = load_params()
    folder = DATA_ROOT / f"iter={iteration}"
    queries = read_samples(folder / "queries.parquet")
    rows, stats = generate(queries, params, iteration=iteration, data_root=DATA_ROOT)

    generated_path, tsv_path = folder / "generated.parquet", folder / "generated.tsv"
    validate(rows, "samples", source=generated_path, iteration=int(iteration), data_root=DATA_ROOT)

    from mmloop.benchmark import write_mmbench

    # Everything that can fail (validation, reading images for the TSV) happens before the first write.
    items = mmbench_items(rows, data_root=DATA_ROOT)
    write_samples(rows, generated_path)
    write_mmbench(items, tsv_path)
    write_json(Path("metrics/generate") / f"iter={iteration}.json", stats)
    print(f"generate iter={iteration}: {stats['generated']} samples from {stats['requested']} queries "
          f"({stats['skipped']} skipped)")


if __name__ == "__main__":
    main(sys.argv[1:])
