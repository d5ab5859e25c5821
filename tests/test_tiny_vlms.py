"""The tiny random VLMs of tests/tiny_vlms.py load, template, process, run and generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import tiny_vlms

# A text each family's rendered conversation must contain.
MARKERS = {
    "llava": "ASSISTANT:",
    "llava_next": "[/INST]",
    "qwen2_vl": "<|im_start|>assistant",
    "qwen2_5_vl": "<|im_start|>assistant",
    "qwen3_vl": "<|im_start|>assistant",
    "idefics3": "Assistant:",
    "smolvlm": "Assistant:",
    "gemma3": "<start_of_turn>model",
    "paligemma": "<image>What colour is the circle?\nred<eos>",
}

CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
]
QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes are there?"}]}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build each architecture at most once per module; returns name -> folder."""
    root = tmp_path_factory.mktemp("tiny_vlms")
    folders: dict[str, object] = {}

    def get(name):
        if name not in folders:
            folders[name] = tiny_vlms.build(name, root / name)
        return folders[name]

    return get


def test_every_architecture_has_a_template_and_a_source():
    for name in tiny_vlms.ARCHITECTURES:
        assert (tiny_vlms.TEMPLATE_DIR / f"{name}.jinja").is_file(), name
        assert tiny_vlms.TEMPLATE_SOURCES[name], name
    assert set(MARKERS) == set(tiny_vlms.ARCHITECTURES)


@pytest.mark.parametrize("name", tiny_vlms.ARCHITECTURES)
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # PaliGemmaProcessor's labels
def test_tiny_vlm_loads_templates_runs_and_generates(name, built):
    folder = built(name)
    processor = transformers.AutoProcessor.from_pretrained(folder)
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder)
    model.eval()
    assert model.config.model_type == name
    assert processor.chat_template == (tiny_vlms.TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")

    t1 = processor.apply_chat_template(CONVERSATION, tokenize=False)
    t2 = processor.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert MARKERS[name] in t1, t1
    assert "What colour is the circle?" in t1 and "red" in t1

    rng = np.random.default_rng(0)
    img1 = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    img2 = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    inputs = processor(text=[t1, t2], images=[[img1], [img2]], return_tensors="pt", padding=True)
    ids = inputs["input_ids"]
    assert ids.shape[0] == 2
    vocab = model.get_output_embeddings().weight.shape[0]
    assert len(processor.tokenizer) <= vocab
    assert int(ids.max()) < vocab
    # the tokenizer knows the prompt words (byte-level BPE never yields <unk>)
    if processor.tokenizer.unk_token_id is not None:
        assert processor.tokenizer.unk_token_id not in processor.tokenizer("What colour is the circle?")["input_ids"]

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, ids.shape[1], vocab)
    assert torch.isfinite(logits).all()

    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2
    assert ids.shape[1] < out.shape[1] <= ids.shape[1] + 3


def test_build_is_seeded(tmp_path):
    a = tiny_vlms.build("qwen2_vl", tmp_path / "a", seed=3)
    b = tiny_vlms.build("qwen2_vl", tmp_path / "b", seed=3)
    c = tiny_vlms.build("qwen2_vl", tmp_path / "c", seed=4)
    read = lambda folder: (folder / "model.safetensors").read_bytes()  # noqa: E731
    assert read(a) == read(b) != read(c)
    assert (a / "tokenizer.json").read_text() == (c / "tokenizer.json").read_text()
