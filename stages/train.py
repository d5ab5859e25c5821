"""train ITER PREV: LoRA on the previous model with this iteration's kept data plus replay
-> models/iter=ITER, data/iter=ITER/replay_pool.parquet, metrics/train/iter=ITER.json and
DVCLive's step-level logs in metrics/train/live/iter=ITER.

Data-parallel on several GPUs with no change: `accelerate launch stages/train.py ITER PREV`
(`train.batch_size` is per process; the first process writes the outputs)."""

import sys

from mmloop import config, stage
from mmloop.io import atomic_path, write_json
from mmloop.loop import training
from mmloop.models import vlm
from mmloop.schema import read_samples, write_samples

PARAMS = ("seed", "loop.seed", "train", "compute")


def inputs(iteration: str, prev: str) -> list[str]:
    return [f"models/iter={prev}", f"data/iter={prev}/replay_pool.parquet", f"data/iter={iteration}/kept.parquet",
            "data/store"]


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python stages/train.py ITERATION PREVIOUS_ITERATION")
    name, prev = argv
    params = stage.begin(f"train@{name}", PARAMS, preload=["torch", "transformers", "peft"])
    settings = params.train
    seed = config.stage_seed(params.seed, "train", name, params.loop.seed) % (2**31)
    kept_path = f"data/iter={name}/kept.parquet"
    kept = read_samples(kept_path)
    pool = read_samples(f"data/iter={prev}/replay_pool.parquet")
    replay = training.draw_replay(pool, len(kept), settings.replay_ratio, seed=seed)

    vlm.set_threads(settings.threads)
    device, dtype = vlm.placement(params.compute)
    model, processor = vlm.load(f"models/iter={prev}", trainable=True, dtype=dtype)
    peft_model, stats = training.train_lora(
        model, processor, kept + replay, settings, seed=seed, data_root="data", source=kept_path,
        output_dir=f"models/.checkpoints/iter={name}",  # a killed run resumes from here
        live_dir=f"metrics/train/live/iter={name}", precision=dtype, device=device)
    if not training.is_main_process():  # under `accelerate launch`, one process writes the outputs
        return
    with atomic_path(f"models/iter={name}", directory=True) as folder:
        training.save_lora(peft_model, processor, folder)
    write_samples(pool + kept, f"data/iter={name}/replay_pool.parquet")
    stats.update(kept=len(kept), replay=len(replay), prev=prev)
    write_json(f"metrics/train/iter={name}.json", {key: value for key, value in stats.items() if key != "losses"})
    print(f"train {name}: {len(kept)} kept + {len(replay)} replay, loss {stats['first_loss']:.3f} -> "
          f"{stats['final_loss']:.3f} in {stats['wall_s']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
