"""Training: length-grouped batches, replay, assistant-only labels, and resumable checkpoints."""

import random

import pytest

from mmloop import questions
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
    objects = questions.objects_by_image(coco)
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


def test_batch_plan_covers_each_row_once_per_epoch_with_similar_lengths():
    lengths = [random.Random(i).randint(10, 300) for i in range(200)]
    plan = training.batch_plan(lengths, 8, 50, seed=1, group=5)
    assert len(plan) == 50 and plan == training.batch_plan(lengths, 8, 50, seed=1, group=5)
    first_epoch = [row for batch in plan[:25] for row in batch]
    assert sorted(first_epoch) == list(range(200))
    spread = sum(max(lengths[r] for r in b) - min(lengths[r] for r in b) for b in plan) / len(plan)
    random_spread = sum(max(lengths[r] for r in b) - min(lengths[r] for r in b)
                        for b in training.batch_plan(lengths, 8, 50, seed=1, group=1)) / 50
    assert spread < random_spread / 2


def test_draw_replay_is_seeded_and_bounded():
    pool = [{"sample_id": str(i)} for i in range(10)]
    assert len(training.draw_replay(pool, 8, 0.5, seed=0)) == 4
    assert training.draw_replay(pool, 8, 0.5, seed=0) == training.draw_replay(pool, 8, 0.5, seed=0)
    assert len(training.draw_replay(pool, 100, 0.5, seed=0)) == 10
    with pytest.raises(ValueError, match="replay_ratio"):
        training.draw_replay(pool, 8, -1, seed=0)


def test_labels_cover_the_assistant_replies_only(data):
    root, records = data
    model, processor = tiny_model(records)
    images = training.load_images(records, root)
    ids, labels = training.encode_records(processor, records[:1], images)[0]
    kept = [processor.tokenizer.convert_ids_to_tokens(t) for t in labels if t != training.IGNORE_INDEX]
    reply = records[0]["conversations"][1]["content"]
    assert kept == [*reply.split(), processor.tokenizer.eos_token]


def test_the_projector_reads_the_towers_patch_embeddings(data):
    import numpy as np
    import torch

    root, records = data
    model, processor = tiny_model(records)
    images = training.load_images(records[:2], root)
    pixels = processor.image_processor(list(images.values()), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeddings = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[0]
        expected = model.model.multi_modal_projector(embeddings[:, 1:])  # the CLS token is dropped
        features = torch.stack(model.model.get_image_features(pixel_values=pixels).pooler_output)
    assert np.allclose(features.numpy(), expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="vision_feature_layer"):
        vlm.build(["a"], vision_layers=1, vision_feature_layer=2)


def test_fit_lowers_the_loss(data):
    root, records = data
    model, processor = tiny_model(records)
    stats = training.train_base(model, processor, records, BaseConfig(epochs=6, batch_size=8, lr=3e-3),
                                seed=0, data_root=root)
    assert stats["steps"] == 6 * 3
    assert stats["final_loss"] < 0.5 * stats["first_loss"]


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_unbroken_run_does(data, tmp_path, monkeypatch):
    import torch

    root, records = data
    settings = BaseConfig(epochs=4, batch_size=8, lr=3e-3)
    unbroken, processor = tiny_model(records)
    training.train_base(unbroken, processor, records, settings, seed=0, data_root=root)

    checkpoint = tmp_path / "ckpt.pt"
    model, processor = tiny_model(records)
    calls = {"n": 0}
    real_collate = training.collate

    def dies_at_step_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(training, "collate", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        training.fit(model, processor, records, settings, seed=0, data_root=root, checkpoint=checkpoint, checkpoint_every=3)
    assert checkpoint.is_file()
    monkeypatch.setattr(training, "collate", real_collate)

    model, processor = tiny_model(records)
    training.freeze_vision_tower(model)
    stats = training.fit(model, processor, records, settings, seed=0, data_root=root, checkpoint=checkpoint,
                         checkpoint_every=3)
    assert stats["resumed_from"] == 6 and stats["steps"] == 12 and not checkpoint.exists()
    for (name, a), b in zip(unbroken.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
