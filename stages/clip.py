"""clip: train the tiny CLIP on the seed split's images and captions -> models/clip, metrics/clip.json.

With `clip.pretrained: {model, pretrained}` in params.yaml the stages use open_clip's
pretrained model instead; this stage then only evaluates it and writes no weights.
"""

import time

from mmloop import config, stage
from mmloop.io import stable_hash, write_json
from mmloop.models import clip

PARAMS = ("seed", "clip", "world.colours", "world.shapes", "world.sizes")
DATA_ROOT = "data"
MODEL_DIR = "models/clip"
TRAIN_CAPTIONS = "data/world/captions_seed.json"
HELD_OUT_CAPTIONS = "data/world/captions_bench.json"
INPUTS = ("data/world", "data/images")


def main() -> None:
    params = stage.begin("clip", PARAMS, preload=["open_clip"])
    settings = params.clip
    clip.set_threads(settings.threads)
    seed = config.stage_seed(params.seed, "clip")
    source = clip.clip_source(settings.pretrained, MODEL_DIR)
    metrics = {"source": source}

    if source["kind"] == "pretrained":
        scorer = clip.ClipScorer.from_pretrained(source["model"], source["pretrained"], root=DATA_ROOT)
        # models/clip is a DVC output; record which model stands in for it.
        write_json(f"{MODEL_DIR}/pretrained.json", source)
    else:
        train = clip.load_captioned_images(TRAIN_CAPTIONS, DATA_ROOT)
        scorer, stats = clip.train_clip(
            [entry["file_name"] for entry in train], [entry["captions"] for entry in train],
            model_cfg=clip.tiny_model_cfg(settings.model), epochs=settings.epochs, batch_size=settings.batch_size,
            lr=settings.lr, seed=seed % (2**31), threads=settings.threads, root=DATA_ROOT)
        scorer.root = DATA_ROOT
        clip.save_clip(scorer, MODEL_DIR, training={**stats, "captions_file": TRAIN_CAPTIONS})
        metrics["training"] = stats

    held_out = clip.load_captioned_images(HELD_OUT_CAPTIONS, DATA_ROOT)
    world = params.world
    started = time.perf_counter()
    metrics["retrieval"] = clip.evaluate_retrieval(
        scorer, [entry["file_name"] for entry in held_out], [entry["captions"][0] for entry in held_out],
        vocabularies=[world.colours, world.shapes, world.sizes], candidates=settings.eval_candidates, seed=seed)
    metrics["retrieval"]["eval_s"] = round(time.perf_counter() - started, 2)
    metrics["retrieval"]["split"] = HELD_OUT_CAPTIONS
    metrics["params_hash"] = stable_hash(settings.model_dump(mode="json"))
    write_json("metrics/clip.json", metrics)
    random, hard = metrics["retrieval"]["random"], metrics["retrieval"].get("one_attribute") or {}
    print(f"clip: img->txt {random['img2txt']:.3f}, txt->img {random['txt2img']:.3f} among "
          f"{random['candidates']}; one-attribute distractors img->txt {hard.get('img2txt')}")


if __name__ == "__main__":
    main()
