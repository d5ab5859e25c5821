"""base: the iteration-0 model -> models/iter=0, data/iter=0/replay_pool.parquet, metrics/train/iter=0.json.

By default it builds the embedded tiny LLaVA and trains it on the seed; with
`base.model: HUB_ID_OR_PATH` it loads that model instead (through the same
AutoProcessor / AutoModelForImageTextToText path) and saves it as iteration 0.
"""

import shutil
from pathlib import Path

from mmloop import config, questions, stage
from mmloop.io import atomic_path, write_json
from mmloop.loop import training
from mmloop.models import vlm
from mmloop.schema import read_samples, write_samples

PARAMS = ("seed", "base", "compute", "world.colours", "world.shapes", "world.sizes")
SEED = "data/seed/samples.parquet"
MODEL_DIR = "models/iter=0"
REPLAY_POOL = "data/iter=0/replay_pool.parquet"
CHECKPOINTS = "models/.checkpoints/iter=0"  # a killed run resumes from here
LIVE = "metrics/train/live/iter=0"  # DVCLive's step-level loss and learning rate
INPUTS = (SEED, "data/store")


def param_deps(params: config.Params) -> list[str]:
    """`base.model` when it is a local folder (a hub id is no file DVC can watch)."""
    return [params.base.model] if params.base.model and Path(params.base.model).is_dir() else []


def main() -> None:
    params = stage.begin("base", PARAMS, param_deps=param_deps, preload=["torch", "transformers"])
    settings = params.base
    seed = config.stage_seed(params.seed, "base") % (2**31)
    records = read_samples(SEED)
    vlm.set_threads(settings.threads)
    device, dtype = vlm.placement(params.compute)
    if settings.model:
        model, processor = vlm.load(settings.model, dtype=dtype)
        stats = {"source": settings.model, "trained": False}
    else:
        world = params.world
        texts = [turn["content"] for record in records for turn in record["conversations"]]
        texts += questions.vocabulary_texts(colours=world.colours, shapes=world.shapes, sizes=world.sizes)
        model, processor = vlm.build(texts, seed=seed, **settings.tiny)
        stats = training.train_base(model, processor, records, settings, seed=seed, data_root="data", source=SEED,
                                    output_dir=CHECKPOINTS, live_dir=LIVE, precision=dtype, device=device)
        stats["trained"] = True
    if not training.is_main_process():
        return
    with atomic_path(MODEL_DIR, directory=True) as folder:
        vlm.save(model, processor, folder)
    write_samples(records, REPLAY_POOL)
    if not stats["trained"]:  # dvc.yaml declares DVCLive's log: an empty one, no training steps
        shutil.rmtree(LIVE, ignore_errors=True)
        (Path(LIVE) / "plots" / "metrics").mkdir(parents=True)
        write_json(f"{LIVE}/metrics.json", {})
    write_json("metrics/train/iter=0.json", {key: value for key, value in stats.items() if key != "losses"})
    print(f"base: {'trained on ' + str(len(records)) + ' seed samples' if stats['trained'] else stats['source']}"
          + (f", loss {stats['first_loss']:.3f} -> {stats['final_loss']:.3f} in {stats['wall_s']:.0f} s"
             if stats["trained"] else ""))


if __name__ == "__main__":
    main()
