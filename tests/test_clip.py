import json

import numpy as np
import pytest

from mmloop import config
from mmloop.config import PretrainedClip, TinyClip
from mmloop.models import clip

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220),
           "yellow": (230, 220, 30), "purple": (140, 30, 160), "orange": (240, 140, 20)}
MICRO_CFG = {"width": 32, "layers": 1, "embed_dim": 32, "context_length": 12}


def _scene(colour, shape):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse([12, 12, 52, 52], fill=COLOURS[colour])
    else:
        draw.rectangle([12, 12, 52, 52], fill=COLOURS[colour])
    return image


@pytest.fixture(scope="module")
def trained():
    pairs = [(colour, shape) for colour in COLOURS for shape in ("circle", "square")]
    images = [_scene(colour, shape) for colour, shape in pairs]
    captions = [f"a {colour} {shape}" for colour, shape in pairs]
    scorer, stats = clip.train_clip(images, [[caption] for caption in captions],
                                    model_cfg=clip.tiny_model_cfg(TinyClip(**MICRO_CFG)), epochs=60, batch_size=12,
                                    lr=3e-3, warmup_steps=5, seed=0)
    return scorer, stats, images, captions


def test_brief_training_ranks_own_caption_first(trained):
    scorer, stats, images, captions = trained
    assert stats["loss_last"] < stats["loss_first"]
    similarity = scorer.embed_images(images) @ scorer.embed_texts(captions).T
    # Each image's own caption beats the other 11 for most images (chance is 1/12).
    assert np.mean(similarity.argmax(axis=1) == np.arange(len(images))) >= 0.75


def test_embeddings_are_normalised_and_deterministic(trained):
    scorer, _, images, captions = trained
    first, second = scorer.embed_images(images[:5]), scorer.embed_images(images[:5])
    assert first.shape == (5, 32) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, second)
    scores = scorer.score(images[:3], captions[:3])
    np.testing.assert_allclose(scores, (first[:3] * scorer.embed_texts(captions[:3])).sum(axis=1), atol=1e-6)


def test_save_and_reload_through_open_clip_local_dir(trained, tmp_path):
    scorer, stats, images, captions = trained
    images[0].save(tmp_path / "a.png")
    clip.save_clip(scorer, tmp_path / "clip", training=stats)
    config = json.loads((tmp_path / "clip" / clip.CONFIG_FILE).read_text())
    assert config["model_cfg"]["vision_cfg"]["patch_size"] == 16
    reloaded = clip.ClipScorer.load(tmp_path / "clip", root=tmp_path)
    # Paths relative to the root and PIL images embed the same.
    np.testing.assert_allclose(reloaded.embed_images(["a.png"]), scorer.embed_images(images[:1]), atol=1e-5)
    np.testing.assert_allclose(reloaded.embed_texts(captions), scorer.embed_texts(captions), atol=1e-5)


def test_missing_model_dir_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        clip.ClipScorer.load(tmp_path / "nothing")


def test_pretrained_branch_is_chosen_from_params(monkeypatch, tmp_path):
    import open_clip

    calls = []

    def fake_create(name, pretrained=None, **kwargs):
        calls.append((name, pretrained))
        raise RuntimeError("no downloads in tests")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    pretrained = PretrainedClip(model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert clip.clip_source(pretrained)["kind"] == "pretrained"
    with pytest.raises(RuntimeError, match="no downloads"):
        clip.ClipScorer.selected(pretrained, threads=1, model_dir=tmp_path)
    assert calls == [("ViT-B-32", "laion2b_s34b_b79k")]
    # Without the switch the trained model folder is used.
    assert clip.clip_source(None, tmp_path) == {"kind": "local", "path": str(tmp_path)}
    with pytest.raises(ValueError, match="clip.pretrained"):
        config.parse({"clip": {"pretrained": "ViT-B-32"}})


def test_one_attribute_variants_change_exactly_one_word():
    variants = clip.one_attribute_variants("a small red circle", [list(COLOURS), ["circle", "square"],
                                                                   ["small", "large"]])
    assert "a small blue circle" in variants and "a large red circle" in variants
    assert "a small red square" in variants and "a small red circle" not in variants
    assert len(variants) == 5 + 1 + 1


def test_retrieval_accuracy_skips_identical_captions():
    embeddings = np.eye(12, dtype=np.float32)
    captions = [f"c{i}" for i in range(12)]
    result = clip.retrieval_accuracy(embeddings, embeddings, captions, candidates=10)
    assert result["img2txt"] == 1.0 and result["txt2img"] == 1.0
    shuffled = clip.retrieval_accuracy(embeddings, embeddings[::-1].copy(), captions, candidates=10)
    assert shuffled["img2txt"] < 0.5


def test_load_captioned_images_names_bad_records(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "images/a.png"}],
                                "annotations": [{"id": 7, "image_id": 2, "caption": "x"}]}))
    with pytest.raises(ValueError, match=r"annotations\[0\].*id 7.*image_id 2"):
        clip.load_captioned_images(path)
