"""Conversations through a model's own chat template: messages, rendering, and what the loss trains on.

Any published template works, because nothing here relies on template features only some
families publish (`{% generation %}` tags): the reply spans are found by rendering the
conversation turn by turn and diffing. For assistant turn k,

    prompt_k = render(turns[:k], add_generation_prompt=True)
    full_k   = render(turns[:k + 1])

full_k must extend prompt_k; the reply is found in what follows, and the span covers the
reply and the end-of-turn token right after it (`<|im_end|>`, `<end_of_turn>`, `</s>`...),
not what the template writes between the generation prompt and the reply (PaliGemma's "\n")
nor the separator after the end token. A token that straddles the reply's start (" A" after
"ASSISTANT:") is trained, as the model generates it. The spans are character offsets
into the rendered conversation; `token_mask` maps them onto the processor's tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def messages(conversations: Sequence[Mapping[str, str]], *, with_image: bool = True) -> list[dict[str, Any]]:
    """Sample-schema turns to chat messages in the content-list form; the image
    goes into the first user turn."""
    out, image_placed = [], not with_image
    for turn in conversations:
        content: list[dict[str, Any]] = []
        if turn["role"] == "user" and not image_placed:
            content.append({"type": "image"})
            image_placed = True
        content.append({"type": "text", "text": turn["content"]})
        out.append({"role": turn["role"], "content": content})
    return out


def render(processor, conversation: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False) -> str:
    return processor.apply_chat_template(list(conversation), add_generation_prompt=add_generation_prompt,
                                         tokenize=False)


def adds_special_tokens(processor, text: str) -> bool:
    """Whether tokenising `text` should add the tokenizer's special tokens (BOS): not when the
    template already wrote the BOS, as transformers' own `apply_chat_template` decides."""
    bos = getattr(processor.tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def encode(processor, texts: Sequence[str], arrays: Sequence[Any], *,
           padding_side: str = "right") -> dict[str, Any]:
    """One processor call for chat-template `texts`, each with its own image (a list per prompt:
    a flat list is one prompt's images to SmolVLM and Gemma 3), padded on `padding_side`, BOS
    added only when the template did not write it. Every output the processor returns is kept
    but `labels` (PaliGemma returns some when given a suffix)."""
    tokenizer = processor.tokenizer
    previous, tokenizer.padding_side = tokenizer.padding_side, padding_side
    try:
        encoded = processor(text=list(texts), images=[[array] for array in arrays], return_tensors="pt",
                            padding=True, add_special_tokens=adds_special_tokens(processor, texts[0]))
    finally:
        tokenizer.padding_side = previous
    return {key: value for key, value in encoded.items() if key != "labels"}


def end_tokens(tokenizer) -> list[str]:
    """The special tokens a reply can end with, longest first."""
    tokens = set(tokenizer.all_special_tokens)
    tokens |= {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return sorted((token for token in tokens if token), key=len, reverse=True)


def reply_spans(processor, conversation: Sequence[Mapping[str, Any]],
                source: str = "conversation") -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the character span of each assistant reply plus its end token).

    A template that writes no end-of-turn token after a reply (LLaVA-1.5's as published: "ASSISTANT:
    red USER: ...") gets the tokenizer's EOS inserted there, which is what such a model emits to
    stop; otherwise it would never learn to. Raises ValueError naming `source` when the template
    rewrites earlier turns (then the turn-by-turn diff is not defined), leaves a reply out, or
    there is no EOS to insert."""
    rendered = text = render(processor, conversation)
    ends = end_tokens(processor.tokenizer)
    eos = processor.tokenizer.eos_token
    spans, inserted = [], 0  # characters of EOS inserted so far: offsets in `text` are shifted by them
    for k, turn in enumerate(conversation):
        if turn["role"] != "assistant":
            continue
        prompt = render(processor, conversation[:k], add_generation_prompt=True)
        full = render(processor, conversation[:k + 1])
        if not (full.startswith(prompt) and rendered.startswith(full)):
            raise ValueError(f"{source}: the chat template renders turn {k} differently once later turns follow; "
                             f"the reply spans to train on cannot be found by rendering turn by turn")
        reply = turn["content"] if isinstance(turn["content"], str) else \
            "".join(part["text"] for part in turn["content"] if part.get("type") == "text")
        at = full.find(reply.strip(), len(prompt))
        if at < 0:
            raise ValueError(f"{source}: assistant turn {k}: the chat template does not write the reply verbatim")
        end = at + len(reply.strip())
        end_token = next((token for token in ends if full.startswith(token, end)), None)
        if end_token is None:
            if not eos:
                raise ValueError(f"{source}: assistant turn {k}: the chat template writes no end-of-turn token after "
                                 f"the reply and the tokenizer has no EOS; a model trained on it never learns to stop")
            text = text[:end + inserted] + eos + text[end + inserted:]
            spans.append((at + inserted, end + inserted + len(eos)))
            inserted += len(eos)
        else:
            spans.append((at + inserted, end + len(end_token) + inserted))
    return text, spans


def token_mask(offsets: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], shift: int = 0) -> list[bool]:
    """Which tokens overlap a span. `offsets` are the tokens' (start, end) characters in the text
    the tokenizer saw, which may be longer than the rendered one by `shift` characters when the
    processor expanded the image placeholder before the spans (the images sit in the first user
    turn, so every reply comes after them). Zero-width tokens (an added BOS, padding) never match."""
    return [any(start < end_char + shift and end > start_char + shift and end > start for start_char, end_char in spans)
            for start, end in offsets]
