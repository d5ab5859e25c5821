"""clip: train the tiny CLIP on the seed split's images and captions -> models/clip, metrics/clip.json.

With `clip.pretrained: {model, pretrained}` in params.yaml the stages use open_clip's
pretrained model instead; this stage then only evaluates it and writes no weights.
"""

import time

from mmloop import clip
from mmloop.io import stable_hash, write_json
from mmloop.params import load_params, stage_seed

DATA_ROOT = "data"
MODEL_DIR = "models/clip"
TRAIN_CAPTIONS = "data/world/captions_seed.json"
HELD_OUT_CAPTIONS = "data/world/captions_bench.json"


def main() -> None:
    params = load_params()
    section = params.get("clip") or {}
    clip.set_threads(int(section.get("threads", 2)))
    seed = stage_seed(params, "clip")
    source = clip.clip_source(params, MODEL_DIR)
    metrics = {"source": source}

    if source["kind"] == "pretrained":
        scorer = clip.ClipScorer.from_pretrained(source["model"], source["pretrained"], root=DATA_ROOT)
        # models/clip is a DVC output; record which model stands in for it.
        write_json(f"{MODEL_DIR}/pretrained.json", source)
    else:
        train = clip.load_captioned_images(TRAIN_CAPTIONS, DATA_ROOT)
        scorer, stats = clip.train_clip(
            [entry["file_name"] for entry in train], [entry["captions"] for entry in train],
            model_cfg=clip.tiny_model_cfg(section.get("model")), epochs=int(section.get("epochs", 4)),
            batch_size=int(section.get("batch_size", 128)), lr=float(section.get("lr", 1e-3)),
            seed=seed % (2**31), threads=int(section.get("threads", 2)), root=DATA_ROOT)
        scorer.root = DATA_ROOT
        clip.save_clip(scorer, MODEL_DIR, training={**stats, "captions_file": TRAIN_CAPTIONS})
        metrics["training"] = stats

    held_out = clip.load_captioned_images(HELD_OUT_CAPTIONS, DATA_ROOT)
    world = params.get("world") or {}
    vocabularies = [world[key] for key in ("colours", "shapes", "sizes") if world.get(key)]
    started = time.perf_counter()
    metrics["retrieval"] = clip.evaluate_retrieval(
        scorer, [entry["file_name"] for entry in held_out], [entry["captions"][0] for entry in held_out],
        vocabularies=vocabularies, candidates=int(section.get("eval_candidates", 10)), seed=seed)
    metrics["retrieval"]["eval_s"] = round(time.perf_counter() - started, 2)
    metrics["retrieval"]["split"] = HELD_OUT_CAPTIONS
    metrics["params_hash"] = stable_hash(section)
    write_json("metrics/clip.json", metrics)
    random, hard = metrics["retrieval"]["random"], metrics["retrieval"].get("one_attribute") or {}
    print(f"clip: img->txt {random['img2txt']:.3f}, txt->img {random['txt2img']:.3f} among "
          f"{random['candidates']}; one-attribute distractors img->txt {hard.get('img2txt')}")


if __name__ == "__main__":
    main()
