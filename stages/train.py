"""train ITER PREV MODE: LoRA on the previous model -> models/iter=ITER,
data/iter=ITER/replay_pool.parquet, metrics/train/iter=ITER.json and DVCLive's step-level logs in
metrics/train/live/iter=ITER.

MODE is the iteration's `loop.iterations.ITER.train`: sft trains on this iteration's kept data
plus replay (params train); preference trains by DPO plus the image-alignment term on the
model's own pairs (data/iter=ITER/pairs.parquet, params preference; SENA), the previous model
being its own reference; both does SFT, then DPO on the result (whose reference is then the
SFT model).

Data-parallel on several GPUs with no change: `accelerate launch stages/train.py ITER PREV MODE`
(the batch sizes are per process; the first process writes the outputs)."""

import sys

from mmloop import config, stage
from mmloop.io import atomic_path, write_json
from mmloop.loop import training
from mmloop.models import vlm
from mmloop.schema import read_samples, write_samples

PARAMS = ("seed", "loop.seed", "train", "preference", "compute")
MODES = ("sft", "preference", "both")


def inputs(iteration: str, prev: str, mode: str) -> list[str]:
    return [f"models/iter={prev}", f"data/iter={prev}/replay_pool.parquet", f"data/iter={iteration}/kept.parquet",
            f"data/iter={iteration}/pairs.parquet", "data/store"]


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[2] not in MODES:
        raise SystemExit(f"usage: python stages/train.py ITERATION PREVIOUS_ITERATION MODE (MODE: {', '.join(MODES)})")
    name, prev, mode = argv
    params = stage.begin(f"train@{name}", PARAMS, preload=["torch", "transformers", "peft"])
    seed = config.stage_seed(params.seed, "train", name, params.loop.seed) % (2**31)
    pool = read_samples(f"data/iter={prev}/replay_pool.parquet")
    kept: list = []

    vlm.set_threads(params.train.threads if mode != "preference" else params.preference.threads)
    device, dtype = vlm.placement(params.compute)
    model, processor = vlm.load(f"models/iter={prev}", trainable=True, dtype=dtype)
    stats: dict = {"mode": mode, "prev": prev}
    if mode in ("sft", "both"):
        settings = params.train
        kept_path = f"data/iter={name}/kept.parquet"
        kept = read_samples(kept_path)
        replay = training.draw_replay(pool, len(kept), settings.replay_ratio, seed=seed)
        peft_model, sft = training.train_lora(
            model, processor, kept + replay, settings, seed=seed, data_root="data", source=kept_path,
            output_dir=f"models/.checkpoints/iter={name}",  # a killed run resumes from here
            live_dir=f"metrics/train/live/iter={name}", precision=dtype, device=device)
        stats.update(sft, kept=len(kept), replay=len(replay))
        print(f"train {name}: {len(kept)} kept + {len(replay)} replay, loss {sft['first_loss']:.3f} -> "
              f"{sft['final_loss']:.3f} in {sft['wall_s']:.0f} s")
    if mode in ("preference", "both"):
        from mmloop.loop import preference

        if mode == "both":
            model = peft_model.merge_and_unload()  # DPO's reference is the SFT model
        pairs_path = f"data/iter={name}/pairs.parquet"
        peft_model, dpo = preference.train_preference(
            model, processor, preference.read_pairs(pairs_path), params.preference, seed=seed, data_root="data",
            source=pairs_path, output_dir=f"models/.checkpoints/iter={name}/preference",
            live_dir=f"metrics/train/live/iter={name}/preference", precision=dtype, device=device)
        stats["preference"] = {key: value for key, value in dpo.items() if key != "losses"}
        print(f"train {name}: DPO on {dpo['pairs']} pairs, loss {dpo['first_loss']:.3f} -> "
              f"{dpo['final_loss']:.3f} in {dpo['wall_s']:.0f} s")
    if not training.is_main_process():  # under `accelerate launch`, one process writes the outputs
        return
    with atomic_path(f"models/iter={name}", directory=True) as folder:
        training.save_lora(peft_model, processor, folder)
    write_samples(pool + kept, f"data/iter={name}/replay_pool.parquet")
    write_json(f"metrics/train/iter={name}.json", {key: value for key, value in stats.items() if key != "losses"})


if __name__ == "__main__":
    main(sys.argv[1:])
