"""curate: params curate.sources (COCO instances/captions, LLaVA JSON) -> data/seed/samples.parquet."""

from __future__ import annotations

from pathlib import Path

from mmloop.curation import curate
from mmloop.io import write_json
from mmloop.params import load_params
from mmloop.schema import write_samples
from mmloop.validation import validate

DATA_ROOT = Path("data")


def main() -> None:
    params = load_params()
    rows, stats = curate(params, data_root=DATA_ROOT)
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
