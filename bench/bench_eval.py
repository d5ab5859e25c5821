"""Throughput of batched log-likelihood evaluation (mmloop.eval.scoring) against a naive loop.

The embedded tiny LLaVA (`vlm.build`) scores a small world's MMBench-format benchmark
(about 200 items) twice per answer format:

- batched: `evaluation.evaluate`, as the evaluate stage runs it;
- naive: one item at a time, one forward pass per option over the full conversation
  (prompt, image and reply), no batching, no KV cache.

answer_format "letter" takes the single-token path (one forward pass per batch); "option"
replies with the option text, so the multi-token options (spatial relations: "left of")
take the shared-prefix path. Both give the same scores (checked, max |difference| printed).
This prints samples/s (items scored per second) for each and their ratio (goal: batched at
least 5x the naive loop in both formats) and exits non-zero below the goal or when the
scores disagree.

    python bench/bench_eval.py [--items-per-family 34] [--images 60] [--batch-size 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

GOAL = 5.0
# Scores of the two paths may differ by float rounding only.
SCORE_TOLERANCE = 1e-3
FORMATS = ("letter", "option")


def make_bench(root: Path, images: int, items_per_family: int) -> list[dict]:
    from mmloop.eval.benchmarks.mmbench import read_mmbench, write_mmbench
    from mmloop.io import read_json
    from mmloop.world import benchmark
    from mmloop.world import scenes as world

    world.build(world.WorldConfig(splits={"bench": images}), 0, root / "data" / "images", root / "data" / "world")
    made = benchmark.make_items(read_json(root / "data" / "world" / "instances_bench.json"), items_per_family,
                                seed=0, data_root=root / "data")
    write_mmbench(made, root / "bench.tsv")
    return read_mmbench(root / "bench.tsv")


def naive_scores(model, processor, items, answer_format: str) -> list[list[float]]:
    """The plain way: per item and option, the whole conversation in its own forward pass."""
    import torch
    from PIL import Image

    from mmloop.eval import prompts
    from mmloop.models import chat

    tokenizer = processor.tokenizer
    result = []
    with torch.inference_mode():
        for item in items:
            image = Image.open(io.BytesIO(item["image"])).convert("RGB")
            conversation = chat.messages([{"role": "user", "content": prompts.user_prompt(item, answer_format)}])
            prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            prompt_length = processor(text=[prompt], images=[image], return_tensors="pt",
                                      add_special_tokens=False)["input_ids"].shape[1]
            scores = []
            for reply in prompts.option_replies(item, answer_format):
                full = processor.apply_chat_template(conversation + [{"role": "assistant", "content": reply}],
                                                     tokenize=False)
                encoded = processor(text=[full], images=[image], return_tensors="pt", add_special_tokens=False)
                ids = encoded["input_ids"][0]
                end = len(ids) - 1 if int(ids[-1]) == tokenizer.eos_token_id else len(ids)
                logprobs = torch.log_softmax(model(**encoded, use_cache=False).logits[0].float(), dim=-1)
                scores.append(sum(float(logprobs[p - 1, ids[p]]) for p in range(prompt_length, end)))
            result.append(scores)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items-per-family", type=int, default=34)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from mmloop.config import EvaluateConfig
    from mmloop.eval import evaluation
    from mmloop.models import vlm

    with tempfile.TemporaryDirectory() as tmp:
        items = make_bench(Path(tmp), args.images, args.items_per_family)
    texts = [f"{item['question']} {' '.join(item['options'])}" for item in items]
    model, processor = vlm.build(texts, seed=0)
    model.eval()
    vlm.set_threads(args.threads)
    multi = sum(any(len(processor.tokenizer.tokenize(" " + option)) > 1 for option in item["options"])
                for item in items)
    print(f"items={len(items)} with multi-token options={multi} threads={args.threads} "
          f"batch_size={args.batch_size}")

    settings = EvaluateConfig(batch_size=args.batch_size)

    def batched(answer_format: str, subset=items):
        return evaluation.evaluate(model, processor, subset, settings, answer_format, benchmark="bench",
                                   model_name="bench", iteration=0)

    ratios, worst = [], 0.0
    for answer_format in FORMATS:
        # Warm-up outside the timed region (allocator, first-call overheads).
        batched(answer_format, items[:8])
        naive_scores(model, processor, items[:2], answer_format)

        start = time.perf_counter()
        rows = batched(answer_format)
        fast = len(items) / (time.perf_counter() - start)
        start = time.perf_counter()
        reference = naive_scores(model, processor, items, answer_format)
        slow = len(items) / (time.perf_counter() - start)

        diff = max(abs(a - b) for row, scores in zip(rows, reference) for a, b in zip(row["option_scores"], scores))
        worst = max(worst, diff)
        ratios.append(fast / slow)
        print(f"{answer_format:>6}: batched={fast:.1f} samples/s  naive={slow:.1f} samples/s  "
              f"ratio={fast / slow:.1f}x  max|score diff|={diff:.2g}")
    ratio = min(ratios)
    print(f"ratio={ratio:.1f}x (goal >= {GOAL:g}x in every format; scores within {SCORE_TOLERANCE:g})")
    return 0 if ratio >= GOAL and worst <= SCORE_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
