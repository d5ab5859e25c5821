"""curate: params curate.sources (COCO instances/captions, LLaVA JSON) -> data/seed/samples.parquet."""

from __future__ import annotations

from pathlib import Path

from mmloop import config, stage
from mmloop.io import write_json
from mmloop.loop.curation import curate
from mmloop.schema import write_samples
from mmloop.validation import validate

PARAMS = ("seed", "answer_format", "curate")
DATA_ROOT = Path("data")
INPUTS = ("data/images",)  # the images the sources name, hashed into each sample


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
    families = ", ".join(f"{name} {count}" for name, count in stats["families"].items())
    formats = stats["formats"]
    print(f"curate: {stats['samples']} samples, {stats['turns']} turns ({families}; mcq {formats['mcq']}, "
          f"short {formats['short']}, caption {formats['caption']}, open {formats['open']})")


if __name__ == "__main__":
    main()
