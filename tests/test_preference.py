"""Preference training (SENA's DPO + image-content alignment): which pairs are kept, what stops a round,
that DPO moves the model's own chosen-vs-rejected margin away from its reference, the alignment term,
the saved adapter, and the same round on other architectures."""

import hashlib
import math

import numpy as np
import pytest
import torch

import tiny_vlms
from mmloop.loop import preference, training
from mmloop.config import PreferenceConfig
from mmloop.models import architectures, vlm

# TRL reads the deprecated `is_gradient_checkpointing` on every reference pass; nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

PROMPT, CHOSEN, REJECTED = "What colour is the circle?", "The circle is red.", "The circle is blue."
DESCRIPTION = "A red circle on a white background."
# Steps large enough to move a tiny random model in a few updates.
FAST = dict(batch_size=4, lr=5e-3, warmup_ratio=0.0, logging_steps=1)


def _circle(offset: int) -> np.ndarray:
    array = np.full((64, 64, 3), 255, dtype=np.uint8)
    rows, cols = np.mgrid[:64, :64]
    array[(rows - 32) ** 2 + (cols - 28 - offset) ** 2 < 180] = (220, 30, 30)
    return array


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 pairs on 4 images of a red circle, every other pair with a description."""
    from PIL import Image

    root = tmp_path_factory.mktemp("preference")
    (root / "images").mkdir()
    hashes = {}
    for i in range(4):
        path = root / "images" / f"circle{i}.png"
        Image.fromarray(_circle(2 * i)).save(path)
        hashes[i] = hashlib.sha256(path.read_bytes()).hexdigest()
    pairs = [{"pair_id": f"p{i}", "image": f"images/circle{i % 4}.png", "image_sha256": hashes[i % 4],
              "prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED,
              "description": DESCRIPTION if i % 2 == 0 else None, "category": "colour"} for i in range(16)]
    vlm.set_threads(1)
    return root, pairs


def tiny_llava(pairs):
    texts = [f"{PROMPT} {CHOSEN} {REJECTED} {DESCRIPTION}", PreferenceConfig().description_prompt]
    return vlm.build(texts, seed=0, text_layers=1, vision_layers=1)


def margins(model, processor, pairs, root) -> np.ndarray:
    """log p(chosen) - log p(rejected) per pair, each the sum over the reply tokens (and the end-of-turn
    token) of a plain forward pass of `model`: logits, log-softmax, the labelled tokens."""
    images = training.ImageFiles(pairs, root)
    spec = architectures.architecture(model)
    scores = []
    for part in ("chosen", "rejected"):
        records = [{"sample_id": pair["pair_id"], "image": pair["image"],
                    "conversations": [{"role": "user", "content": pair["prompt"]},
                                      {"role": "assistant", "content": pair[part]}]} for pair in pairs]
        batch = training.Collator(processor, images, reply_token_types=spec.reply_token_types)(
            training.encode(processor, records))
        labels = batch.pop("labels")
        batch.pop("sample_ids")
        with torch.no_grad():
            logprobs = torch.log_softmax(model(**batch).logits[:, :-1].float(), dim=-1)
        targets = labels[:, 1:]
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores.append((picked * (targets != training.IGNORE_INDEX)).sum(dim=1).numpy())
    return scores[0] - scores[1]


# ---------------------------------------------------------------- validation

def test_each_drop_reason(data, tmp_path):
    root, pairs = data
    good = pairs[0]
    cases = {
        "missing_prompt": {"prompt": "  "},
        "missing_image": {"image": "images/nowhere.png"},
        "image_hash_mismatch": {"image_sha256": "0" * 64},
        "empty_chosen": {"chosen": None},
        "empty_rejected": {"rejected": ""},
        "same_answer": {"rejected": "  the CIRCLE   is red. "},
    }
    rows = [good] + [{**good, **change, "pair_id": reason} for reason, change in cases.items()]
    valid, dropped = preference.validate_pairs(rows, root, "pairs.parquet")
    assert [row["pair_id"] for row in valid] == ["p0"]
    assert {row["pair_id"]: row["reason"] for row in dropped} == {reason: reason for reason in cases}
    assert set(preference.DROP_REASONS) == set(cases)
    # a dropped row keeps its fields; the hash is of the file's bytes, whatever the case of the hex
    assert dropped[0]["prompt"] == "  " and dropped[0]["category"] == "colour"
    assert preference.validate_pairs([{**good, "image_sha256": good["image_sha256"].upper()}], root)[0]


@pytest.mark.parametrize("change, message", [
    ({"chosen": ...}, r"pairs\.parquet: pair 'p0': field 'chosen' is missing"),
    ({"prompt": 3}, r"pairs\.parquet: pair 'p0': field 'prompt' must be text, got int 3"),
    ({"description": ["a"]}, r"pairs\.parquet: pair 'p0': field 'description' must be text"),
    ({"pair_id": None}, r"pairs\.parquet: row 0: field 'pair_id' must be a non-empty text or integer"),
])
def test_a_malformed_pair_is_an_error_naming_the_file_the_pair_and_the_field(data, change, message):
    root, pairs = data
    pair = {key: value for key, value in {**pairs[0], **change}.items() if value is not ...}
    with pytest.raises(ValueError, match=message):
        preference.validate_pairs([pair], root, "pairs.parquet")


def test_a_repeated_pair_id_is_an_error(data):
    root, pairs = data
    with pytest.raises(ValueError, match=r"pair 'p0': field 'pair_id' is repeated"):
        preference.validate_pairs([pairs[0], {**pairs[1], "pair_id": "p0"}], root, "pairs.parquet")


# ---------------------------------------------------------------- what stops a round

def test_no_valid_pair_is_an_error_with_the_counts_before_any_model_work(data):
    root, pairs = data
    rows = [{**pair, "rejected": pair["chosen"]} for pair in pairs[:3]]
    with pytest.raises(training.TrainingError, match=r"pairs\.parquet: no valid preference pair .*3 given.*"
                                                     r"'same_answer': 3"):
        preference.train_preference(None, None, rows, PreferenceConfig(), seed=0, data_root=root,
                                    source="pairs.parquet")


def test_a_non_finite_loss_stops_training_naming_the_pairs(data):
    root, pairs = data
    model, processor = tiny_llava(pairs)
    with torch.no_grad():
        model.model.multi_modal_projector.linear_1.weight.fill_(float("nan"))
    with pytest.raises(training.TrainingError, match=r"pairs\.parquet: the loss is nan at step 1 on pairs \['p"):
        preference.train_preference(model, processor, pairs[:4], PreferenceConfig(**FAST), seed=0,
                                    data_root=root, source="pairs.parquet")


# ---------------------------------------------------------------- training

def test_dpo_raises_the_margin_over_the_reference_and_the_adapter_reloads(data, tmp_path):
    from peft import PeftModel

    from mmloop.io import read_json

    root, pairs = data
    model, processor = tiny_llava(pairs)
    vlm.save(model, processor, tmp_path / "base")
    before = margins(model, processor, pairs, root)
    settings = PreferenceConfig(epochs=2, **FAST)
    peft_model, stats = preference.train_preference(model, processor, pairs, settings, seed=0, data_root=root,
                                                    output_dir=tmp_path / "checkpoints", live_dir=tmp_path / "live")
    assert stats["pairs"] == 16 and stats["described"] == 8 and stats["dropped"] == {} and stats["steps"] == 8
    assert stats["final_loss"] < stats["first_loss"] and stats["reward_accuracy"] == 1.0
    assert stats["reward_margin"] > 0 and stats["alignment_nll"] > 0
    assert not (tmp_path / "checkpoints").exists()  # removed once training ends
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "multi_modal_projector" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)

    after = margins(peft_model, processor, pairs, root)
    assert after.mean() - before.mean() > 1.0, (before.mean(), after.mean())
    assert (after > before).all()
    with peft_model.disable_adapter():  # TRL's reference: the model the round started from
        assert np.allclose(margins(peft_model, processor, pairs, root), before, atol=1e-4)
    # TRL's reward margin is beta times the policy-vs-reference log-ratio margin, averaged over the last batch
    assert 0.5 * stats["reward_margin"] < settings.beta * (after - before).mean() < 2 * stats["reward_margin"]

    metrics = tmp_path / "live" / "plots" / "metrics"
    for name in ("loss", "dpo_loss", "alignment_nll", "rewards/accuracies", "rewards/margins"):
        logged = (metrics / f"{name}.tsv").read_text().splitlines()
        assert len(logged) == 1 + 8, name  # header, then each of the 8 steps
    assert {"dpo_loss", "alignment_nll"} <= set(read_json(tmp_path / "live" / "metrics.json"))

    peft_model.save_pretrained(tmp_path / "adapter")
    base, base_processor = vlm.load(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert np.allclose(margins(reloaded, base_processor, pairs, root), after, atol=1e-4)
    training.save_lora(peft_model, processor, tmp_path / "round")
    merged, merged_processor = vlm.load(tmp_path / "round")
    assert np.allclose(margins(merged, merged_processor, pairs, root), after, atol=1e-4)


def test_the_alignment_term_is_added_to_the_dpo_loss_and_logged(data):
    root, pairs = data
    described = [pair for pair in pairs if pair["description"]][:4]
    runs = {}
    for weight in (0.0, 2.0):
        model, processor = tiny_llava(pairs)
        settings = PreferenceConfig(epochs=1, alignment_weight=weight, **FAST)  # one step on one batch
        _, runs[weight] = preference.train_preference(model, processor, described, settings, seed=0, data_root=root)
    plain, aligned = runs[0.0], runs[2.0]
    assert plain["steps"] == aligned["steps"] == 1
    assert plain["alignment_nll"] is None and plain["described"] == 0  # weight 0 is plain DPO
    assert aligned["described"] == 4 and aligned["alignment_nll"] > 1.0
    assert plain["first_loss"] == pytest.approx(math.log(2), abs=1e-4)  # DPO starts at the reference
    assert aligned["dpo_loss"] == pytest.approx(plain["dpo_loss"], abs=1e-5)
    assert aligned["first_loss"] == pytest.approx(plain["first_loss"] + 2.0 * aligned["alignment_nll"], abs=1e-4)


# ---------------------------------------------------------------- other architectures

@pytest.mark.parametrize("name", tiny_vlms.ARCHITECTURES)
def test_dpo_on_every_architecture_of_the_matrix(data, tmp_path, name):
    """Each family's own classes, processor and published template (tests/tiny_vlms.py): the batch
    carries its processor outputs (Qwen's grid and mm_token_type_ids, Idefics3's pixel mask, Gemma 3's
    and PaliGemma's token types), and the adapter-disabled model is the reference."""
    root, pairs = data
    model, processor = vlm.load(tiny_vlms.build(name, tmp_path / name), trainable=True)
    rows = pairs[:4]
    before = margins(model, processor, rows, root)
    peft_model, stats = preference.train_preference(model, processor, rows, PreferenceConfig(epochs=3, **FAST),
                                                    seed=0, data_root=root)
    assert stats["steps"] == 3 and all(math.isfinite(loss) for loss in stats["losses"])
    assert stats["alignment_nll"] is not None and stats["reward_margin"] > 0
    after = margins(peft_model, processor, rows, root)
    assert after.mean() > before.mean() + 0.1, (before.mean(), after.mean())
    with peft_model.disable_adapter():
        assert np.allclose(margins(peft_model, processor, rows, root), before, atol=1e-4)


def test_a_killed_round_resumes_from_its_checkpoint_and_ends_where_an_unbroken_round_does(data, tmp_path,
                                                                                        monkeypatch):
    root, pairs = data
    pairs = pairs[:8]
    settings = PreferenceConfig(epochs=2, save_steps=2, **FAST)
    unbroken, stats = preference.train_preference(*tiny_llava(pairs), pairs, settings, seed=0, data_root=root)
    expected = margins(unbroken, tiny_llava(pairs)[1], pairs, root)

    checkpoints = tmp_path / "checkpoints"
    calls = {"n": 0}
    real_call = preference.PairCollator.__call__

    def dies_at_step_4(self, rows):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real_call(self, rows)

    monkeypatch.setattr(preference.PairCollator, "__call__", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        preference.train_preference(*tiny_llava(pairs), pairs, settings, seed=0, data_root=root,
                                    output_dir=checkpoints)
    assert (checkpoints / "checkpoint-2" / "adapter_config.json").is_file()
    monkeypatch.setattr(preference.PairCollator, "__call__", real_call)

    model, processor = tiny_llava(pairs)
    resumed, again = preference.train_preference(model, processor, pairs, settings, seed=0, data_root=root,
                                                 output_dir=checkpoints)
    assert again["resumed_from"] == 2 and again["steps"] == stats["steps"] == 4 and not checkpoints.exists()
    assert again["final_loss"] == pytest.approx(stats["final_loss"], abs=1e-4)
    assert np.allclose(margins(resumed, processor, pairs, root), expected, atol=1e-3)
