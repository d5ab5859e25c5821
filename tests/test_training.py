"""Training on the Trainer: replay, reply-only labels, what stops a round, DVCLive logs, and resumable checkpoints."""

import math
import random

import pytest

from mmloop import questions, sources
from mmloop.config import BaseConfig
from mmloop.loop import training
from mmloop.models import vlm
from mmloop.world import scenes as world

CONFIG = world.WorldConfig(splits={"seed": 24})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    world.build(CONFIG, 0, root / "images", root / "world")
    from mmloop.io import read_json

    coco = read_json(root / "world" / "instances_seed.json")
    objects = sources.coco_objects(coco)
    rng = random.Random(0)
    records = []
    for image in coco["images"]:
        made = questions.make_question("colour", objects[image["sha256"]], rng)
        if made is not None:
            records.append({"sample_id": f"s{len(records)}", "image": image["file_name"],
                            "conversations": questions.turns(made, "mcq", "option")})
    vlm.set_threads(1)
    return root, records


def tiny_model(records):
    texts = [turn["content"] for record in records for turn in record["conversations"]]
    return vlm.build(texts, seed=0, text_layers=1, vision_layers=1)


def test_draw_replay_is_seeded_and_bounded():
    pool = [{"sample_id": str(i)} for i in range(10)]
    assert len(training.draw_replay(pool, 8, 0.5, seed=0)) == 4
    assert training.draw_replay(pool, 8, 0.5, seed=0) == training.draw_replay(pool, 8, 0.5, seed=0)
    assert len(training.draw_replay(pool, 100, 0.5, seed=0)) == 10
    with pytest.raises(ValueError, match="replay_ratio"):
        training.draw_replay(pool, 8, -1, seed=0)


def test_labels_cover_the_assistant_replies_and_their_end_token_only(data):
    root, records = data
    model, processor = tiny_model(records)
    images = training.ImageFiles(records, root)
    record = {**records[0], "conversations": records[0]["conversations"] * 2}  # two exchanges
    batch = training.Collator(processor, images)(training.encode(processor, [record, records[1]]))
    kept = [processor.tokenizer.convert_ids_to_tokens(int(t)) for t in batch["labels"][0] if t != training.IGNORE_INDEX]
    reply = records[0]["conversations"][1]["content"]
    assert kept == [*reply.split(), processor.tokenizer.eos_token] * 2
    assert batch["sample_ids"] == [records[0]["sample_id"], records[1]["sample_id"]]
    assert set(batch) >= {"input_ids", "attention_mask", "pixel_values", "labels"}


def test_a_record_with_nothing_to_train_on_is_refused_by_name(data):
    root, records = data
    _, processor = tiny_model(records)
    empty = {**records[0], "sample_id": "empty-reply",
             "conversations": [records[0]["conversations"][0], {"role": "assistant", "content": ""}]}
    with pytest.raises(ValueError, match="empty-reply"):
        training.encode(processor, [records[1], empty], source="kept.parquet")


def test_a_non_finite_loss_stops_training_naming_the_samples(data):
    root, records = data
    model, processor = tiny_model(records)
    with torch_no_grad_init():
        model.model.multi_modal_projector.linear_1.weight.fill_(float("nan"))
    with pytest.raises(training.TrainingError, match=r"loss is nan at step 1 on samples \['s"):
        training.train_base(model, processor, records, BaseConfig(epochs=1, batch_size=4, lr=1e-3), seed=0,
                            data_root=root)


def torch_no_grad_init():
    import torch

    return torch.no_grad()


def test_the_projector_reads_the_towers_patch_embeddings(data):
    import numpy as np
    import torch

    root, records = data
    model, processor = tiny_model(records)
    images = training.ImageFiles(records[:2], root)
    pixels = processor.image_processor(list(images.values()), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeddings = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[0]
        expected = model.model.multi_modal_projector(embeddings[:, 1:])  # the CLS token is dropped
        features = torch.stack(model.model.get_image_features(pixel_values=pixels).pooler_output)
    assert np.allclose(features.numpy(), expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="vision_feature_layer"):
        vlm.build(["a"], vision_layers=1, vision_feature_layer=2)


def test_fit_lowers_the_loss_and_logs_steps_with_dvclive(data, tmp_path):
    from mmloop.io import read_json

    root, records = data
    model, processor = tiny_model(records)
    stats = training.train_base(model, processor, records, BaseConfig(epochs=6, batch_size=8, lr=3e-3, logging_steps=2),
                                seed=0, data_root=root, live_dir=tmp_path / "live")
    assert stats["steps"] == 6 * 3
    assert stats["final_loss"] < 0.5 * stats["first_loss"]
    logged = (tmp_path / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert logged[0].split("\t") == ["step", "loss"] and len(logged) == 1 + 1 + 18 // 2  # first step, then every 2
    assert (tmp_path / "live" / "plots" / "metrics" / "learning_rate.tsv").is_file()
    assert {"loss", "learning_rate"} <= set(read_json(tmp_path / "live" / "metrics.json"))


def test_lora_trains_the_decoder_and_projector_and_leaves_the_vision_tower(data):
    from mmloop.config import TrainConfig

    root, records = data
    model, processor = tiny_model(records)
    peft_model = training.wrap_lora(model, TrainConfig(), seed=0)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "multi_modal_projector" in name for name in trainable)
    assert any("language_model" in name and "lora_" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)
    opened = training.wrap_lora(tiny_model(records)[0], TrainConfig(train_vision=True), seed=0)
    assert any("vision_tower" in name for name, p in opened.named_parameters() if p.requires_grad)


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_does(data, tmp_path, monkeypatch):
    import torch

    root, records = data
    settings = BaseConfig(epochs=4, batch_size=8, lr=3e-3, save_steps=3)
    unbroken, processor = tiny_model(records)
    training.train_base(unbroken, processor, records, settings, seed=0, data_root=root)

    checkpoints = tmp_path / "checkpoints"
    model, processor = tiny_model(records)
    calls = {"n": 0}
    real_call = training.Collator.__call__

    def dies_at_step_8(self, examples):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("killed")
        return real_call(self, examples)

    monkeypatch.setattr(training.Collator, "__call__", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        training.train_base(model, processor, records, settings, seed=0, data_root=root, output_dir=checkpoints)
    assert (checkpoints / "checkpoint-6").is_dir()
    monkeypatch.setattr(training.Collator, "__call__", real_call)

    model, processor = tiny_model(records)
    stats = training.train_base(model, processor, records, settings, seed=0, data_root=root, output_dir=checkpoints)
    assert stats["resumed_from"] == 6 and stats["steps"] == 12 and not checkpoints.exists()
    for (name, a), b in zip(unbroken.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_lora_trains_with_gradient_checkpointing(data):
    from mmloop.config import TrainConfig

    root, records = data
    model, processor = tiny_model(records)
    settings = TrainConfig(epochs=1, batch_size=8, lr=3e-3, gradient_checkpointing=True)
    peft_model, stats = training.train_lora(model, processor, records, settings, seed=0, data_root=root)
    assert stats["steps"] == 3 and all(math.isfinite(loss) for loss in stats["losses"])
    assert any(getattr(module, "gradient_checkpointing", False) for module in peft_model.modules())
