"""Tiny random-weight VLMs of real architectures, for tests that must not touch the hub.

``build(name, folder)`` writes a folder that loads with ``AutoProcessor.from_pretrained`` and
``AutoModelForImageTextToText.from_pretrained``: a 2-layer, 64-wide model of the family's own
classes, a byte-level BPE tokenizer trained in-process (the family's special-token strings, BOS /
EOS / pad set as the family sets them), the family's processor / image processor classes sized so
that one image gives a handful of image tokens, and the chat template the family publishes
(``tests/chat_templates/<name>.jinja``; where each text came from is in ``TEMPLATE_SOURCES``).

Weights are random but seeded. Nothing here downloads anything.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ARCHITECTURES: tuple[str, ...] = (
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "idefics3",
    "smolvlm",
    "gemma3",
    "paligemma",
)

TEMPLATE_DIR = Path(__file__).parent / "chat_templates"

# Where each tests/chat_templates/<name>.jinja came from. Found copies are byte-for-byte the
# published text as vendored by the named public file; "reconstructed" marks the ones that are not.
TEMPLATE_SOURCES: dict[str, str] = {
    "llava": (
        "llava-hf/llava-1.5-7b-hf chat_template.json; verbatim from huggingface/optimum-intel "
        "optimum/exporters/openvino/utils.py (COMPLEX_CHAT_TEMPLATES, '# llava-1.5') and "
        "openvinotoolkit/openvino.genai src/cpp/src/tokenizer.cpp ('llava-1.5 ... (chat_template.json)')"
    ),
    "llava_next": (
        "llava-hf/llava-v1.6-mistral-7b-hf chat_template.json; verbatim from huggingface/optimum-intel "
        "optimum/exporters/openvino/utils.py (COMPLEX_CHAT_TEMPLATES, '# llava-next', the current text "
        "ending assistant turns with '</s> '; the older '# llava-next old' text had a literal '<\\s> ')"
    ),
    "qwen2_vl": (
        "Qwen/Qwen2-VL-2B-Instruct chat_template.json / tokenizer_config.json; verbatim from "
        "openvinotoolkit/openvino.genai src/cpp/src/tokenizer.cpp ('Qwen2-VL-2B-Instruct "
        "(tokenizer_config.json)') and huggingface/optimum-intel optimum/exporters/openvino/utils.py "
        "('# qwen2-vl-instruct')"
    ),
    "qwen2_5_vl": (
        "Qwen/Qwen2.5-VL-3B-Instruct chat_template.json, which is the Qwen2-VL-Instruct text (copied from "
        "the qwen2_vl sources above; no public copy labelled Qwen2.5-VL was found to check it against). "
        "The hub tokenizer_config.json of Qwen2.5-VL carries a different, tool-calling Qwen2.5 text; here "
        "the tokenizer gets the processor's template"
    ),
    "qwen3_vl": (
        "reconstructed: Qwen/Qwen3-VL-2B-Instruct not found verbatim. Built from the Qwen3-VL *Thinking* "
        "template found verbatim in public copies (e.g. a Mano-CUA agent's template_str, LM Studio "
        "per-model configs): same render_content macro, system/tools header and tool turns; the message "
        "loop and generation prompt follow the Qwen3 Instruct-2507 text (no <think> handling, no "
        "default system prompt, generation prompt '<|im_start|>assistant\\n')"
    ),
    "idefics3": (
        "HuggingFaceM4/Idefics3-8B-Llama3 chat_template; verbatim from a public Idefics3 fine-tuning "
        "dataset module (idefics3_chat_template = ..., '.capitalize()' form); another public copy "
        "(ModernVBert processor DEFAULT_CHAT_TEMPLATE) writes \"| capitalize\" instead, which renders "
        "identically. Rendering matches transformers tests/models/idefics3/test_processor_idefics3.py "
        "expected_rendered for the hub processor"
    ),
    "smolvlm": (
        "HuggingFaceTB/SmolVLM-256M-Instruct chat_template.json (== tokenizer_config.json); verbatim from "
        "transformers tests/models/smolvlm/test_processor_smolvlm.py prepare_processor_dict and from "
        "LocalLLMClient's test asserting the SmolVLM-256M-Instruct GGUF's template"
    ),
    "gemma3": (
        "google/gemma-3-4b-it chat_template (tokenizer_config.json / chat_template.json); verbatim from a "
        "llama.cpp /props dump of gemma-3-4b-it-Q4_K_M.gguf (len 1531, sha256 8d9e3a3c114fb205..., "
        "matched exactly); the transformers gemma3 processor test carries an older text without the "
        "'content is string' branch for system messages"
    ),
    "paligemma": (
        "none published (google/paligemma* ship no chat template): mmloop's own minimal template, "
        "explained in a comment at the top of the file"
    ),
}

# Families whose published tokenizer_config.json also carries the chat template.
_TOKENIZER_HAS_TEMPLATE = {"llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "gemma3"}

# ---------------------------------------------------------------------------------------------
# tokenizer

_WORDS = (
    "red green blue yellow purple orange circle square triangle small large "
    "What colour color shape is the How many Is there a Yes No Options: Answer with the option's "
    "letter from the given choices directly. A B C D 0 1 2 3 4 5 6 7 8 9 10 "
    "What is the colour of the shape? What shape is it? How many shapes are there? Is there a red "
    "circle? Yes. No. image picture describe this Describe the image. User Assistant USER ASSISTANT "
    "user assistant system model You are a helpful assistant. Picture Video of and in on to it "
    "The answer is left right top bottom big"
)


def _corpus() -> list[str]:
    colours = "red green blue yellow purple orange".split()
    shapes = "circle square triangle".split()
    lines = [_WORDS, _WORDS.lower()]
    for c in colours:
        for s in shapes:
            for size in ("small", "large"):
                lines.append(f"What colour is the {size} {s}? {c}")
                lines.append(f"Is there a {size} {c} {s}? Yes")
                lines.append(f"There is a {size} {c} {s} on the left.")
    for n in range(11):
        lines.append(f"How many shapes are there? {n}")
    lines.append(
        "What shape is the red object?\nOptions:\nA. circle\nB. square\nC. triangle\nD. none\n"
        "Answer with the option's letter from the given choices directly.\nA"
    )
    lines.append("0123456789 10 11 12 100 2024")
    return lines * 3


@functools.lru_cache(maxsize=None)
def _trained_bpe(special_tokens: tuple[str, ...], vocab_size: int) -> str:
    """A byte-level BPE trained on the small corpus, special tokens first; returned as JSON."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def _tokenizer(special_tokens, *, vocab_size=600, **kwargs) -> transformers.PreTrainedTokenizerFast:
    """Wrap a freshly trained BPE; ``kwargs`` are the tokenizer_config entries (bos/eos/pad, ...)."""
    backend = Tokenizer.from_str(_trained_bpe(tuple(special_tokens), vocab_size))
    kwargs.setdefault("padding_side", "left")
    kwargs.setdefault("model_max_length", 4096)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def _ids(tokenizer, *tokens):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    assert all(i is not None and i != tokenizer.unk_token_id for i in ids), (tokens, ids)
    return ids[0] if len(ids) == 1 else ids


def _template(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# shared sizes

_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=2048
)
_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
_ROW_COL = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))


# ---------------------------------------------------------------------------------------------
# families


def _llava(name: str):
    mistral = name == "llava_next"
    tok = _tokenizer(
        ("<unk>", "<s>", "</s>", "<image>", "<pad>"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        extra_special_tokens={"image_token": "<image>"},
    )
    # CLIP ViT, patch 7. LLaVA-1.5: 28 px -> 4x4 = 16 patch features (+CLS, dropped by the "default"
    # strategy). LLaVA-NeXT: 14 px base -> 4 features, plus up to 2x2 such crops (image_grid_pinpoints)
    # unpadded and with a newline token per row: 64x64 -> 24 image tokens.
    side = 14 if mistral else 28
    vision = transformers.CLIPVisionConfig(**_VISION, image_size=side, patch_size=7, projection_dim=64)
    common = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_TEXT,
    )
    processor_kwargs = dict(patch_size=7, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    if not mistral:
        text = transformers.LlamaConfig(**common, num_key_value_heads=4)  # Llama-2/Vicuna: no GQA
        image_processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        )
        processor = transformers.LlavaProcessor(
            image_processor=image_processor, tokenizer=tok, chat_template=_template(name), **processor_kwargs
        )
        config = transformers.LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=_ids(tok, "<image>"),
            image_seq_length=16,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
        )
        model = transformers.LlavaForConditionalGeneration(config)
    else:
        text = transformers.MistralConfig(**common, num_key_value_heads=2, sliding_window=None)
        pinpoints = [[14, 28], [28, 14], [28, 28]]
        image_processor = transformers.LlavaNextImageProcessor(
            size={"shortest_edge": 14}, crop_size={"height": 14, "width": 14}, image_grid_pinpoints=pinpoints
        )
        processor = transformers.LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tok, chat_template=_template(name), **processor_kwargs
        )
        config = transformers.LlavaNextConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=_ids(tok, "<image>"),
            image_grid_pinpoints=pinpoints,
            image_seq_length=4,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
        )
        model = transformers.LlavaNextForConditionalGeneration(config)
    return model, processor, dict(eos_token_id=tok.eos_token_id)


_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _qwen(name: str):
    tok = _tokenizer(
        _QWEN_SPECIALS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,  # Qwen has no BOS
        add_bos_token=False,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
    token_ids = dict(
        image_token_id=_ids(tok, "<|image_pad|>"),
        video_token_id=_ids(tok, "<|video_pad|>"),
        vision_start_token_id=_ids(tok, "<|vision_start|>"),
        vision_end_token_id=_ids(tok, "<|vision_end|>"),
    )
    text = dict(
        vocab_size=len(tok),
        num_key_value_heads=2,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_TEXT,
    )
    # head_dim 16 -> 8 rotary frequencies, split over (t, h, w) as mrope_section.
    if name == "qwen3_vl":
        patch = 16
        text_config = transformers.Qwen3VLTextConfig(
            **{k: v for k, v in text.items() if k not in ("bos_token_id", "eos_token_id")},
            head_dim=16,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        )
        vision = transformers.Qwen3VLVisionConfig(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=64,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[1],
        )
        config = transformers.Qwen3VLConfig(text_config=text_config, vision_config=vision, **token_ids)
        model_cls = transformers.Qwen3VLForConditionalGeneration
        processor_cls = transformers.Qwen3VLProcessor
        video_cls = transformers.Qwen3VLVideoProcessor
        mean_std = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    else:
        patch = 14
        rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]}
        text_config = transformers.Qwen2VLTextConfig(**text, rope_parameters=rope)
        if name == "qwen2_vl":
            vision = transformers.Qwen2VLVisionConfig(
                depth=2, embed_dim=64, hidden_size=64, mlp_ratio=2, num_heads=4, patch_size=patch, spatial_merge_size=2
            )
            config = transformers.Qwen2VLConfig(text_config=text_config, vision_config=vision, **token_ids)
            model_cls = transformers.Qwen2VLForConditionalGeneration
            processor_cls = transformers.Qwen2VLProcessor
        else:
            vision = transformers.Qwen2_5_VLVisionConfig(
                depth=2,
                hidden_size=64,
                intermediate_size=128,
                num_heads=4,
                out_hidden_size=64,
                patch_size=patch,
                spatial_merge_size=2,
                window_size=112,
                fullatt_block_indexes=[1],
            )
            text_config = transformers.Qwen2_5_VLTextConfig(**text, rope_parameters=rope)
            config = transformers.Qwen2_5_VLConfig(text_config=text_config, vision_config=vision, **token_ids)
            model_cls = transformers.Qwen2_5_VLForConditionalGeneration
            processor_cls = transformers.Qwen2_5_VLProcessor
        video_cls = transformers.Qwen2VLVideoProcessor
        mean_std = {}
    factor = patch * 2
    # smart_resize keeps h*w within [min, max] pixels on a grid of `factor`: 2x2 .. 4x4 merged tokens.
    min_pixels, max_pixels = (2 * factor) ** 2, (4 * factor) ** 2
    image_processor = transformers.Qwen2VLImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch, merge_size=2, temporal_patch_size=2, **mean_std
    )
    video_processor = video_cls(
        size={"shortest_edge": min_pixels, "longest_edge": 4 * max_pixels},
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        **mean_std,
    )
    processor = processor_cls(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor, chat_template=_template(name)
    )
    model = model_cls(config)
    return model, processor, dict(eos_token_id=[_ids(tok, "<|im_end|>"), _ids(tok, "<|endoftext|>")])


def _idefics(name: str):
    smol = name == "smolvlm"
    specials = (
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
        if smol
        else ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>")
    ) + ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>") + _ROW_COL
    if smol:
        specials += ("<video>",)
        # SmolVLM (SmolLM2 tokenizer): no BOS added; the template writes <|im_start|> itself.
        tok = _tokenizer(
            specials,
            bos_token="<|im_start|>",
            eos_token="<end_of_utterance>",
            pad_token="<|im_end|>",
            unk_token="<|endoftext|>",
            add_bos_token=False,
            extra_special_tokens={
                "fake_image_token": "<fake_token_around_image>",
                "image_token": "<image>",
                "end_of_utterance_token": "<end_of_utterance>",
                "global_image_token": "<global-img>",
                "video_token": "<video>",
            },
        )
    else:
        # Idefics3 (Llama 3 tokenizer): BOS <|begin_of_text|> added by the tokenizer.
        tok = _tokenizer(
            specials,
            bos_token="<|begin_of_text|>",
            eos_token="<end_of_utterance>",
            pad_token="<|reserved_special_token_0|>",
            add_bos_token=True,
        )
    text = transformers.LlamaConfig(
        vocab_size=len(tok),
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_TEXT,
    )
    if smol:
        # 64 px tiles / patch 8 = 8x8 patches, pixel-shuffled by 4 -> 4 image tokens per tile.
        tile, scale, patch = 64, 4, 8
        vision = transformers.SmolVLMVisionConfig(**_VISION, image_size=tile, patch_size=patch)
        config = transformers.SmolVLMConfig(
            vision_config=vision, text_config=text, scale_factor=scale, image_token_id=_ids(tok, "<image>")
        )
        image_processor = transformers.SmolVLMImageProcessor(
            size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}, do_image_splitting=True
        )
        video_processor = transformers.SmolVLMVideoProcessor(
            size={"longest_edge": tile}, max_image_size={"longest_edge": tile}
        )
        processor = transformers.SmolVLMProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            video_processor=video_processor,
            image_seq_len=(tile // patch) ** 2 // scale**2,
            chat_template=_template(name),
        )
        model = transformers.SmolVLMForConditionalGeneration(config)
    else:
        # 32 px tiles / patch 8 = 4x4 patches, pixel-shuffled by 2 -> 4 image tokens per tile.
        tile, scale, patch = 32, 2, 8
        vision = transformers.Idefics3VisionConfig(**_VISION, image_size=tile, patch_size=patch)
        config = transformers.Idefics3Config(
            vision_config=vision, text_config=text, scale_factor=scale, image_token_id=_ids(tok, "<image>")
        )
        image_processor = transformers.Idefics3ImageProcessor(
            size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}, do_image_splitting=True
        )
        processor = transformers.Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tok,
            image_seq_len=(tile // patch) ** 2 // scale**2,
            chat_template=_template(name),
        )
        model = transformers.Idefics3ForConditionalGeneration(config)
    return model, processor, dict(eos_token_id=tok.eos_token_id)


def _gemma3(name: str):
    tok = _tokenizer(
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
        + ("<start_of_image>", "<end_of_image>", "<image_soft_token>"),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    text = transformers.Gemma3TextConfig(
        vocab_size=len(tok),
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=512,  # longer than the tests' prompts, as 1024 is for the real ones
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_TEXT,
    )
    # SigLIP 32 px / patch 8 = 4x4 patches, average-pooled to 2x2 = 4 soft tokens per image.
    vision = transformers.SiglipVisionConfig(**_VISION, image_size=32, patch_size=8, vision_use_head=False)
    config = transformers.Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=_ids(tok, "<start_of_image>"),
        eoi_token_index=_ids(tok, "<end_of_image>"),
        image_token_index=_ids(tok, "<image_soft_token>"),
    )
    image_processor = transformers.Gemma3ImageProcessor(
        size={"height": 32, "width": 32}, do_pan_and_scan=False, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = transformers.Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_length=4, chat_template=_template(name)
    )
    model = transformers.Gemma3ForConditionalGeneration(config)
    return model, processor, dict(eos_token_id=[tok.eos_token_id, _ids(tok, "<end_of_turn>")])


def _paligemma(name: str):
    tok = _tokenizer(
        ("<pad>", "<eos>", "<bos>", "<unk>", "<image>"),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=False,  # PaliGemmaProcessor inserts <bos> itself (and turns add_bos_token off)
        extra_special_tokens={"image_token": "<image>"},
    )
    # SigLIP 32 px / patch 8 -> 16 image tokens.
    image_processor = transformers.SiglipImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image_processor.image_seq_length = 16
    # The processor adds PaliGemma's <loc####>/<seg###> tokens, so the vocab is sized after it.
    processor = transformers.PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=_template(name)
    )
    text = transformers.GemmaConfig(
        vocab_size=len(tok),
        num_key_value_heads=1,  # Gemma-2B: multi-query attention
        head_dim=16,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **_TEXT,
    )
    vision = transformers.SiglipVisionConfig(**_VISION, image_size=32, patch_size=8, projection_dim=64)
    config = transformers.PaliGemmaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=_ids(tok, "<image>"),
        projection_dim=64,
        hidden_size=64,
        vocab_size=len(tok),
    )
    model = transformers.PaliGemmaForConditionalGeneration(config)
    return model, processor, dict(eos_token_id=tok.eos_token_id)



_BUILDERS = {
    "llava": _llava,
    "llava_next": _llava,
    "qwen2_vl": _qwen,
    "qwen2_5_vl": _qwen,
    "qwen3_vl": _qwen,
    "idefics3": _idefics,
    "smolvlm": _idefics,
    "gemma3": _gemma3,
    "paligemma": _paligemma,
}


def build(name: str, folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random ``name`` model and its processor to ``folder`` and return the folder."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown architecture {name!r}; expected one of {ARCHITECTURES}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model, processor, generation = _BUILDERS[name](name)
        tokenizer = processor.tokenizer
        if name in _TOKENIZER_HAS_TEMPLATE:
            tokenizer.chat_template = processor.chat_template
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = generation["eos_token_id"]
        model.eval()
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    finally:
        quiet.setLevel(level)
    return folder
