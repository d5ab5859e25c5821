"""The vision-language model: build the embedded tiny LLaVA, save it, load any model.

Every stage loads a model through `load(path_or_hub_id)`, which is
AutoProcessor + AutoModelForImageTextToText, so a hub id and the embedded
tiny LLaVA folder take the same path. The tiny model is built here from
parameters only (no hub access):

- a frozen, randomly initialised CLIP-ViT vision tower (hidden 128, 3 layers,
  patch 16, 64 px) whose patch embeddings (hidden state 0) feed the projector:
  they already separate shape, colour and size when objects sit in patch-aligned
  cells, and they hold one cell each; the random attention layers above them mix
  every cell into every patch, which blurs which object an attribute belongs to
  (measured in the README: binding questions learn faster from the embeddings);
- a 128-d, 4-layer Llama with tied embeddings and init std 0.08 (about
  1/sqrt(hidden)); the transformers default 0.02 stalls tiny models at the
  answer prior;
- a word-level tokenizer trained in-process on the seed texts, `<image>` an
  added special token;
- a chat template in the standard content-list form whose assistant replies end with
  EOS (training finds the replies by rendering turn by turn, `models.chat`; the
  `{% generation %}` tags are kept for transformers' own assistant masks).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

IMAGE_TOKEN = "<image>"
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<unk>", "<s>", "</s>"
USER_TAG, ASSISTANT_TAG, SYSTEM_TAG = "USER:", "ASSISTANT:", "SYSTEM:"

# Vicuna-style turns. The image goes before the text of the turn that carries it;
# assistant replies (and their end token) are the generation spans the loss trains on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}"
    "SYSTEM: {% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "USER: {% for part in parts %}{% if part['type'] == 'image' %}<image>{{ '\\n' }}{% endif %}{% endfor %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}"
    "{% else %}"
    "ASSISTANT: {% generation %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token }}{% endgeneration %}{{ '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Words the template and the MCQ prompts always use, so they are in the vocabulary
# even when a tiny seed happens to miss some of them.
TEMPLATE_WORDS = ("USER: ASSISTANT: SYSTEM: Hint: Options: A. B. C. D. E. F. G. H. "
                  "Answer with the option's letter from the given choices directly.")

DEFAULT_CONFIG = {
    "image_size": 64,
    "patch_size": 16,
    "vision_hidden": 128,
    "vision_layers": 3,
    "vision_heads": 4,
    # Which hidden state of the tower feeds the projector: 0 = the patch embeddings.
    "vision_feature_layer": 0,
    "text_hidden": 128,
    "text_layers": 4,
    "text_heads": 4,
    "text_intermediate": 512,
    "initializer_range": 0.08,
    "max_positions": 1024,
}


def set_threads(threads: int) -> None:
    """CPU threads for torch (the `threads` params: as many as the machine's cores is the usual choice)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def placement(compute) -> tuple[str, str]:
    """(device, dtype) of a `compute` section: "auto" picks cuda in bfloat16 when a GPU is there,
    else the CPU in float32."""
    import torch

    device = compute.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = compute.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return device, dtype


def build_tokenizer(texts: Iterable[str]):
    """A word-level PreTrainedTokenizerFast trained on `texts`, `<image>` an added special token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN]
    core = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
    core.train_from_iterator(_with_template_words(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN, unk_token=UNK_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.padding_side = "right"
    return tokenizer


def _with_template_words(texts: Iterable[str]) -> Iterable[str]:
    yield TEMPLATE_WORDS
    yield from texts


def build(texts: Iterable[str], *, seed: int = 0, **config: Any):
    """Build the embedded tiny LLaVA and its processor; returns (model, processor).

    `texts`: every text the model should know (the seed conversations); unknown
    words map to `<unk>`. `config` overrides DEFAULT_CONFIG.
    """
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise KeyError(f"unknown tiny-VLM config keys: {sorted(unknown)} (have {sorted(DEFAULT_CONFIG)})")
    cfg = {**DEFAULT_CONFIG, **config}
    tokenizer = build_tokenizer(texts)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    patches = (cfg["image_size"] // cfg["patch_size"]) ** 2

    vision = CLIPVisionConfig(
        hidden_size=cfg["vision_hidden"], intermediate_size=4 * cfg["vision_hidden"],
        num_hidden_layers=cfg["vision_layers"], num_attention_heads=cfg["vision_heads"],
        image_size=cfg["image_size"], patch_size=cfg["patch_size"], projection_dim=cfg["vision_hidden"],
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg["text_hidden"],
        intermediate_size=cfg["text_intermediate"], num_hidden_layers=cfg["text_layers"],
        num_attention_heads=cfg["text_heads"], num_key_value_heads=cfg["text_heads"],
        max_position_embeddings=cfg["max_positions"], initializer_range=cfg["initializer_range"],
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config_obj = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        vision_feature_layer=_hidden_state_index(cfg["vision_feature_layer"], cfg["vision_layers"]),
        vision_feature_select_strategy="default",
        image_seq_length=patches, projector_hidden_act="gelu", tie_word_embeddings=True,
    )
    config_obj.initializer_range = cfg["initializer_range"]
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config_obj)
    _reinit_text_model(model, cfg["initializer_range"], seed)
    model.model.vision_tower.requires_grad_(False)

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": cfg["image_size"]},
        crop_size={"height": cfg["image_size"], "width": cfg["image_size"]},
        do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True, do_convert_rgb=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
        patch_size=cfg["patch_size"], vision_feature_select_strategy="default",
        # the CLS token: "default" drops it, so without this the processor inserts one token fewer
        num_additional_image_tokens=1,
    )
    return model, processor


def _hidden_state_index(layer: int, layers: int) -> int:
    """LlavaConfig's negative index of hidden state `layer` (0 = embeddings) of a `layers`-deep tower:
    transformers reads a vision_feature_layer of 0 as "no layer given", so count from the end."""
    if not 0 <= layer <= layers:
        raise ValueError(f"tiny-VLM config: vision_feature_layer must be in 0..{layers}, got {layer}")
    return layer - (layers + 1)


def _reinit_text_model(model, std: float, seed: int) -> None:
    """Give the language model and projector weights std `std` whatever the library's
    own init did (the init scale is what lets a tiny model learn at all)."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in [model.model.language_model, model.model.multi_modal_projector]:
            for name, param in module.named_parameters():
                if param.dim() >= 2:
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
                elif "norm" in name:
                    param.fill_(1.0)
                else:
                    param.zero_()


def quiet_library_progress() -> None:
    """transformers' own loading/saving bars follow mmloop's rule: only on a terminal, never in CI."""
    from transformers.utils import logging as transformers_logging

    from mmloop.io import show_progress

    if not show_progress():
        transformers_logging.disable_progress_bar()


def save(model, processor, path: str | os.PathLike) -> Path:
    """save_pretrained of both into `path` (weights as safetensors)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    quiet_library_progress()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def load(path_or_hub_id: str | os.PathLike, *, trainable: bool = False, dtype: str = "float32",
         device: str | None = None):
    """(model, processor) from a local folder or a hub id, the same way for both; weights in
    `dtype`, moved to `device` (None: left where they load, for the Trainer to place)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from mmloop.models.architectures import architecture

    quiet_library_progress()
    source = str(path_or_hub_id)
    check_loadable(source)
    try:
        AutoConfig.from_pretrained(source)  # one file first: an unreachable hub id fails after one round of retries
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=getattr(torch, dtype))
    except OSError as err:  # transformers' and the hub's "not found", "cannot connect", "no such file"
        raise ModelNotFoundError(_load_failure(source, err)) from None
    architecture(model)  # an unknown family fails here, before any work
    if device is not None:
        model.to(device)
    if trainable:
        model.train()
    else:
        model.eval()
    return model, processor


class ModelNotFoundError(FileNotFoundError):
    """A model path or hub id that cannot be loaded: the message names it and what to do."""


# What to pass instead, said once for every way a model can fail to be found.
MODEL_HINT = ("pass a folder holding a saved model (config.json, the weights and the processor files; "
              "models/iter=N once the loop has trained it) or a hub id that is reachable or already in the "
              "Hugging Face cache (offline, set HF_HUB_OFFLINE=1 to use the cache)")


def check_loadable(source: str) -> None:
    """ModelNotFoundError, before any hub access, for a local path that is not a model folder."""
    path = Path(source).expanduser()
    if path.is_file():
        raise ModelNotFoundError(f"{source}: is a file, not a model folder; {MODEL_HINT}")
    if _looks_local(source) and not path.is_dir():
        raise ModelNotFoundError(f"{source}: model folder not found; {MODEL_HINT}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{source}: this folder holds no saved model (no config.json); {MODEL_HINT}")


def _load_failure(source: str, err: OSError) -> str:
    """One line: which model, why it failed (transformers' first line), what to do."""
    reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    if Path(source).expanduser().is_dir():
        return f"{source}: cannot load a model from this folder ({reason}); {MODEL_HINT}"
    return f"{source}: no such local folder, and not loadable as a hub id ({reason}); {MODEL_HINT}"


def _looks_local(source: str) -> bool:
    """A path rather than a hub id ("org/name"): it exists, is explicitly relative or absolute,
    or sits in a folder that exists (models/iter=3 before it is trained)."""
    path = Path(source).expanduser()
    return path.exists() or source.startswith((".", "/", "~")) or (path.parent != Path(".") and path.parent.is_dir())


def model_name(path_or_hub_id: str | os.PathLike) -> str:
    return str(path_or_hub_id)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
