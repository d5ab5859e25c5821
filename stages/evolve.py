"""evolve ITER PREV: MMEvol's evolution rounds on data/iter=ITER/generated.parquet -> evolved.parquet
(what elimination judges next), evolution.parquet (every child with its verdict) and
metrics/evolve/iter=ITER.json (per round and operator: evolved, kept, dropped by reason, difficulty).

The teacher of generate.backend evolves its own rows: the annotations teacher by programs on the
pool's annotations, the openai teacher through its evolution and judge templates. The blind check
asks the previous model (models/iter=PREV) each surviving child with the image replaced by a blank
one. `evolve.rounds: 0` passes the generated rows through unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmloop import config, sources, stage
from mmloop.io import write_json
from mmloop.loop import evolution
from mmloop.schema import read_samples, write_samples
from mmloop.store import read_index
from mmloop.validation import validate

PARAMS = ("seed", "loop.seed", "answer_format", "evolve", "generate", "pool", "compute", "evaluate.batch_size",
          "evaluate.threads")
DATA_ROOT = Path("data")


def inputs(iteration: str, prev: str) -> list[str]:
    return [f"data/iter={iteration}/generated.parquet", "data/store", f"models/iter={prev}"]


def param_deps(params: config.Params) -> list[str]:
    """The pool's annotations (the annotations teacher evolves programs on them); the openai
    teacher's evolution and judge templates."""
    deps = list(params.pool.files)
    if params.generate.backend == "openai":
        deps += params.evolve.prompts.files
    return deps


def make_evolver(params: config.Params, iteration: str) -> evolution.Evolver:
    annotations = (sources.pool_annotations(params.pool, DATA_ROOT, read_index(DATA_ROOT))
                   if params.pool.kind == "coco" else None)
    if params.generate.backend == "openai":
        from mmloop.teachers.openai_evolve import OpenAIEvolver

        return OpenAIEvolver(params.generate.openai, params.evolve.prompts, answer_format=params.answer_format,
                             objects_by_image=annotations[0] if annotations else {}, data_root=DATA_ROOT,
                             iteration=iteration)
    if annotations is None:
        raise ValueError("evolve: the annotations teacher evolves programs on the pool's annotations, and "
                         "pool.kind 'folder' has none; use generate.backend 'openai' or evolve.rounds 0")
    objects_by_sha, categories = annotations
    return evolution.AnnotationEvolver(objects_by_sha,
                                       vocabulary=evolution.default_vocabulary(objects_by_sha, categories),
                                       answer_format=params.answer_format, iteration=iteration)


def blind_check(params: config.Params, prev: str):
    """The previous model's blind check (loaded on first use), or None when it is off."""
    if params.evolve.blind_margin is None:
        return None
    loaded = []

    def answered(rows):
        if not rows:
            return []
        if not loaded:
            from mmloop.models import vlm

            vlm.set_threads(params.evaluate.threads)
            device, dtype = vlm.placement(params.compute)
            loaded.extend(vlm.load(f"models/iter={prev}", dtype=dtype, device=device))
        model, processor = loaded
        return evolution.blind_answered(model, processor, rows, margin=params.evolve.blind_margin,
                                        answer_format=params.answer_format,
                                        batch_size=params.evaluate.batch_size, data_root=str(DATA_ROOT))
    return answered


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python stages/evolve.py ITERATION PREVIOUS_ITERATION")
    iteration, prev = argv
    params = stage.begin(f"evolve@{iteration}", PARAMS, param_deps=param_deps, preload=["great_expectations"])
    settings = params.evolve
    folder = DATA_ROOT / f"iter={iteration}"
    rows = read_samples(folder / "generated.parquet")
    children: list[dict] = []
    stats: dict = {"rounds": [], "evolved": 0, "kept": 0}
    out = rows
    if settings.rounds:
        evolver = make_evolver(params, iteration)
        verdicts, kept, stats = evolution.evolve(
            rows, evolver, rounds=settings.rounds, operator_weights=settings.operator_weights,
            seed=config.stage_seed(params.seed, "evolve", iteration, params.loop.seed),
            blind=blind_check(params, prev), progress=lambda line: print(f"evolve iter={iteration}: {line}"))
        children = [verdict.row for verdict in verdicts]
        stats["teacher"] = evolver.stats()
        out = evolution.final_rows(rows, kept) if settings.keep == "final" else [*rows, *kept]
    stats.update(keep=settings.keep, samples_out=len(out), evolved_out=sum(r["origin"] == "evolved" for r in out))

    evolved_path, children_path = folder / "evolved.parquet", folder / "evolution.parquet"
    # Validate both outputs before writing either, so a failure publishes nothing.
    validate(out, "samples", source=evolved_path, iteration=int(iteration), data_root=DATA_ROOT)
    validate(children, "samples", source=children_path, iteration=int(iteration), data_root=DATA_ROOT)
    write_samples(out, evolved_path)
    write_samples(children, children_path)
    write_json(Path("metrics/evolve") / f"iter={iteration}.json", stats)
    print(f"evolve iter={iteration}: {settings.rounds} round(s), {stats['evolved']} evolved, {stats['kept']} kept; "
          f"{stats['evolved_out']} of {len(out)} rows out are evolved")


if __name__ == "__main__":
    main(sys.argv[1:])
