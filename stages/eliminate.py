"""eliminate ITER: verdicts on data/iter=ITER/evolved.parquet (the generated rows after evolution) -> kept.parquet, rejected.parquet."""

from __future__ import annotations

import sys
from pathlib import Path

from mmloop import config, sources, stage
from mmloop.io import write_json
from mmloop.loop.elimination import eliminate, load_text_embedder
from mmloop.models.clip import ClipScorer
from mmloop.schema import read_samples, write_samples
from mmloop.store import read_index
from mmloop.teachers.ipo import prompt_version_metrics
from mmloop.validation import validate

PARAMS = ("seed", "loop.seed", "eliminate", "pool", "clip.pretrained", "clip.threads")
DATA_ROOT = Path("data")


def inputs(iteration: str) -> list[str]:
    return [f"data/iter={iteration}/evolved.parquet", "data/store", "models/clip"]


def param_deps(params: config.Params) -> list[str]:
    """The pool's annotations, which verify generated answers."""
    return list(params.pool.files)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python stages/eliminate.py ITERATION")
    iteration = argv[0]
    params = stage.begin(f"eliminate@{iteration}", PARAMS, param_deps=param_deps,
                         preload=["open_clip", "sentence_transformers", "great_expectations"])
    folder = DATA_ROOT / f"iter={iteration}"
    rows = read_samples(folder / "evolved.parquet")
    # An unlabeled pool has no annotations: nothing to re-execute answers against.
    objects_by_sha = (sources.pool_annotations(params.pool, DATA_ROOT, read_index(DATA_ROOT))[0]
                      if params.pool.kind == "coco" else {})
    result = eliminate(
        rows, objects_by_sha=objects_by_sha, settings=params.eliminate,
        scorer=ClipScorer.selected(params.clip.pretrained, threads=params.clip.threads, root=DATA_ROOT),
        embedder=load_text_embedder(), seed=config.stage_seed(params.seed, "eliminate", iteration, params.loop.seed))

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
