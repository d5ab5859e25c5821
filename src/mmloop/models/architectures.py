"""What differs between VLM architectures, in one registry keyed by the config's `model_type`.

Everything else (loading, chat templates, processors, the Trainer, log-likelihood scoring) goes
through transformers' Auto classes and is the same for every family. An entry says:

- `decoder`: the language model's module path; LoRA wraps its linear layers;
- `projector`: the module(s) mapping image features into the decoder, trained fully next to LoRA;
- `vision`: the vision tower, frozen unless training is told to open it;
- `reply_token_types`: per-token processor outputs and the value a reply's tokens carry in
  them when the scorer appends reply tokens to a prompt (PaliGemma's prefix-LM marks the
  suffix with token type 1 so it attends causally; Gemma 3 marks only image tokens);
- `mrope` / `position_offset`: how positions continue after a cached prompt (multimodal RoPE
  takes each prompt's rope delta; PaliGemma numbers positions from 1);
- `processor_suffix`: text the processor appends to every prompt itself (PaliGemma ends its
  prefix with "\n"), so a reply's tokens start after it.

Module paths are those of `AutoModelForImageTextToText` in the installed transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Architecture:
    decoder: str
    projector: tuple[str, ...]
    vision: str
    reply_token_types: dict[str, int] = field(default_factory=dict)
    mrope: bool = False  # multimodal RoPE: positions come from the model's get_rope_index
    position_offset: int = 0  # the first token's position (PaliGemma counts from 1)
    processor_suffix: str = ""  # text the processor appends to every prompt (PaliGemma: the prefix's "\n")


LLAVA = Architecture(decoder="model.language_model", projector=("model.multi_modal_projector",),
                     vision="model.vision_tower")
QWEN_VL = Architecture(decoder="model.language_model", projector=("model.visual.merger",), vision="model.visual",
                       reply_token_types={"mm_token_type_ids": 0}, mrope=True)
IDEFICS3 = Architecture(decoder="model.text_model", projector=("model.connector",), vision="model.vision_model")

ARCHITECTURES: dict[str, Architecture] = {
    "llava": LLAVA,
    "llava_next": LLAVA,
    "qwen2_vl": QWEN_VL,
    "qwen2_5_vl": QWEN_VL,
    # Qwen3-VL also feeds intermediate vision layers into the decoder through its deepstack mergers.
    "qwen3_vl": Architecture(decoder="model.language_model",
                             projector=("model.visual.merger", "model.visual.deepstack_merger_list"),
                             vision="model.visual", reply_token_types={"mm_token_type_ids": 0}, mrope=True),
    "idefics3": IDEFICS3,
    "smolvlm": IDEFICS3,
    "gemma3": Architecture(decoder="model.language_model", projector=("model.multi_modal_projector",),
                           vision="model.vision_tower", reply_token_types={"token_type_ids": 0,
                                                                           "mm_token_type_ids": 0}),
    "paligemma": Architecture(decoder="model.language_model", projector=("model.multi_modal_projector",),
                              vision="model.vision_tower", reply_token_types={"token_type_ids": 1},
                              position_offset=1, processor_suffix="\n"),
}


def architecture(model) -> Architecture:
    """The registry entry of `model` (by `config.model_type`, through a peft wrapper); a clear
    error for an unknown one."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise NotImplementedError(
            f"mmloop does not know the VLM architecture {model_type!r} (known: {', '.join(sorted(ARCHITECTURES))}). "
            f"Add an Architecture(decoder=..., projector=..., vision=...) entry for it to "
            f"mmloop.models.architectures.ARCHITECTURES, with the module paths printed by "
            f"`[name for name, _ in model.named_children()]` on the model and its `model` attribute")
    return ARCHITECTURES[model_type]


def submodule(model, path: str):
    """The module at `path` ("model.visual.merger"); a clear error when the path is wrong."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise NotImplementedError(f"{type(model).__name__} has no module {path!r}; the architecture registry "
                                  f"(mmloop.models.architectures) does not match the installed transformers") from None


def decoder_linear_layers(model) -> list[str]:
    """Full names of the decoder's linear layers: LoRA's targets, whatever the family calls its projections."""
    import torch

    prefix = architecture(model).decoder + "."
    return [name for name, module in model.named_modules()
            if name.startswith(prefix) and isinstance(module, torch.nn.Linear)]
