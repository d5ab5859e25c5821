"""curate: params curate.sources (COCO instances/captions, LLaVA or ShareGPT JSON) -> data/seed/samples.parquet.

The sources are read and checked by `mmloop.sources`; their images come from the image store
(`data/store`, written by the `store` stage), so the samples name stored images.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmloop import config, stage
from mmloop.io import write_json
from mmloop.loop.curation import curate
from mmloop.schema import write_samples
from mmloop.validation import validate

PARAMS = ("seed", "answer_format", "curate")
DATA_ROOT = Path("data")
INPUTS = ("data/store",)  # the stored images and their index, where each source's images are found


def param_deps(params: config.Params) -> list[str]:
    """The source files the params name: editing one makes the stage stale."""
    return [path for source in params.curate.sources for path in source.files]


def main() -> None:
    params = stage.begin("curate", PARAMS, preload=["great_expectations"], param_deps=param_deps)
    rows, stats = curate(params.curate, answer_format=params.answer_format,
                         seed=config.stage_seed(params.seed, "curate"), data_root=DATA_ROOT)
    samples_path = DATA_ROOT / "seed" / "samples.parquet"
    validate(rows, "samples", source=samples_path, iteration=0, data_root=DATA_ROOT)
    write_samples(rows, samples_path)
    write_json("metrics/curate.json", stats)
    for warning in stats["warnings"]:
        print(f"curate: warning: {warning}", file=sys.stderr)
    families = ", ".join(f"{name} {count}" for name, count in stats["families"].items())
    formats = stats["formats"]
    skipped = sum(sum(entry["skipped"].values()) for entry in stats["sources"].values())
    merged = sum(entry["merged"] for entry in stats["sources"].values())
    print(f"curate: {stats['samples']} samples, {stats['turns']} turns ({families}; mcq {formats['mcq']}, "
          f"short {formats['short']}, caption {formats['caption']}, open {formats['open']}); "
          f"{skipped} records skipped, {merged} merged")


if __name__ == "__main__":
    main()
