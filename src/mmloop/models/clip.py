"""A tiny CLIP, trained with open_clip on the world's images and captions, and the scorer built on it.

The model is an ordinary open_clip CLIP: a custom architecture registered with
open_clip's own config registry (`add_model_config`), open_clip's SimpleTokenizer
(it ships in the package, so nothing is downloaded) and open_clip's `ClipLoss`.
It is saved as an open_clip "local-dir" folder (`open_clip_config.json` plus
`open_clip_model.safetensors`), so `open_clip.create_model_and_transforms(
"local-dir:models/clip")` reloads it, and so does `ClipScorer.load`.

`ClipScorer` is what the sample and eliminate stages use. The same code drives
a pretrained open_clip model when params.yaml says
`clip.pretrained: {model: NAME, pretrained: TAG}`.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.config import PretrainedClip, TinyClip
from mmloop.io import progress

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
TRAINING_FILE = "training.json"
MODEL_NAME = "mmloop-tiny-clip"

# A ViT for 64-px images with 16-px patches (a 4x4 grid, aligned with the world's cells)
# and a small text transformer. Captions are short, so 32 tokens suffice.
TINY_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 128, "layers": 3, "head_width": 32,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3,
                 "mlp_ratio": 2.0},
}
# The world's PNGs are already 64 px; CLIP's usual normalisation constants are kept.
TINY_PREPROCESS_CFG: dict[str, Any] = {
    "size": 64, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest",
}


def set_threads(threads: int = 2) -> None:
    import torch

    # The build machine has 2 cores; more threads only add contention.
    torch.set_num_threads(max(1, int(threads)))


def tiny_model_cfg(tiny: TinyClip) -> dict[str, Any]:
    """TINY_MODEL_CFG with params' `clip.model` sizes (width, layers, embed_dim, context_length)."""
    cfg = json.loads(json.dumps(TINY_MODEL_CFG))
    cfg["embed_dim"] = tiny.embed_dim
    for tower in ("vision_cfg", "text_cfg"):
        cfg[tower]["width"] = tiny.width
        cfg[tower]["layers"] = tiny.layers
    cfg["text_cfg"]["context_length"] = tiny.context_length
    return cfg


def register_model_config(model_cfg: Mapping[str, Any], name: str = MODEL_NAME) -> str:
    """Register `model_cfg` under `name` with open_clip's config registry; returns the name."""
    import open_clip

    # open_clip's registry reads JSON files (the file's stem is the model name).
    folder = Path(tempfile.mkdtemp(prefix="mmloop-open-clip-configs-"))
    config_path = folder / f"{name}.json"
    config_path.write_text(json.dumps(model_cfg), encoding="utf-8")
    open_clip.add_model_config(config_path)
    if name not in open_clip.list_models():
        raise RuntimeError(f"open_clip did not register model config {name!r} from {config_path}")
    return name


# ---------------------------------------------------------------- images and data

def open_image(image: Any, root: str | os.PathLike | None = None):
    """A PIL RGB image from a PIL image, a path, or a path relative to `root` (the data root)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None


def load_captioned_images(captions_path: str | os.PathLike, data_root: str | os.PathLike = "data"
                          ) -> list[dict[str, Any]]:
    """COCO captions JSON -> [{image_id, file_name, sha256, captions: [...]}] in the file's image order."""
    from mmloop.io import read_json

    captions_path = Path(captions_path)
    coco = read_json(captions_path)
    for key in ("images", "annotations"):
        if key not in coco:
            raise ValueError(f"{captions_path}: COCO captions file has no {key!r} list")
    by_id: dict[Any, dict[str, Any]] = {}
    for position, image in enumerate(coco["images"]):
        for field in ("id", "file_name"):
            if field not in image:
                raise ValueError(f"{captions_path}: images[{position}] has no {field!r} field")
        by_id[image["id"]] = {"image_id": image["id"], "file_name": image["file_name"],
                              "sha256": image.get("sha256"), "captions": []}
    for position, annotation in enumerate(coco["annotations"]):
        image_id = annotation.get("image_id")
        caption = annotation.get("caption")
        if image_id not in by_id:
            raise ValueError(f"{captions_path}: annotations[{position}] (id {annotation.get('id')}) "
                             f"names image_id {image_id!r}, which is not in images")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{captions_path}: annotations[{position}] (id {annotation.get('id')}) "
                             f"has no caption text")
        by_id[image_id]["captions"].append(caption.strip())
    return [entry for entry in by_id.values() if entry["captions"]]


def pixel_tensor(images: Sequence[Any], preprocess, root=None, *, desc: str = "images"):
    """Preprocess images into one float tensor (N, 3, H, W)."""
    import torch

    return torch.stack([preprocess(open_image(image, root)) for image in progress(images, desc=desc)])


# ---------------------------------------------------------------- training

def train_clip(images: Sequence[Any], captions: Sequence[Sequence[str]], *,
               model_cfg: Mapping[str, Any] | None = None, epochs: int = 6, batch_size: int = 128,
               lr: float = 1e-3, weight_decay: float = 0.1, warmup_steps: int = 20, seed: int = 0,
               threads: int = 2, root: str | os.PathLike | None = None) -> tuple[Any, dict[str, Any]]:
    """Train a CLIP from scratch on (image, captions) pairs with open_clip's ClipLoss.

    `captions[i]` lists the captions of `images[i]`; each epoch draws one of them per image.
    Returns (the scorer wrapping the trained model, training stats).
    """
    import numpy as np
    import open_clip
    import torch

    if len(images) != len(captions):
        raise ValueError(f"train_clip: {len(images)} images but {len(captions)} caption lists")
    if len(images) < 2:
        raise ValueError("train_clip: a contrastive loss needs at least 2 images")
    set_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model_cfg = dict(model_cfg or TINY_MODEL_CFG)
    name = register_model_config(model_cfg)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=None, image_mean=TINY_PREPROCESS_CFG["mean"], image_std=TINY_PREPROCESS_CFG["std"],
        image_interpolation=TINY_PREPROCESS_CFG["interpolation"],
        image_resize_mode=TINY_PREPROCESS_CFG["resize_mode"])
    tokenizer = open_clip.get_tokenizer(name)

    started = time.perf_counter()
    # Pixels are preprocessed once (no augmentation: crops and colour jitter would change
    # exactly the attributes the captions name) and kept as float16 to halve memory.
    pixels = pixel_tensor(images, preprocess, root, desc="clip pixels").to(torch.float16)
    # Tokenise every caption once; an epoch then indexes into this table.
    flat = [caption for group in captions for caption in group]
    tokens = tokenizer(flat)
    offsets = np.cumsum([0] + [len(group) for group in captions])
    prepare_s = time.perf_counter() - started

    batch_size = min(int(batch_size), len(images))
    steps_per_epoch = len(images) // batch_size  # full batches only: the loss needs negatives
    total_steps = max(1, steps_per_epoch * int(epochs))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / max(1, warmup_steps))
        * 0.5 * (1 + np.cos(np.pi * min(step, total_steps) / total_steps)))
    loss_fn = open_clip.ClipLoss()
    model.train()
    losses: list[float] = []
    bar = progress(total=total_steps, desc="clip training")
    for _ in range(int(epochs)):
        order = list(range(len(images)))
        rng.shuffle(order)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size:(step + 1) * batch_size]
            caption_rows = [offsets[i] + rng.randrange(offsets[i + 1] - offsets[i]) for i in batch]
            image_features, text_features, logit_scale = model(
                pixels[batch].float(), tokens[caption_rows])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            # CLIP's recipe: keep the temperature from exceeding 100.
            with torch.no_grad():
                model.logit_scale.clamp_(0, float(np.log(100)))
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    stats = {
        "images": len(images), "captions": len(flat), "epochs": int(epochs), "steps": len(losses),
        "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads,
        "prepare_s": round(prepare_s, 2), "train_s": round(time.perf_counter() - started - prepare_s, 2),
        "loss_first": round(losses[0], 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-10:])), 4) if losses else None,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    scorer = ClipScorer(model, preprocess, tokenizer, name=name,
                        config={"model_cfg": model_cfg, "preprocess_cfg": TINY_PREPROCESS_CFG})
    return scorer, stats


def save_clip(scorer: "ClipScorer", path: str | os.PathLike, *, training: Mapping[str, Any] | None = None) -> Path:
    """Write an open_clip local-dir folder atomically: config, safetensors weights, training stats."""
    from safetensors.torch import save_file

    from mmloop.io import atomic_path

    if scorer.config is None:
        raise ValueError("save_clip: this scorer has no model config to save (a pretrained model is "
                         "reloaded by name, not saved)")
    path = Path(path)
    with atomic_path(path, directory=True) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(scorer.config, indent=2, sort_keys=True) + "\n",
                                       encoding="utf-8")
        state = {key: value.detach().contiguous() for key, value in scorer.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / TRAINING_FILE).write_text(json.dumps(dict(training or {}), indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")
    return path


# ---------------------------------------------------------------- the scorer

def clip_source(pretrained: PretrainedClip | None, model_dir: str | os.PathLike = "models/clip") -> dict[str, str]:
    """Which CLIP the stages use: {"kind": "pretrained", "model", "pretrained"} when params.yaml's
    `clip.pretrained` names one, else {"kind": "local", "path": model_dir}."""
    if pretrained is None:
        return {"kind": "local", "path": str(model_dir)}
    return {"kind": "pretrained", "model": pretrained.model, "pretrained": pretrained.pretrained}


class ClipScorer:
    """Image and text embeddings (L2-normalised numpy float32) and per-pair cosine similarity.

    Batched and gradient-free. Images may be PIL images or paths (relative paths are
    resolved against `root`, normally the data root).
    """

    def __init__(self, model, preprocess, tokenizer, *, name: str, config: Mapping[str, Any] | None = None,
                 batch_size: int = 256, root: str | os.PathLike | None = None):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.config = dict(config) if config is not None else None
        self.batch_size = int(batch_size)
        self.root = root

    @classmethod
    def load(cls, path: str | os.PathLike = "models/clip", **kwargs: Any) -> "ClipScorer":
        """A model saved by `save_clip` (any open_clip local-dir folder)."""
        import open_clip

        path = Path(path)
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no open_clip config; run the clip stage first")
        if not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path / WEIGHTS_FILE}: no CLIP weights; run the clip stage first")
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        return cls(model, preprocess, tokenizer, name=str(path), config=config, **kwargs)

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str | None = None, **kwargs: Any) -> "ClipScorer":
        """An open_clip pretrained model by name and tag (downloads unless it is cached)."""
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained or None)
        tokenizer = open_clip.get_tokenizer(model_name)
        return cls(model, preprocess, tokenizer, name=f"{model_name}:{pretrained or ''}", **kwargs)

    @classmethod
    def selected(cls, pretrained: PretrainedClip | None, *, threads: int, model_dir: str | os.PathLike = "models/clip",
                 **kwargs: Any) -> "ClipScorer":
        """The CLIP that params.yaml selects (`clip.pretrained`, else the trained one in `model_dir`)."""
        set_threads(threads)
        source = clip_source(pretrained, model_dir)
        if source["kind"] == "pretrained":
            return cls.from_pretrained(source["model"], source["pretrained"], **kwargs)
        return cls.load(source["path"], **kwargs)

    def _embed(self, items: Sequence[Any], encode, desc: str):
        import numpy as np
        import torch

        chunks = []
        with torch.no_grad():
            for start in progress(range(0, len(items), self.batch_size), desc=desc):
                features = encode(items[start:start + self.batch_size])
                chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).numpy())
        if not chunks:
            width = int(getattr(self.model, "embed_dim", 0) or self.model.text_projection.shape[-1])
            return np.zeros((0, width), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def embed_images(self, images: Sequence[Any], *, desc: str = "clip images"):
        """(N, D) unit-norm image embeddings."""
        import torch

        def encode(batch):
            pixels = torch.stack([self.preprocess(open_image(image, self.root)) for image in batch])
            return self.model.encode_image(pixels)

        return self._embed(list(images), encode, desc)

    def embed_texts(self, texts: Sequence[str], *, desc: str = "clip texts"):
        """(N, D) unit-norm text embeddings."""
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"embed_texts: texts[{position}] is {type(text).__name__}, not str")
        return self._embed(list(texts), lambda batch: self.model.encode_text(self.tokenizer(batch)), desc)

    def score(self, images: Sequence[Any], texts: Sequence[str]):
        """Cosine similarity of each (image, text) pair, shape (N,)."""
        if len(images) != len(texts):
            raise ValueError(f"score: {len(images)} images but {len(texts)} texts")
        return (self.embed_images(images) * self.embed_texts(texts)).sum(axis=1)


# ---------------------------------------------------------------- retrieval evaluation

def retrieval_accuracy(image_embeddings, text_embeddings, captions: Sequence[str], *, candidates: int = 10,
                       seed: int = 0) -> dict[str, float]:
    """Accuracy of picking the true pair among `candidates` (1 true + distractors of other images).

    Distractor captions identical to the true caption are skipped (they would be ties, not errors).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    count = len(captions)
    if count < candidates:
        raise ValueError(f"retrieval_accuracy: {count} items, fewer than {candidates} candidates")
    image_hits, text_hits = [], []
    for index in range(count):
        others = [j for j in rng.permutation(count) if j != index and captions[j] != captions[index]]
        distractors = others[:candidates - 1]
        group = [index, *distractors]
        # image -> text: the true caption must beat the distractor captions.
        text_scores = text_embeddings[group] @ image_embeddings[index]
        image_hits.append(int(np.argmax(text_scores) == 0))
        # text -> image: the true image must beat the distractor images.
        image_scores = image_embeddings[group] @ text_embeddings[index]
        text_hits.append(int(np.argmax(image_scores) == 0))
    return {"img2txt": float(np.mean(image_hits)), "txt2img": float(np.mean(text_hits)), "n": count,
            "candidates": candidates}


def one_attribute_variants(caption: str, vocabularies: Sequence[Sequence[str]]) -> list[str]:
    """Every caption that differs from `caption` in exactly one attribute word (a colour for
    another colour, a shape for another shape, ...)."""
    variants: list[str] = []
    for vocabulary in vocabularies:
        words = [str(word) for word in vocabulary]
        pattern = re.compile(r"\b(" + "|".join(re.escape(word) for word in words) + r")\b")
        for match in pattern.finditer(caption):
            for replacement in words:
                if replacement == match.group(0):
                    continue
                variant = caption[:match.start()] + replacement + caption[match.end():]
                if variant != caption and variant not in variants:
                    variants.append(variant)
    return variants


def hard_retrieval_accuracy(scorer: ClipScorer, image_embeddings, captions: Sequence[str],
                            vocabularies: Sequence[Sequence[str]], *, candidates: int = 10,
                            seed: int = 0) -> dict[str, float]:
    """img->txt accuracy when the distractors are the true caption with one attribute changed.

    Items with no such variant are skipped; with fewer variants than `candidates - 1`
    all of them are used, so `chance` reports the mean of 1 / group size.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    groups, owners = [], []
    for index, caption in enumerate(captions):
        variants = one_attribute_variants(caption, vocabularies)
        if not variants:
            continue
        picked = [variants[i] for i in rng.permutation(len(variants))[:candidates - 1]]
        groups.append([caption, *picked])
        owners.append(index)
    if not groups:
        return {"img2txt": None, "n": 0, "chance": None}
    flat = [text for group in groups for text in group]
    text_embeddings = scorer.embed_texts(flat, desc="clip hard captions")
    hits, chance, offset = [], [], 0
    for owner, group in zip(owners, groups):
        scores = text_embeddings[offset:offset + len(group)] @ image_embeddings[owner]
        hits.append(int(np.argmax(scores) == 0))
        chance.append(1.0 / len(group))
        offset += len(group)
    return {"img2txt": float(np.mean(hits)), "n": len(groups), "chance": float(np.mean(chance)),
            "mean_candidates": float(np.mean([len(group) for group in groups]))}


def evaluate_retrieval(scorer: ClipScorer, images: Sequence[Any], captions: Sequence[str], *,
                       vocabularies: Sequence[Sequence[str]] = (), candidates: int = 10,
                       seed: int = 0) -> dict[str, Any]:
    """Retrieval among `candidates` on held-out images (one caption each), plus the hard variant."""
    image_embeddings = scorer.embed_images(images, desc="clip eval images")
    text_embeddings = scorer.embed_texts(captions, desc="clip eval captions")
    result: dict[str, Any] = {"random": retrieval_accuracy(image_embeddings, text_embeddings, captions,
                                                           candidates=candidates, seed=seed)}
    if vocabularies:
        result["one_attribute"] = hard_retrieval_accuracy(scorer, image_embeddings, captions, vocabularies,
                                                          candidates=candidates, seed=seed)
    return result
