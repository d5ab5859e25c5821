"""selfgen ITER PREV MODE: SENA's self-generated preference pairs -> data/iter=ITER/pairs.parquet
(valid pairs), pairs_dropped.parquet (every image or pair dropped, with its reason) and
metrics/selfgen/iter=ITER.json.

The previous model (models/iter=PREV) asks a question about each of `sena.images` pool images,
checks that the image answers it, answers, describes the image and refines its answer (chosen),
and answers again on the DDPM-noised image (rejected). MODE is the iteration's
`loop.iterations.ITER.train`: an iteration that trains by SFT alone asks nothing and writes empty
tables.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from mmloop import config, sources, stage
from mmloop.io import write_json
from mmloop.loop.preference import pair_row, validate_pairs, write_pairs
from mmloop.store import read_index
from mmloop.teachers.self_teacher import DEFAULT_TEMPLATES, SelfTeacher

PARAMS = ("seed", "loop.seed", "sena", "pool", "compute")
DATA_ROOT = Path("data")
PREFERENCE_MODES = ("preference", "both")


def inputs(iteration: str, prev: str, mode: str) -> list[str]:
    return [f"models/iter={prev}", "data/store", *DEFAULT_TEMPLATES.values()]


def param_deps(params: config.Params) -> list[str]:
    """The pool's file, which names the images."""
    return list(params.pool.files)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python stages/selfgen.py ITERATION PREVIOUS_ITERATION MODE")
    iteration, prev, mode = argv
    folder = DATA_ROOT / f"iter={iteration}"
    if mode not in PREFERENCE_MODES:
        stage.begin(f"selfgen@{iteration}", (), preload=[])
        write_pairs([], folder / "pairs.parquet")
        write_pairs([], folder / "pairs_dropped.parquet")
        write_json(Path("metrics/selfgen") / f"iter={iteration}.json", {"mode": mode, "pairs": 0})
        print(f"selfgen iter={iteration}: trains by {mode} alone; no self-generated pairs")
        return
    params = stage.begin(f"selfgen@{iteration}", PARAMS, param_deps=param_deps, preload=["torch", "transformers"])
    settings = params.sena
    seed = config.stage_seed(params.seed, "selfgen", iteration, params.loop.seed)
    pool = sources.pool_images(params.pool, DATA_ROOT, read_index(DATA_ROOT))
    chosen = random.Random(seed).sample(pool, min(settings.images, len(pool)))
    images = [{**image, "sample_id": f"pool-{image['image_sha256'][:16]}"} for image in chosen]

    from mmloop.models import vlm
    vlm.set_threads(settings.threads)
    device, dtype = vlm.placement(params.compute)
    teacher = SelfTeacher.from_pretrained(
        f"models/iter={prev}", dtype=dtype, device=device, max_question_tries=settings.max_question_tries,
        temperature=settings.temperature, max_new_tokens=settings.max_new_tokens, t=settings.noise_t,
        self_check=settings.self_check, self_enhance=settings.self_enhance, batch_size=settings.batch_size,
        seed=seed % (2**31), data_root=str(DATA_ROOT), iteration=int(iteration))
    pairs, dropped, stats = teacher.run(images)
    # The boundary: what a preference stage may train on (chosen differs from rejected, both
    # non-empty, prompt and image present and hashed); every other pair keeps its reason.
    valid, invalid = validate_pairs(pairs, DATA_ROOT, source=str(folder / "pairs.parquet"))
    dropped = dropped + invalid
    model = f"models/iter={prev}"
    write_pairs([pair_row(pair, iteration=iteration, model=model) for pair in valid], folder / "pairs.parquet")
    write_pairs([pair_row(pair, iteration=iteration, model=model) for pair in dropped],
                folder / "pairs_dropped.parquet")
    reasons: dict[str, int] = {}
    for row in dropped:
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    write_json(Path("metrics/selfgen") / f"iter={iteration}.json",
               {**stats, "mode": mode, "pairs": len(valid), "dropped": dict(sorted(reasons.items()))})
    print(f"selfgen iter={iteration}: {len(valid)} pairs from {len(images)} images (dropped {reasons})")


if __name__ == "__main__":
    main(sys.argv[1:])
