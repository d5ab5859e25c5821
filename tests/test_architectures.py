"""The support matrix: every architecture mmloop claims, as a tiny random-weight model of its own
classes, processor and published chat template (tests/tiny_vlms.py), through the same code the
stages run: log-likelihood scoring against a naive per-option reference, generation, the training
mask, and one LoRA round that changes the scores and reloads through the Auto classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny_vlms
from mmloop.config import TrainConfig
from mmloop.eval import scoring
from mmloop.loop import training
from mmloop.models import architectures, chat, vlm
from mmloop.questions import MCQ_SUFFIXES, mcq_prompt

QUESTIONS = [("What colour is the circle?", ["red", "green", "blue", "purple"]),
             ("What shape is the large object?", ["circle", "square", "triangle", "small circle"]),
             ("How many shapes are there?", ["1", "2", "3", "4"])]
LETTERS = ["A", "B", "C", "D"]
# Multi-token replies for every tokenizer of the matrix.
OPTION_TEXTS = ["large red circle", "small green square", "purple triangle", "two"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("architectures")
    loaded = {}

    def get(name):
        if name not in loaded:
            folder = tiny_vlms.build(name, root / name)
            loaded[name] = (folder, *vlm.load(folder))
        return loaded[name]

    return get


def images(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (48, 80), (72, 56)]
    return [rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8) for i in range(count)]


def user_turns(answer_format: str = "letter") -> list[list[dict]]:
    return [chat.messages([{"role": "user", "content": mcq_prompt(q, options, answer_format=answer_format)}])
            for q, options in QUESTIONS]


def prompt_texts(processor, answer_format: str = "letter") -> list[str]:
    return [chat.render(processor, user, add_generation_prompt=True) for user in user_turns(answer_format)]


def naive_scores(model, processor, answer_format, arrays, replies) -> list[list[float]]:
    """The plain reference: per item and reply, the whole conversation through the processor in its
    own forward pass; the reply's tokens are those after the prompt's tokens up to the reply's end."""
    spec = architectures.architecture(model)
    scores = []
    with torch.no_grad():
        for user, array in zip(user_turns(answer_format), arrays):
            text = chat.render(processor, user, add_generation_prompt=True)
            prompt_ids = chat.encode(processor, [text], [array])["input_ids"][0]
            row = []
            for reply in replies:
                full = chat.render(processor, user + [{"role": "assistant", "content": [{"type": "text", "text": reply}]}])
                inputs = chat.encode(processor, [full[:full.index(reply, len(text)) + len(reply)]], [array])
                reply_ids = inputs["input_ids"][0]
                if spec.processor_suffix:  # the processor appends it after the reply too
                    reply_ids = reply_ids[:len(reply_ids) - len(processor.tokenizer(
                        spec.processor_suffix, add_special_tokens=False)["input_ids"])]
                start = len(prompt_ids)
                while start > 0 and not torch.equal(reply_ids[:start], prompt_ids[:start]):
                    start -= 1
                for key, value in spec.reply_token_types.items():
                    if key in inputs:  # PaliGemma: the reply is the causal suffix of its prefix-LM
                        inputs[key][0, start:] = value
                logprobs = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
                row.append(sum(float(logprobs[i - 1, reply_ids[i]]) for i in range(start, len(reply_ids))))
            scores.append(row)
    return scores


def loglik(model, processor, texts, arrays, replies, method="auto"):
    scorer = scoring.LoglikScorer(model, processor, method=method, batch_size=8)
    with torch.no_grad():
        scores, _ = scorer.score(texts, arrays, [replies] * len(texts), ["mcq"] * len(texts),
                                 tuple(MCQ_SUFFIXES.values()), list(range(len(texts))))
    return scores, scorer


ALL = tiny_vlms.ARCHITECTURES


@pytest.mark.parametrize("name", ALL)
def test_the_registry_knows_the_architecture(models, name):
    _, model, _ = models(name)
    spec = architectures.architecture(model)
    for path in (spec.decoder, spec.vision, *spec.projector):
        architectures.submodule(model, path)
    assert architectures.decoder_linear_layers(model)


def test_an_unknown_architecture_is_refused_with_what_to_add():
    class Unknown(torch.nn.Module):
        config = type("Config", (), {"model_type": "brand_new_vlm"})()

    with pytest.raises(NotImplementedError, match="brand_new_vlm.*ARCHITECTURES"):
        architectures.architecture(Unknown())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("answer_format, replies", [("letter", LETTERS), ("option", OPTION_TEXTS)])
def test_loglik_equals_the_naive_per_option_reference(models, name, answer_format, replies):
    _, model, processor = models(name)
    texts, arrays = prompt_texts(processor, answer_format), images()
    expected = naive_scores(model, processor, answer_format, arrays, replies)
    for method in ("auto", "per_option"):
        found, scorer = loglik(model, processor, texts, arrays, replies, method)
        assert np.allclose(found, expected, atol=1e-5, rtol=0), (method, np.abs(np.subtract(found, expected)).max())
        assert scorer.shared_prefix_works, "the shared-prefix path fell back to per-option scoring"


@pytest.mark.parametrize("name", ALL)
def test_generation_runs_per_prompt_images(models, name):
    _, model, processor = models(name)
    with torch.no_grad():
        outputs = scoring.generate_texts(model, processor, prompt_texts(processor), images(), max_new_tokens=4)
    assert len(outputs) == len(QUESTIONS) and all(isinstance(text, str) for text in outputs)


def records(count: int = 6) -> list[dict]:
    rows = []
    for i in range(count):
        question, options = QUESTIONS[i % len(QUESTIONS)]
        rows.append({"sample_id": f"s{i}", "image": f"img{i % 3}",
                     "conversations": [{"role": "user", "content": mcq_prompt(question, options)},
                                       {"role": "assistant", "content": LETTERS[i % 4]},
                                       {"role": "user", "content": "Describe the image briefly."},
                                       {"role": "assistant", "content": "a large red circle"}]})
    return rows


def image_store() -> dict[str, np.ndarray]:
    return {f"img{i}": array for i, array in enumerate(images())}


def label_text(processor, batch, row: int) -> list[str]:
    """The labelled tokens of one row, decoded in runs of consecutive positions."""
    labels = batch["labels"][row].tolist()
    runs, current = [], []
    for token in labels + [training.IGNORE_INDEX]:
        if token == training.IGNORE_INDEX:
            if current:
                runs.append(processor.tokenizer.decode(current))
            current = []
        else:
            current.append(token)
    return runs


@pytest.mark.parametrize("name", ALL)
def test_the_training_mask_is_exactly_the_replies_and_their_end_tokens(models, name):
    _, model, processor = models(name)
    rows = records(2)
    batch = training.Collator(processor, image_store(),
                              reply_token_types=architectures.architecture(model).reply_token_types)(
        training.encode(processor, rows))
    end = [token for token in chat.end_tokens(processor.tokenizer)
           if label_text(processor, batch, 0)[0].endswith(token)]
    assert end, label_text(processor, batch, 0)
    for row, record in enumerate(rows):
        replies = [turn["content"] for turn in record["conversations"] if turn["role"] == "assistant"]
        # a space may ride on the reply's first token (" A"); nothing else may be labelled
        assert [text.lstrip(" ") for text in label_text(processor, batch, row)] == [reply + end[0] for reply in replies]
    # every processor output reaches the model, and the batch trains
    outputs = model(**{key: value for key, value in batch.items() if key != "sample_ids"})
    assert torch.isfinite(outputs.loss)


@pytest.mark.parametrize("name", ALL)
def test_a_later_epoch_batch_is_the_full_processor_batch(models, name):
    _, model, processor = models(name)
    examples = training.encode(processor, records(4))
    collate = training.Collator(processor, image_store(),
                                reply_token_types=architectures.architecture(model).reply_token_types)
    first = collate(examples[:2])
    collate(examples[2:])
    checked = collate(examples[:2])  # the first batch from kept rows, checked against the full call
    later = collate(examples[2:] + examples[:1])  # from kept rows and the image processor alone
    full = training.Collator(processor, image_store(),
                             reply_token_types=architectures.architecture(model).reply_token_types)(
        examples[2:] + examples[:1])
    assert collate.checked, f"{name}: the kept token sides did not reproduce the processor's batch"
    for batch, expected in ((checked, first), (later, full)):
        assert batch.keys() == expected.keys()
        for key, value in expected.items():
            assert (value == batch[key]) if key == "sample_ids" else torch.equal(value, batch[key]), key


@pytest.mark.parametrize("name", ALL)
def test_one_lora_round_changes_the_scores_and_reloads_through_the_auto_classes(models, name, tmp_path):
    folder, _, _ = models(name)
    model, processor = vlm.load(folder, trainable=True)
    texts, arrays = prompt_texts(processor), images()
    before, _ = loglik(model, processor, texts, arrays, LETTERS)
    settings = TrainConfig(epochs=4, batch_size=3, lr=5e-3, warmup_ratio=0.0)
    peft_model, stats = training.train_lora(model, processor, records(), settings, seed=0, images=image_store())
    assert stats["steps"] == 8 and np.isfinite(stats["final_loss"])
    training.save_lora(peft_model, processor, tmp_path / "round")
    merged = peft_model.merge_and_unload()
    after, _ = loglik(merged, processor, texts, arrays, LETTERS)
    assert np.abs(np.subtract(after, before)).max() > 1e-3
    reloaded, reprocessor = vlm.load(tmp_path / "round")
    again, _ = loglik(reloaded, reprocessor, texts, arrays, LETTERS)
    assert np.allclose(again, after, atol=1e-5)
