"""Supervised fine-tuning of a VLM on sample records, on the transformers Trainer.

Two entry points:
- `train_base`: the embedded tiny LLaVA's first training: projector and language model,
  the vision tower frozen;
- `train_lora`: one loop iteration: LoRA on the decoder's linear layers, the projector
  trained fully (peft's `modules_to_save`), the vision tower frozen unless
  `train.train_vision`; the adapter is merged afterwards so the next iteration loads a plain
  model through the same Auto* path as every other stage. What those modules are called in
  each family is `models.architectures`' business.

Why the transformers Trainer and not TRL's SFTTrainer: the loss mask comes from the model's
own chat template turn by turn (`models.chat.reply_spans`), and batches must keep every
processor output (`image_grid_thw`, `pixel_attention_mask`, `token_type_ids`, ...) and never
be truncated. SFTTrainer's vision path truncates by default, which cuts image tokens out of
the sequence (TRL #4289, #5285), and its assistant-only loss needs `{% generation %}` tags
that most published templates lack. With the Trainer, collation is ours and the rest is the
standard stack: accelerate (`accelerate launch` for data-parallel, mixed precision), the
learning-rate schedule, length-grouped batches, checkpoints and resume, gradient
checkpointing, and logging callbacks (DVCLive).

The loss covers each assistant reply and its end-of-turn token, nothing else. A record with
no such token or a non-finite loss stops training with an error naming the samples: a round
that learns nothing is an error, not a result.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.config import BaseConfig, Optimisation, TrainConfig

IGNORE_INDEX = -100
RUN_KEY_FILE = "mmloop-run.json"
KEPT_TOKENS = 50_000_000  # token-side values the collator keeps across epochs (int32: 200 MB)


class TrainingError(RuntimeError):
    """Training produced nothing to learn from (a non-finite loss, no label tokens)."""


class ImageFiles(Mapping):
    """{image path: RGB uint8 array} for the images of `records`, decoded when a batch asks for
    them: a real dataset's images do not fit in memory decoded. Every file is checked to exist up
    front, so a missing one fails before training starts, naming its record. The `cache` most
    recently used images stay decoded (the tiny default's whole set fits)."""

    def __init__(self, records: Sequence[Mapping[str, Any]], data_root: str | os.PathLike, *,
                 source: str = "records", cache: int = 8192):
        import functools

        data_root = Path(data_root)
        self._paths: dict[str, Path] = {}
        for record in records:
            image = record.get("image")
            if not image:
                raise ValueError(f"{source}: record {record.get('sample_id')!r}: field 'image' is empty "
                                 f"(training needs an image per sample)")
            if image not in self._paths:
                path = data_root / image
                if not path.is_file():
                    raise FileNotFoundError(f"{source}: record {record.get('sample_id')!r}: field 'image': "
                                            f"{path} not found")
                self._paths[image] = path
        self._decode = functools.lru_cache(maxsize=cache)(self._read)

    def _read(self, image: str):
        import numpy as np
        from PIL import Image

        with Image.open(self._paths[image]) as handle:
            return np.array(handle.convert("RGB"), dtype=np.uint8)

    def __getitem__(self, image: str):
        if image not in self._paths:
            raise KeyError(image)
        return self._decode(image)

    def __iter__(self):
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def draw_replay(pool: Sequence[Mapping[str, Any]], new: int, ratio: float, *, seed: int) -> list[Mapping[str, Any]]:
    """`ratio * new` records drawn without replacement from the replay pool (all of it when smaller),
    so each round also rehearses the seed and earlier rounds' data instead of forgetting them."""
    import numpy as np

    if ratio < 0:
        raise ValueError(f"params.yaml: train.replay_ratio must be >= 0, got {ratio}")
    count = min(len(pool), int(round(ratio * new)))
    chosen = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[int(index)] for index in sorted(chosen)]


def _check_conversation(record: Mapping[str, Any], source: str) -> None:
    turns = record.get("conversations") or []
    if not any(turn.get("role") == "assistant" for turn in turns):
        raise ValueError(f"{source}: record {record.get('sample_id')!r}: field 'conversations' has no "
                         f"assistant turn to train on")
    if not turns or turns[0].get("role") not in ("user", "system"):
        raise ValueError(f"{source}: record {record.get('sample_id')!r}: field 'conversations' must start "
                         f"with a user or system turn")
    for index, turn in enumerate(turns):
        if turn.get("role") == "assistant" and not str(turn.get("content") or "").strip():
            raise ValueError(f"{source}: record {record.get('sample_id')!r}: field 'conversations' turn {index}: "
                             f"the assistant reply is empty, so there is nothing to train on")


def encode(processor, records: Sequence[Mapping[str, Any]], source: str = "records") -> list[dict[str, Any]]:
    """One training example per record: the rendered conversation, its tokens (text only, the image
    placeholder unexpanded) and which of them the loss trains on. The image tokens are added by
    the processor in the collator; `aligned_labels` finds the trained tokens again there."""
    from mmloop.models.chat import adds_special_tokens, messages, reply_spans, token_mask

    texts, spans = [], []
    for record in records:
        _check_conversation(record, source)
        text, record_spans = reply_spans(processor, messages(record["conversations"]),
                                         source=f"{source}: record {record.get('sample_id')!r}")
        texts.append(text)
        spans.append(record_spans)
    if not texts:
        return []
    tokens = processor.tokenizer(texts, add_special_tokens=adds_special_tokens(processor, texts[0]),
                                 return_offsets_mapping=True)
    examples = []
    for record, text, record_spans, ids, offsets in zip(records, texts, spans, tokens["input_ids"],
                                                        tokens["offset_mapping"]):
        mask = token_mask(offsets, record_spans)
        if not any(mask):
            raise TrainingError(f"{source}: record {record.get('sample_id')!r}: field 'conversations': no token "
                                f"of the assistant replies is left to train on")
        examples.append({"sample_id": record.get("sample_id"), "image": record["image"], "text": text,
                         "input_ids": list(ids), "mask": mask})
    return examples


def aligned_labels(row_ids: Sequence[int], example: Mapping[str, Any], source: str) -> list[int]:
    """Labels for the processor's tokens of one example: the ids of the tokens `example["mask"]`
    marks, found in `row_ids` (which hold the expanded image tokens too, so they are longer), -100
    elsewhere. The trained tokens sit after the image, so they are first looked for at the same
    distance from the end; a processor that appends text of its own is searched."""
    ids, mask = example["input_ids"], example["mask"]
    marked = [i for i, keep in enumerate(mask) if keep]
    first, last = marked[0], marked[-1]
    wanted = list(ids[first:last + 1])
    shift = len(row_ids) - len(ids)
    candidates = [shift] + [d for d in range(-first, len(row_ids) - last) if d != shift]
    for d in candidates:
        if list(row_ids[first + d:last + d + 1]) == wanted:
            labels = [IGNORE_INDEX] * len(row_ids)
            for i in marked:
                labels[i + d] = ids[i]
            return labels
    raise TrainingError(f"{source}: record {example['sample_id']!r}: the processor's tokens do not contain the "
                        f"reply tokens of the rendered conversation; cannot place the labels")


class Collator:
    """A batch from examples: one processor call on the rendered texts with each example's image
    (a list per prompt), every output it returns kept, then the labels. Never truncates.
    `reply_token_types` (the architecture's): the value per-token outputs take from the first
    reply token on (PaliGemma's prefix-LM: the suffix attends causally).

    An example's token side (ids with the image tokens expanded, per-token outputs, labels) is the
    same in every epoch, so it is kept after the first time and later batches run only the image
    processor on their images: tokenising and placing labels was most of a collation, which is
    a few percent of a small model's step. The first such batch is checked against the full
    processor call; a processor whose outputs differ (one that passes the image processor
    settings of its own) keeps the full call for the rest of training."""

    def __init__(self, processor, images: Mapping[str, Any], source: str = "records",
                 reply_token_types: Mapping[str, int] | None = None):
        self.processor, self.images, self.source = processor, images, source
        self.reply_token_types = dict(reply_token_types or {})
        self.rows: dict[tuple, dict[str, Any]] | None = {}  # example -> its unpadded token-side outputs
        self.kept_tokens = 0
        self.image_keys: list[str] = []  # the processor outputs that come from the image processor
        self.token_dtypes: dict[str, Any] = {}  # the per-token outputs kept in `rows`, and their dtypes
        self.checked = False  # whether a batch from `rows` has matched the full processor call

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        keys = [(example["sample_id"], example["image"], example["text"]) for example in examples]
        arrays = [self.images[example["image"]] for example in examples]
        if self.rows is None or not all(key in self.rows for key in keys):
            batch = self._processed(examples, arrays)
            if self.rows is not None:
                self._keep_rows(keys, batch)
            return batch
        if self.checked:
            return {**self._from_rows(keys, arrays), "sample_ids": [example["sample_id"] for example in examples]}
        full = self._processed(examples, arrays)
        try:
            self.checked = _same_batch(self._from_rows(keys, arrays), full)
        except (KeyError, TypeError, ValueError):  # an image processor that cannot run on its own
            self.checked = False
        if not self.checked:
            self.rows = None
        return full

    def _processed(self, examples: Sequence[Mapping[str, Any]], arrays: Sequence[Any]) -> dict[str, Any]:
        import torch

        from mmloop.models.chat import encode

        batch = encode(self.processor, [example["text"] for example in examples], arrays)
        ids, attention = batch["input_ids"], batch["attention_mask"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, example in enumerate(examples):
            length = int(attention[row].sum())
            labels[row, :length] = torch.tensor(aligned_labels(ids[row, :length].tolist(), example, self.source))
            first = int((labels[row] != IGNORE_INDEX).nonzero()[0])
            for key, value in self.reply_token_types.items():
                if key in batch:
                    batch[key][row, first:length] = value
        batch["labels"] = labels
        batch["sample_ids"] = [example["sample_id"] for example in examples]
        return batch

    def _keep_rows(self, keys: Sequence[tuple], batch: Mapping[str, Any]) -> None:
        import torch

        shape = batch["input_ids"].shape
        names = [name for name, value in batch.items() if getattr(value, "shape", None) == shape]
        self.image_keys = [name for name in batch if name not in names and name != "sample_ids"]
        self.token_dtypes = {name: batch[name].dtype for name in names}
        for row, key in enumerate(keys):
            length = int(batch["attention_mask"][row].sum())
            if self.kept_tokens + length * len(names) > KEPT_TOKENS:
                return
            self.kept_tokens += length * len(names)
            # int32 halves what is kept; every id, label and mask value fits
            self.rows[key] = {name: batch[name][row, :length].to(torch.int32) for name in names}

    def _from_rows(self, keys: Sequence[tuple], arrays: Sequence[Any]) -> dict[str, Any]:
        """The batch from kept token sides (right-padded as the processor pads) and one
        image-processor call."""
        import torch

        rows = [self.rows[key] for key in keys]
        width = max(len(row["input_ids"]) for row in rows)
        pad = {"input_ids": self.processor.tokenizer.pad_token_id, "labels": IGNORE_INDEX}
        batch = {}
        for name, dtype in self.token_dtypes.items():
            padded = torch.full((len(rows), width), pad.get(name, 0), dtype=dtype)
            for index, row in enumerate(rows):
                padded[index, :len(row[name])] = row[name]
            batch[name] = padded
        # what the processor keeps of the image processor's outputs (Gemma 3's drops `num_crops`)
        image_side = self.processor.image_processor(images=[[array] for array in arrays], return_tensors="pt")
        return {**batch, **{name: image_side[name] for name in self.image_keys}}


def _same_batch(batch: Mapping[str, Any], full: Mapping[str, Any]) -> bool:
    import torch

    tensors = {key for key, value in full.items() if isinstance(value, torch.Tensor)}
    return tensors == {key for key, value in batch.items() if isinstance(value, torch.Tensor)} and all(
        batch[key].shape == full[key].shape and torch.equal(batch[key], full[key]) for key in tensors)


def _trainer_class():
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededSampler(LengthGroupedSampler):
        """transformers' length-grouped order (batches of similar length, so a long seed conversation
        among short items does not multiply a step's padding), drawn from (seed, epoch) alone: a
        resumed run replays exactly the order the killed one had."""

        def __init__(self, batch_size: int, lengths: list[int], seed: int):
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
            return super().__iter__()

    class SupervisedTrainer(Trainer):
        """The Trainer, with seeded length-grouped batches, stopping on a non-finite loss with the
        batch's sample ids (and `source`, the file they came from)."""

        source = "records"

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return EpochSeededSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                      [len(example["input_ids"]) for example in dataset], self.args.data_seed)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            # A full model's checkpoint is written by save_pretrained, which renames keys to the
            # family's hub layout (LLaVA: "language_model.model..."); the Trainer loads it back with
            # a plain load_state_dict, misses every key and resumes from the starting weights. Load
            # it through from_pretrained, which maps the names back. Adapters load the Trainer's way.
            model = model if model is not None else self.model
            if (Path(resume_from_checkpoint) / "adapter_config.json").is_file():
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            from transformers import AutoModelForImageTextToText

            saved = AutoModelForImageTextToText.from_pretrained(resume_from_checkpoint, dtype=model.dtype)
            model.load_state_dict(saved.state_dict())

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            sample_ids = inputs.pop("sample_ids", None)
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            loss = result[0] if return_outputs else result
            if not bool(torch.isfinite(loss.detach()).all()):
                raise TrainingError(f"{self.source}: the loss is {float(loss.detach().float().mean())} at step "
                                    f"{self.state.global_step + 1} on samples {sample_ids}; nothing is saved. "
                                    f"Lower the learning rate, check the data, or train in float32")
            return result

    return SupervisedTrainer


def _checkpoints(output_dir: Path, key: str) -> int:
    """The step of the newest checkpoint of this same run in `output_dir` (0: none). Checkpoints of
    any other run (other records, settings or starting weights) are removed."""
    from mmloop.io import read_json, write_json

    key_file = output_dir / RUN_KEY_FILE
    if output_dir.is_dir() and (not key_file.is_file() or read_json(key_file).get("key") != key):
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(key_file, {"key": key})
    steps = [int(path.name.split("-")[-1]) for path in output_dir.glob("checkpoint-*")
             if path.name.split("-")[-1].isdigit() and (path / "trainer_state.json").is_file()]
    return max(steps, default=0)


def fit(model, processor, records: Sequence[Mapping[str, Any]], settings: Optimisation, *, seed: int,
        data_root: str | os.PathLike = "data", source: str = "records", images: Mapping[str, Any] | None = None,
        output_dir: str | os.PathLike | None = None, live_dir: str | os.PathLike | None = None,
        precision: str = "float32", device: str = "cpu") -> dict[str, Any]:
    """Train the parameters of `model` that require grad. Returns stats
    {steps, samples, records, samples_per_s, tokens_per_s, first_loss, final_loss, losses, wall_s,
    encode_s, resumed_from}.

    `output_dir` keeps the Trainer's checkpoints every `settings.save_steps` steps: a rerun of the
    same training after a crash resumes from the newest one, and the folder is removed when
    training ends. `live_dir`: DVCLive logs the step-level loss and learning rate there.
    `precision` "bfloat16" / "float16" trains in that mixed precision; `device` "cpu" keeps the
    Trainer off any accelerator.
    """
    import tempfile

    from transformers import TrainingArguments

    from mmloop.io import stable_hash
    from mmloop.models.architectures import architecture
    from mmloop.models.vlm import quiet_library_progress

    if not records:
        raise ValueError(f"{source}: no records to train on")
    quiet_library_progress()
    started = time.perf_counter()
    images = images if images is not None else ImageFiles(records, data_root, source=source)
    examples = encode(processor, records, source)
    encode_s = time.perf_counter() - started

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise TrainingError(f"{source}: the model has no trainable parameter")
    # The run's identity: settings, records, and the starting values of what it trains.
    start = [[name, round(float(p.detach().double().sum()), 6)] for name, p in named]
    key = stable_hash(settings.model_dump(), seed, precision, [record.get("sample_id") for record in records], start)
    scratch = tempfile.TemporaryDirectory(prefix="mmloop-train-") if output_dir is None else None
    output_dir = Path(scratch.name if scratch else output_dir)

    args = TrainingArguments(**trainer_arguments(settings, output_dir, checkpoints=scratch is None, seed=seed,
                                                 precision=precision, device=device),
                             include_num_input_tokens_seen="non_padding")
    with args.main_process_first(local=False):
        resumed_from = _checkpoints(output_dir, key)
    trainer = _trainer_class()(model=model, args=args, train_dataset=examples,
                               data_collator=Collator(processor, images, source,
                                                      architecture(model).reply_token_types),
                               callbacks=live_callbacks(live_dir, args, resumed_from))
    trainer.source = source
    quiet_printer(trainer)
    result = run_trainer(trainer, output_dir, resumed_from, scratch)
    wall = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    runtime = result.metrics["train_runtime"]
    return {
        "steps": trainer.state.global_step, "records": len(records),
        "samples": round(result.metrics["train_samples_per_second"] * runtime),
        "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
        "samples_per_s": result.metrics["train_samples_per_second"],
        "tokens_per_s": trainer.state.num_input_tokens_seen / runtime if runtime else 0.0,
        "first_loss": losses[0], "final_loss": losses[-1], "resumed_from": resumed_from,
        "losses": [round(value, 4) for value in losses], "wall_s": wall, "encode_s": encode_s,
        "precision": precision, "processes": args.world_size,
    }


def trainer_arguments(settings: Optimisation, output_dir: str | os.PathLike, *, checkpoints: bool, seed: int,
                      precision: str, device: str) -> dict[str, Any]:
    """The Trainer arguments every mmloop training shares (`fit`, `preference.train_preference`), as
    keywords for TrainingArguments or a subclass of it (TRL's configs): the settings' optimisation, a
    cosine schedule to a tenth of the rate, seeded order, the first step logged, checkpoints every
    `settings.save_steps` when `checkpoints`, `precision`'s mixed precision, `device` "cpu" keeping
    the Trainer off any accelerator, and no bars or reports outside a terminal."""
    from mmloop.io import show_progress

    return dict(
        output_dir=str(output_dir), per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs, learning_rate=settings.lr, weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, max_grad_norm=settings.max_grad_norm,
        seed=seed, data_seed=seed,
        logging_steps=settings.logging_steps, logging_first_step=True,
        save_strategy="steps" if checkpoints else "no", save_steps=settings.save_steps, save_total_limit=1,
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
        bf16=precision == "bfloat16", fp16=precision == "float16", use_cpu=device == "cpu",
        remove_unused_columns=False, dataloader_pin_memory=False,
        report_to="none", disable_tqdm=not show_progress(), log_level="warning",
    )


def live_callbacks(live_dir: str | os.PathLike | None, args, resumed_from: int) -> list:
    """[DVCLive's callback logging to `live_dir`] ([] without one), continuing its logs when the run
    resumes from a checkpoint."""
    if live_dir is None:
        return []
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    # One logger, on the main process: a Live object clears its folder when it starts.
    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None, resume=bool(resumed_from)) \
        if args.process_index == 0 else None
    return [DVCLiveCallback(live=live)]


def quiet_printer(trainer) -> None:
    """Without a progress bar the Trainer prints every log line; CI stays quiet."""
    from mmloop.io import show_progress

    if not show_progress():
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)


def run_trainer(trainer, output_dir: Path, resumed_from: int, scratch=None):
    """`trainer.train()`, resumed from checkpoint-<resumed_from> of `output_dir` when that is not 0.
    The `scratch` folder (a TemporaryDirectory standing in for `output_dir`) is removed whatever
    happens; a kept `output_dir` once training has ended, by the main process; the model is left in
    eval mode. Returns the Trainer's TrainOutput."""
    try:
        result = trainer.train(resume_from_checkpoint=str(output_dir / f"checkpoint-{resumed_from}")
                               if resumed_from else None)
    finally:
        if scratch is not None:
            scratch.cleanup()
    trainer.model.eval()
    if trainer.is_world_process_zero() and scratch is None:
        shutil.rmtree(output_dir, ignore_errors=True)
    return result


def is_main_process() -> bool:
    """Whether this is the process that writes outputs (the only one, unless under `accelerate launch`)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def freeze_vision_tower(model) -> None:
    """Everything trains but the vision tower."""
    from mmloop.models.architectures import architecture, submodule

    model.requires_grad_(True)
    submodule(model, architecture(model).vision).requires_grad_(False)


def train_base(model, processor, records: Sequence[Mapping[str, Any]], settings: BaseConfig, *, seed: int,
               data_root: str | os.PathLike = "data", source: str = "seed", **run: Any) -> dict[str, Any]:
    """Full training of projector + language model (vision tower frozen), in place. `run`: `fit`'s
    output_dir, live_dir, precision and device."""
    from mmloop.models.vlm import trainable_parameters

    freeze_vision_tower(model)
    trainable, total = trainable_parameters(model)
    stats = fit(model, processor, records, settings, seed=seed, data_root=data_root, source=source, **run)
    return {**stats, "trainable_parameters": trainable, "parameters": total}


def lora_config(model, settings: TrainConfig):
    """LoRA on every linear layer of the decoder (found by module path, so no family's projection
    names are assumed and the vision tower is never wrapped); the projector, and the vision tower
    when `settings.train_vision`, trained fully."""
    from peft import LoraConfig
    from torch.nn import ModuleList

    from mmloop.models.architectures import architecture, decoder_linear_layers, submodule

    spec = architecture(model)
    full = []
    for path in list(spec.projector) + ([spec.vision] if settings.train_vision else []):
        module = submodule(model, path)
        # peft wraps single modules; a list of them (Qwen3-VL's deepstack mergers) is wrapped item by item
        full += [f"{path}.{i}" for i in range(len(module))] if isinstance(module, ModuleList) else [path]
    targets = decoder_linear_layers(model)
    if not targets:
        raise NotImplementedError(f"{type(model).__name__}: no linear layer under {spec.decoder!r} for LoRA")
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      bias="none", target_modules=targets, modules_to_save=full)


def wrap_lora(model, settings: TrainConfig, *, seed: int):
    """The peft model: LoRA on the decoder, the projector fully trainable."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed)
    model.requires_grad_(False)
    return get_peft_model(model, lora_config(model, settings))


def train_lora(model, processor, records: Sequence[Mapping[str, Any]], settings: TrainConfig, *, seed: int,
               data_root: str | os.PathLike = "data", source: str = "records", **run: Any):
    """LoRA fine-tuning; returns (peft_model, stats). Call `save_lora` to merge and save. `run`:
    `fit`'s output_dir, live_dir, precision and device."""
    from mmloop.models.vlm import trainable_parameters

    peft_model = wrap_lora(model, settings, seed=seed)
    trainable, total = trainable_parameters(peft_model)
    stats = fit(peft_model, processor, records, settings, seed=seed, data_root=data_root, source=source, **run)
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
