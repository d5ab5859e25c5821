"""eliminate ITER: verdicts on data/iter=ITER/generated.parquet -> kept.parquet, rejected.parquet."""

from __future__ import annotations

import sys
from pathlib import Path

from mmloop.elimination import eliminate, load_text_embedder
from mmloop.generation import load_objects
from mmloop.io import write_json
from mmloop.ipo import prompt_version_metrics
from mmloop.params import load_params, stage_seed
from mmloop.schema import read_samples, write_samples
from mmloop.validation import validate

DATA_ROOT = Path("data")


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python stages/eliminate.py ITERATION")
    iteration = argv[0]
    params = load_params()
    settings = params.get("eliminate") or {}
    folder = DATA_ROOT / f"iter={iteration}"
    generated_path = folder / "generated.parquet"
    rows = read_samples(generated_path)

    from mmloop.clip import ClipScorer

    scorer = ClipScorer.from_params(params, root=DATA_ROOT)
    result = eliminate(
        rows, objects_by_sha=load_objects(settings.get("annotations") or params["generate"]["annotations"],
                                          DATA_ROOT),
        scorer=scorer, embedder=load_text_embedder(), clip_min=settings.get("clip_min"),
        mismatch_quantile=float(settings.get("clip_mismatch_quantile", 0.5)),
        near_duplicate=float(settings.get("near_duplicate", 0.95)),
        seed=stage_seed(params, "eliminate", iteration))

    kept_path, rejected_path = folder / "kept.parquet", folder / "rejected.parquet"
    # Validate both outputs before writing either, so a failure publishes nothing.
    validate(result.kept, "samples", source=kept_path, iteration=int(iteration), data_root=DATA_ROOT)
    validate(result.rejected, "samples", source=rejected_path, iteration=int(iteration), data_root=DATA_ROOT)
    write_samples(result.kept, kept_path)
    write_samples(result.rejected, rejected_path)
    # Keep, skip and parse-failure rates per prompt version, so `dvc exp show` compares prompts (IPO).
    stats = {**result.stats, "prompt_versions": prompt_version_metrics(result.kept + result.rejected)}
    write_json(Path("metrics/eliminate") / f"iter={iteration}.json", stats)
    print(f"eliminate iter={iteration}: kept {result.stats['kept']} of {result.stats['total']} "
          f"(clip_min {result.clip_min} [{result.clip_min_source}], rejected {result.stats['reasons']})")


if __name__ == "__main__":
    main(sys.argv[1:])
