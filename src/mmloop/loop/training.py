"""Supervised fine-tuning of the VLM on sample records.

Two entry points share one loop:
- `train_base`: the embedded tiny LLaVA's first training, projector plus language
  model, vision tower frozen;
- `train_lora`: one loop iteration, LoRA on the language model's projections
  (scoped by regex so the vision tower is never wrapped) plus the projector as a
  fully trained module; the adapter is merged afterwards so the next iteration
  loads a plain model through the same Auto* path as every other stage.

The loss covers the assistant replies only: the chat template marks them with
`{% generation %}`, the processor returns `assistant_masks`, and every other
token (system, user, image, padding) gets label -100.

Images are decoded once and held as uint8 arrays; each batch goes through one
batched processor call. Shuffling, init and dropout are seeded, so the same
records and params give the same model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.config import BaseConfig, Optimisation, TrainConfig

IGNORE_INDEX = -100
# LoRA goes on the language model's projections only: peft's plain name list
# ("q_proj", ...) would also wrap the CLIP tower's q/k/v projections.
LORA_TARGET_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PROJECTOR_MODULE = "multi_modal_projector"
# Length-grouped batching sorts rows by length within windows of this many batches.
LENGTH_GROUP_BATCHES = 32


def load_images(records: Sequence[Mapping[str, Any]], data_root: str | os.PathLike, *,
                source: str = "records") -> dict[str, Any]:
    """{image path: RGB uint8 array} for every distinct image of `records`, each decoded once."""
    import numpy as np
    from PIL import Image

    data_root = Path(data_root)
    cache: dict[str, Any] = {}
    for record in records:
        image = record.get("image")
        if not image:
            raise ValueError(f"{source}: record {record.get('sample_id')!r}: field 'image' is empty "
                             f"(training needs an image per sample)")
        if image in cache:
            continue
        path = data_root / image
        try:
            with Image.open(path) as handle:
                cache[image] = np.array(handle.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise FileNotFoundError(f"{source}: record {record.get('sample_id')!r}: field 'image': "
                                    f"{path} not found") from None
    return cache


def _check_conversation(record: Mapping[str, Any], source: str) -> None:
    turns = record.get("conversations") or []
    if not any(turn.get("role") == "assistant" for turn in turns):
        raise ValueError(f"{source}: record {record.get('sample_id')!r}: field 'conversations' has no "
                         f"assistant turn to train on")
    if not turns or turns[0].get("role") not in ("user", "system"):
        raise ValueError(f"{source}: record {record.get('sample_id')!r}: field 'conversations' must start "
                         f"with a user or system turn")


def encode_records(processor, records: Sequence[Mapping[str, Any]], images: Mapping[str, Any], *,
                   chunk: int = 256) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record through batched processor calls; labels keep the
    assistant tokens' ids and put -100 everywhere else (system, user, image tokens)."""
    from mmloop.models.vlm import messages

    encoded = []
    for start in range(0, len(records), chunk):
        part = records[start:start + chunk]
        # Lists, not tensors: the processor's assistant-mask pass is ~10x slower on tensors.
        out = processor.apply_chat_template(
            [messages(record["conversations"]) for record in part], tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True, return_tensors=None,
            processor_kwargs={"images": [[images[record["image"]]] for record in part]},
        )
        for ids, mask in zip(out["input_ids"], out["assistant_masks"]):
            encoded.append((list(ids), [token if keep else IGNORE_INDEX for token, keep in zip(ids, mask)]))
    return encoded


def collate(processor, encoded: Sequence[tuple[list[int], list[int]]], image_arrays: Sequence[Any]):
    """Right-padded tensors for one batch; pixel values from the cached uint8 images."""
    import torch

    pad_id = processor.tokenizer.pad_token_id
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(encoded):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(ids)] = torch.tensor(row_labels)
        attention[row, :len(ids)] = 1
    pixels = processor.image_processor(list(image_arrays), return_tensors="pt")["pixel_values"]
    return {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixels, "labels": labels}


def encode_batch(processor, records: Sequence[Mapping[str, Any]], images: Mapping[str, Any]):
    """Tensors with labels for one batch of records (what `fit` feeds the model)."""
    return collate(processor, encode_records(processor, records, images),
                   [images[record["image"]] for record in records])


def draw_replay(pool: Sequence[Mapping[str, Any]], new: int, ratio: float, *, seed: int) -> list[Mapping[str, Any]]:
    """`ratio * new` records drawn without replacement from the replay pool (all of it when smaller),
    so each round also rehearses the seed and earlier rounds' data instead of forgetting them."""
    import numpy as np

    if ratio < 0:
        raise ValueError(f"params.yaml: train.replay_ratio must be >= 0, got {ratio}")
    count = min(len(pool), int(round(ratio * new)))
    chosen = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[int(index)] for index in sorted(chosen)]


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_plan(lengths: Sequence[int], batch_size: int, total_steps: int, seed: int,
               group: int = LENGTH_GROUP_BATCHES) -> list[list[int]]:
    """Row indices of every step's batch, `total_steps` of them.

    Each epoch is a seeded permutation cut into windows of `group` batches; within a window
    rows are sorted by length before batching, and the batches are shuffled again. Batches
    then hold sequences of similar length, so padding (a long seed conversation among short
    generated items) no longer multiplies the cost of a step, while the order stays random.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    plan: list[list[int]] = []
    while len(plan) < total_steps:
        order = rng.permutation(len(lengths))
        epoch = []
        window = batch_size * group
        for start in range(0, len(order), window):
            rows = sorted(order[start:start + window].tolist(), key=lambda row: lengths[row])
            epoch += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        plan += [epoch[i] for i in rng.permutation(len(epoch))]
    return plan[:total_steps]


class Checkpoint:
    """Resumable training state in one file, written atomically every few steps.

    The key hashes what determines the run (records, settings, the starting weights'
    trainable names), so a rerun of the same training after a crash resumes where the
    last checkpoint left it, and any other run starts afresh.
    """

    def __init__(self, path: str | os.PathLike | None, key: str):
        self.path = Path(path) if path else None
        self.key = key

    def load(self):
        import torch

        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        return state if state.get("key") == self.key else None

    def save(self, model, optimizer, scheduler, step: int, losses: list[float], tokens: int, samples: int) -> None:
        import torch

        from mmloop.io import atomic_path

        if self.path is None:
            return
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        state = {"key": self.key, "step": step, "losses": losses, "tokens": tokens, "samples": samples,
                 "model": {name: value for name, value in model.state_dict().items() if name in trainable},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def fit(model, processor, records: Sequence[Mapping[str, Any]], settings: Optimisation, *, seed: int,
        data_root: str | os.PathLike = "data", source: str = "records", desc: str = "train",
        images: Mapping[str, Any] | None = None, checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 50) -> dict[str, Any]:
    """Train the parameters of `model` that require grad. Returns stats
    {steps, samples, epochs, samples_per_s, tokens_per_s, final_loss, losses, wall_s, resumed_from}.

    With `checkpoint` (a file path) the state is saved every `checkpoint_every` steps and a
    rerun of the same training resumes from it; the file is removed when training ends.
    """
    import numpy as np
    import torch

    from mmloop.io import progress, stable_hash
    from mmloop.models.vlm import set_threads

    if not records:
        raise ValueError(f"{source}: no records to train on")
    for record in records:
        _check_conversation(record, source)
    set_threads(settings.threads)
    torch.manual_seed(seed)
    started = time.perf_counter()
    images = images if images is not None else load_images(records, data_root, source=source)
    encoded = encode_records(processor, records, images)
    encode_s = time.perf_counter() - started

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    per_epoch = math.ceil(len(records) / settings.batch_size)
    total_steps = max(1, round(per_epoch * settings.epochs))
    warmup = int(settings.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _schedule(step, total_steps, warmup))
    plan = batch_plan([len(ids) for ids, _ in encoded], settings.batch_size, total_steps, seed)

    # The run's identity: settings, records, and the starting values of what it trains.
    start = [[name, round(float(p.detach().double().sum()), 6)] for name, p in named]
    saver = Checkpoint(checkpoint, stable_hash(settings.model_dump(), seed, [record.get("sample_id") for record in records],
                                               start))
    losses: list[float] = []
    tokens = samples = step = 0
    state = saver.load()
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses, tokens, samples = state["step"], state["losses"], state["tokens"], state["samples"]
    resumed_from = step

    model.train()
    bar = progress(total=total_steps, initial=step, desc=desc, unit="step")
    for rows in plan[step:]:
        batch = collate(processor, [encoded[i] for i in rows], [images[records[i]["image"]] for i in rows])
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        tokens += int(batch["attention_mask"].sum())
        samples += len(rows)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step % checkpoint_every == 0 and step < total_steps:
            saver.save(model, optimizer, scheduler, step, losses, tokens, samples)
    bar.close()
    model.eval()
    saver.clear()
    wall = time.perf_counter() - started
    tail = losses[-max(1, len(losses) // 20):]
    return {
        "steps": step, "samples": samples, "records": len(records),
        "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
        "samples_per_s": samples / wall, "tokens_per_s": tokens / wall,
        "first_loss": losses[0], "final_loss": float(np.mean(tail)), "resumed_from": resumed_from,
        "losses": [round(value, 4) for value in losses], "wall_s": wall, "encode_s": encode_s,
    }


def freeze_vision_tower(model) -> None:
    """Projector and language model train; the vision tower stays as built."""
    model.requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)


def train_base(model, processor, records: Sequence[Mapping[str, Any]], settings: BaseConfig, *, seed: int,
               data_root: str | os.PathLike = "data", source: str = "seed",
               checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Full training of projector + language model (vision tower frozen), in place."""
    from mmloop.models.vlm import trainable_parameters

    freeze_vision_tower(model)
    trainable, total = trainable_parameters(model)
    stats = fit(model, processor, records, settings, seed=seed, data_root=data_root, source=source, desc="base",
                checkpoint=checkpoint)
    return {**stats, "trainable_parameters": trainable, "parameters": total}


def lora_config(settings: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, bias="none",
                      target_modules=LORA_TARGET_REGEX, modules_to_save=[PROJECTOR_MODULE])


def wrap_lora(model, settings: TrainConfig, *, seed: int):
    """The peft model: LoRA on the language model's projections, the projector fully trainable."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed)
    model.requires_grad_(False)
    return get_peft_model(model, lora_config(settings))


def train_lora(model, processor, records: Sequence[Mapping[str, Any]], settings: TrainConfig, *, seed: int,
               data_root: str | os.PathLike = "data", source: str = "records",
               checkpoint: str | os.PathLike | None = None):
    """LoRA fine-tuning; returns (peft_model, stats). Call `save_lora` to merge and save."""
    from mmloop.models.vlm import trainable_parameters

    peft_model = wrap_lora(model, settings, seed=seed)
    trainable, total = trainable_parameters(peft_model)
    stats = fit(peft_model, processor, records, settings, seed=seed, data_root=data_root, source=source,
                desc="lora",
                checkpoint=checkpoint)
    return peft_model, {**stats, "trainable_parameters": trainable, "parameters": total,
                        "lora": {"r": settings.lora_r, "alpha": settings.lora_alpha,
                                 "dropout": settings.lora_dropout}}


def save_lora(peft_model, processor, out_dir: str | os.PathLike) -> Path:
    """Save the adapter in <out>/adapter, then the merged full model in <out>."""
    from mmloop.models.vlm import save

    out_dir = Path(out_dir)
    peft_model.save_pretrained(out_dir / "adapter")
    merged = peft_model.merge_and_unload()
    save(merged, processor, out_dir)
    return out_dir
