"""Preference training for SENA (arXiv 2412.15650): DPO plus an image-content alignment term, on TRL.

One round trains LoRA on the previous iteration's model with

    loss = DPO(chosen, rejected | image, prompt; beta)
           + alignment_weight * NLL(description | image, description prompt)

where the description is the model's own account of the image (a pair without one adds no
alignment term). The model is its own reference: TRL wraps it with the LoRA config itself and,
for a peft model with no `ref_model`, computes the reference log-probabilities with the adapter
disabled, which is exactly the model the round started from (LoRA's B is zero at the start and the
projector copy of `modules_to_save` falls back to the original module when adapters are off). No
second copy of the model is held.

What is TRL's and what is ours:
- TRL's `DPOTrainer` computes the DPO loss, the reference pass, and its metrics (rewards,
  reward accuracy and margins, log-probabilities), with its fused LM head (per-token
  log-probabilities without materialising the logits);
- the batches are ours: `training.encode` and `training.Collator`, the same code SFT uses, so
  the reply tokens (and the end-of-turn token after them) come from each family's own chat template
  turn by turn, every processor output reaches the model (`image_grid_thw`,
  `pixel_attention_mask`, `token_type_ids`, ...) and nothing is ever truncated. TRL's own vision
  collator tokenises the prompt and the reply separately, truncates at `max_length` and adds no
  end-of-turn token where a template writes none (LLaVA-1.5's), which `training.py` already
  declines for SFT;
- the alignment term, logging, checkpoints and errors follow `training.fit`.

A round that learns nothing is an error (`TrainingError`): no valid pair, or a non-finite loss.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.config import PreferenceConfig
from mmloop.loop.training import IGNORE_INDEX, TrainingError

# Why a pair is dropped, in the order they are checked (a pair gets the first that applies).
DROP_REASONS = ("missing_prompt", "missing_image", "image_hash_mismatch", "empty_chosen", "empty_rejected",
                "same_answer")
REQUIRED_FIELDS = ("pair_id", "image", "image_sha256", "prompt", "chosen", "rejected")
OPTIONAL_FIELDS = ("description", "category")


# ---------------------------------------------------------------- the pairs

def pair_row(pair: Mapping[str, Any], *, iteration: int | str, model: str) -> dict[str, Any]:
    """A self-generated pair (`teachers.self_teacher`'s fields, `reason` when dropped) as a row of
    `schema.pair_schema`: a sample whose question is the prompt and whose answer is the chosen one,
    so lineage walks it like any sample, plus the rejected answer and its noise."""
    from mmloop.io import stable_hash
    from mmloop.schema import PAIR_COLUMNS, sample

    made = dict(pair.get("provenance") or {})
    prompts = made.get("prompts") or []
    conversations = ([{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": pair["chosen"]}]
                     if pair.get("prompt") and pair.get("chosen") else [])
    row = sample(sample_id=pair["pair_id"], parent_ids=list(pair.get("parent_ids") or []), iteration=int(iteration),
                 origin="preference", image=pair["image"], image_sha256=pair["image_sha256"],
                 conversations=conversations, category=pair.get("category") or "self", format="short",
                 question=pair.get("prompt"), answer=pair.get("chosen"), kept=pair.get("reason") is None,
                 reject_reason=pair.get("reason"),
                 provenance={"backend": made.get("backend", "self"), "model": model,
                             "prompt_id": "+".join(str(p["id"]) for p in prompts) or None,
                             "prompt_sha256": stable_hash(*[p["sha256"] for p in prompts]) if prompts else None,
                             "round": made.get("tries")})
    row.update({name: pair.get(name) for name in PAIR_COLUMNS})
    row["check_margin"] = made.get("check_margin")
    return row


def write_pairs(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Pair rows (`pair_row`) as parquet, atomically."""
    from mmloop.schema import pair_schema, write_samples

    return write_samples(rows, path, schema=pair_schema())


def read_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The pairs of a pairs.parquet, with the fields `validate_pairs` and `train_preference` read."""
    import pyarrow.parquet as pq

    return [{"pair_id": row["sample_id"], "parent_ids": row["parent_ids"], "image": row["image"],
             "image_sha256": row["image_sha256"], "prompt": row["question"], "chosen": row["answer"],
             "rejected": row["rejected"], "description": row["description"], "category": row["category"]}
            for row in pq.read_table(path).to_pylist()]


def _field(pair: Mapping[str, Any], name: str, source: str, *, required: bool) -> str | None:
    """The field's text (None when null), or ValueError naming the file, the pair and the field."""
    if name not in pair:
        if required:
            raise ValueError(f"{source}: pair {pair.get('pair_id')!r}: field {name!r} is missing "
                             f"(a preference pair has {', '.join(REQUIRED_FIELDS)})")
        return None
    value = pair[name]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{source}: pair {pair.get('pair_id')!r}: field {name!r} must be text, "
                         f"got {type(value).__name__} {value!r}")
    return value


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def _drop_reason(text: Mapping[str, str | None], data_root: Path, hashes: dict[Path, str]) -> str | None:
    """The first of DROP_REASONS that applies to a pair's text fields (None: a valid pair). `hashes`
    keeps each image file's sha256 once computed."""
    if not (text["prompt"] or "").strip():
        return "missing_prompt"
    path = data_root / (text["image"] or "")
    if not (text["image"] or "").strip() or not path.is_file():
        return "missing_image"
    if path not in hashes:
        from mmloop.io import sha256_file

        hashes[path] = sha256_file(path)
    if hashes[path] != (text["image_sha256"] or "").strip().lower():
        return "image_hash_mismatch"
    if not (text["chosen"] or "").strip():
        return "empty_chosen"
    if not (text["rejected"] or "").strip():
        return "empty_rejected"
    if _normalised(text["chosen"]) == _normalised(text["rejected"]):
        return "same_answer"
    return None


def validate_pairs(pairs: Sequence[Mapping[str, Any]], data_root: str | os.PathLike = "data",
                   source: str = "pairs") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(valid, dropped): each pair checked against its image and itself. A dropped row is the pair
    with a `reason` among DROP_REASONS. A malformed pair (not a mapping, a required field missing,
    a field that is not text, a repeated pair_id) is an error naming `source`, the pair and the field:
    that is a bug upstream, not a weak pair."""
    data_root = Path(data_root)
    hashes: dict[Path, str] = {}
    seen: set[str] = set()
    valid, dropped = [], []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, Mapping):
            raise ValueError(f"{source}: row {index}: a preference pair must be a mapping, got {type(pair).__name__}")
        pair_id = pair.get("pair_id")
        if not isinstance(pair_id, (str, int)) or isinstance(pair_id, bool) or str(pair_id) == "":
            raise ValueError(f"{source}: row {index}: field 'pair_id' must be a non-empty text or integer, "
                             f"got {pair_id!r}")
        if str(pair_id) in seen:
            raise ValueError(f"{source}: pair {pair_id!r}: field 'pair_id' is repeated; each pair needs its own id")
        seen.add(str(pair_id))
        text = {name: _field(pair, name, source, required=True) for name in REQUIRED_FIELDS[1:]}
        for name in OPTIONAL_FIELDS:
            _field(pair, name, source, required=False)
        reason = _drop_reason(text, data_root, hashes)
        if reason is None:
            valid.append(dict(pair))
        else:
            dropped.append({**pair, "reason": reason})
    return valid, dropped


def _conversation(prompt: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def _description(pair: Mapping[str, Any]) -> str | None:
    text = pair.get("description")
    return text if isinstance(text, str) and text.strip() else None


def encode_pairs(processor, pairs: Sequence[Mapping[str, Any]], description_prompt: str | None,
                 source: str = "pairs") -> dict[str, list]:
    """The SFT encoding (`training.encode`) of each pair's chosen and rejected conversations, and of
    the description conversation of the pairs that have one ({"chosen", "rejected", "description"};
    "description" holds None for a pair without, and for every pair when `description_prompt` is
    None: no alignment term). Sample ids are "<pair_id>/<part>", so an error names the pair."""
    from mmloop.loop.training import encode

    def records(part: str, rows: Sequence[Mapping[str, Any]], turns) -> list[dict[str, Any]]:
        return [{"sample_id": f"{pair['pair_id']}/{part}", "image": pair["image"], "conversations": turns(pair)}
                for pair in rows]

    def aligned(pair: Mapping[str, Any]) -> bool:
        return description_prompt is not None and _description(pair) is not None

    described = [pair for pair in pairs if aligned(pair)]
    chosen = encode(processor, records("chosen", pairs, lambda p: _conversation(p["prompt"], p["chosen"])), source)
    rejected = encode(processor, records("rejected", pairs, lambda p: _conversation(p["prompt"], p["rejected"])),
                      source)
    descriptions = iter(encode(processor, records(
        "description", described, lambda p: _conversation(description_prompt, _description(p))), source))
    return {"chosen": chosen, "rejected": rejected,
            "description": [next(descriptions) if aligned(pair) else None for pair in pairs]}


class PairCollator:
    """A DPO batch of dataset rows {"index"}: the chosen conversations then the rejected ones in one
    `training.Collator` call (TRL's layout: the first half chosen, the second rejected), the reply
    tokens as `completion_mask`; under "alignment", the description conversations of the batch's
    pairs that have one, with their labels. `pair_ids` names the batch's pairs in errors."""

    def __init__(self, processor, images: Mapping[str, Any], encoded: Mapping[str, list], pair_ids: Sequence[Any],
                 source: str = "pairs", reply_token_types: Mapping[str, int] | None = None):
        from mmloop.loop.training import Collator

        self.collate = Collator(processor, images, source, reply_token_types)
        self.encoded, self.pair_ids = encoded, list(pair_ids)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        indices = [int(row["index"]) for row in rows]
        batch = self.collate([self.encoded["chosen"][i] for i in indices] +
                             [self.encoded["rejected"][i] for i in indices])
        batch.pop("sample_ids")
        batch["completion_mask"] = (batch.pop("labels") != IGNORE_INDEX).long()
        batch["pair_ids"] = [self.pair_ids[i] for i in indices]
        described = [self.encoded["description"][i] for i in indices if self.encoded["description"][i] is not None]
        if described:
            alignment = self.collate(described)
            alignment.pop("sample_ids")
            batch["alignment"] = alignment
        return batch


# ---------------------------------------------------------------- the trainer

def _preference_trainer_class():
    import torch
    from trl import DPOTrainer

    class PreferenceTrainer(DPOTrainer):
        """TRL's DPOTrainer plus SENA's image-content alignment term.

        How it extends TRL's loss: `compute_loss` is overridden. It takes the batch's description
        conversations out (`inputs["alignment"]`), lets TRL compute the DPO loss on the rest exactly
        as upstream does (policy and adapter-disabled reference passes, the chosen/rejected split,
        TRL's metrics), then runs one more policy forward on the descriptions through the same fused
        LM head TRL patched onto the model (`fused_lm_head=True`: the mean negative log-likelihood of
        the labelled description tokens, without materialising the logits) and adds
        `alignment_weight` times it. Both terms are logged on their own (`dpo_loss`,
        `alignment_nll`); the Trainer's `loss` is their sum. A weight of 0 is plain DPO: no
        description pass runs and no `alignment_nll` is logged.

        Why that way: in TRL 1.x the DPO loss is one private method (`_compute_loss`) that assumes the
        batch is [chosen; rejected] halves and computes its metrics inline; the older
        `concatenated_forward` / `get_batch_loss_metrics` hooks are gone. Putting description rows into
        that batch would break its halves, and copying the method would fork TRL's loss.
        `compute_loss` is the Trainer's public hook, the alignment term needs the policy only (no
        reference pass), and so TRL's DPO stays TRL's. The term is scaled for gradient accumulation
        with the DPO loss, as the Trainer scales whatever `compute_loss` returns.

        A non-finite loss stops training naming the batch's pairs (`source`: the file they came from).
        """

        source = "pairs"
        alignment_weight = 0.0

        def _send_telemetry(self):
            pass  # a pipeline stage sends no usage pings to the hub

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            pair_ids = inputs.pop("pair_ids", None)
            alignment = inputs.pop("alignment", None)
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            loss = result[0] if return_outputs else result
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["dpo_loss"].append(
                self.accelerator.gather_for_metrics(loss.detach()).float().mean().item())
            if alignment is not None and self.alignment_weight:
                labels = alignment.pop("labels")
                nll = model(**alignment, labels=labels, use_cache=False, fused_lm_head=True).loss
                self._metrics[mode]["alignment_nll"].append(
                    self.accelerator.gather_for_metrics(nll.detach()).float().mean().item())
                loss = loss + self.alignment_weight * nll
            if not bool(torch.isfinite(loss.detach()).all()):
                raise TrainingError(f"{self.source}: the loss is {float(loss.detach().float())} at step "
                                    f"{self.state.global_step + 1} on pairs {pair_ids}; nothing is saved. "
                                    f"Lower the learning rate, check the data, or train in float32")
            return (loss, *result[1:]) if return_outputs else loss

    return PreferenceTrainer


def _start_key(model) -> list:
    """The starting values of the model, to tell its checkpoints from another run's."""
    return [[name, round(float(p.detach().double().sum()), 6)] for name, p in model.named_parameters()]


def train_preference(model, processor, pairs: Sequence[Mapping[str, Any]], settings: PreferenceConfig, *,
                     seed: int, data_root: str | os.PathLike = "data", source: str = "pairs",
                     output_dir: str | os.PathLike | None = None, live_dir: str | os.PathLike | None = None,
                     precision: str = "float32", device: str = "cpu"):
    """One SENA preference round: LoRA on `model` (the previous iteration's, which is also the DPO
    reference), DPO with beta `settings.beta` on the valid `pairs` plus the alignment term. Returns
    (peft_model, stats); `training.save_lora` saves the adapter and the merged model.

    `pairs`: {pair_id, image (relative to `data_root`), image_sha256, prompt, chosen, rejected,
    description (optional), category}; invalid ones are dropped (`validate_pairs`) and counted in
    stats. `output_dir`, `live_dir`, `precision` and `device` as in `training.fit`: checkpoints every
    `settings.save_steps` (a rerun resumes; removed at the end), DVCLive step logs, mixed precision,
    and "cpu" keeping the Trainer off any accelerator.

    stats: {pairs, given, described, dropped {reason: count}, steps, first_loss, final_loss, losses,
    dpo_loss, alignment_nll, reward_accuracy, reward_margin, beta, alignment_weight, wall_s,
    resumed_from, trainable_parameters, parameters, lora, precision, processes}; the last four
    metrics are the last logged values (None when never logged).
    """
    import tempfile

    from datasets import Dataset
    from trl import DPOConfig

    from mmloop.config import TrainConfig
    from mmloop.io import stable_hash
    from mmloop.loop.training import (ImageFiles, _checkpoints, live_callbacks, lora_config, quiet_printer,
                                      run_trainer, trainer_arguments)
    from mmloop.models.architectures import architecture
    from mmloop.models.vlm import quiet_library_progress, trainable_parameters

    started = time.perf_counter()
    valid, dropped = validate_pairs(pairs, data_root, source)
    reasons = dict(sorted(Counter(row["reason"] for row in dropped).items()))
    if not valid:
        raise TrainingError(f"{source}: no valid preference pair to train on ({len(pairs)} given, dropped: "
                            f"{reasons or 'none'}); a round that learns nothing is an error")
    quiet_library_progress()
    # weight 0 is plain DPO: no description is encoded, collated or run through the model
    encoded = encode_pairs(processor, valid, settings.description_prompt if settings.alignment_weight else None,
                           source)
    collator = PairCollator(processor, ImageFiles(valid, data_root, source=source), encoded,
                            [pair["pair_id"] for pair in valid], source, architecture(model).reply_token_types)
    # The run's identity: settings, pairs, and the starting values of the model.
    key = stable_hash(settings.model_dump(), seed, precision, [str(pair["pair_id"]) for pair in valid],
                      _start_key(model))
    scratch = tempfile.TemporaryDirectory(prefix="mmloop-preference-") if output_dir is None else None
    output_dir = Path(scratch.name if scratch else output_dir)

    args = DPOConfig(**trainer_arguments(settings, output_dir, checkpoints=scratch is None, seed=seed,
                                         precision=precision, device=device),
                     beta=settings.beta, loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=False,
                     disable_dropout=True)  # TRL's own defaults for checkpointing and bf16 are overridden above
    with args.main_process_first(local=False):
        resumed_from = _checkpoints(output_dir, key)
    lora = TrainConfig(lora_r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                       train_vision=settings.train_vision)
    trainer = _preference_trainer_class()(
        model=model, ref_model=None, args=args, data_collator=collator,
        train_dataset=Dataset.from_list([{"image": pair["image"], "index": i} for i, pair in enumerate(valid)]),
        processing_class=processor, callbacks=live_callbacks(live_dir, args, resumed_from),
        peft_config=lora_config(model, lora))
    trainer.source, trainer.alignment_weight = source, settings.alignment_weight
    quiet_printer(trainer)
    peft_model = trainer.model
    trainable, total = trainable_parameters(peft_model)
    run_trainer(trainer, output_dir, resumed_from, scratch)
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]

    def last(name: str):
        return next((entry[name] for entry in reversed(history) if name in entry), None)

    return peft_model, {
        "pairs": len(valid), "given": len(pairs), "described": sum(1 for row in encoded["description"] if row),
        "dropped": reasons, "steps": trainer.state.global_step, "epochs": settings.epochs,
        "batch_size": settings.batch_size, "lr": settings.lr,
        "first_loss": losses[0], "final_loss": losses[-1], "losses": [round(value, 4) for value in losses],
        "dpo_loss": last("dpo_loss"), "alignment_nll": last("alignment_nll"),
        "reward_accuracy": last("rewards/accuracies"), "reward_margin": last("rewards/margins"),
        "beta": settings.beta, "alignment_weight": settings.alignment_weight,
        "wall_s": time.perf_counter() - started, "resumed_from": resumed_from,
        "trainable_parameters": trainable, "parameters": total,
        "lora": {"r": settings.lora_r, "alpha": settings.lora_alpha}, "precision": precision,
        "processes": args.world_size,
    }
