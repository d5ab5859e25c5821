"""Training throughput of the transformers-Trainer path against the hand-written loop it replaced.

Baseline ("old"): the hand-written PyTorch loop of `src/mmloop/loop/training.py` as of commit
fa917b2 (its `fit`: one batched `apply_chat_template` pass over all records up front, then a
tensor-only collate per step), loaded from git and exec'd as a module. Candidate ("new"): the
current `training.train_base` on the transformers Trainer (its `Collator` runs the full
processor on an example's first batch, then keeps its token side and runs only the image
processor). Both train the default embedded tiny LLaVA (`vlm.build(texts, seed=0)`,
vision tower frozen) on the same records with the same decoded images, batch size, learning
rate and number of optimizer steps, float32 on the CPU with `--threads` torch threads.

Records: the first `--records` of data/seed/samples.parquet (images under data/) when the
pipeline has produced them, else a small world built in a temporary folder as the tests do.

Interleaved, step by step: each arm trains in its own process, and the two take turns at every
forward call (one per training step in both arms), so only one of them runs at any moment and
a change in the machine's load (another job's stage starting or ending) hits both alike. Two
runs one after the other do not share the load like this: on two busy cores a 16-step run
took 12 s or 55 s depending on what the pipeline beside it was doing. Each arm's time is the
sum of its own turns. (Threads instead of processes would not do: torch's matrix products in a
second Python thread behaved unlike those of a main thread here, using at most one core
whatever `--threads` says.)

Cross-check, measured one after the other on a quiet machine (1,200 seed records, 150 steps,
2 threads): the hand-written loop took 22.6 s for the whole call, the Trainer path 25.9 s
(0.87); by each path's own tokens/s, 11,563 against 10,872 (0.94). This bench printed 0.90 on
the same machine. Compare against metrics/train/iter=N.json of an earlier run only on the same
machine: the hand-written loop's recorded 17,135 tokens/s came from a faster machine state.

Since the collator keeps each example's token side, the ratio grows with the epochs (quiet
machine, 128 records): 0.90 to 0.91 at `--epochs 1` (every example is collated once, through the
full processor), 0.93 at `--epochs 3`, 0.95 at `--epochs 5` (the train stage's setting).

Tokens are counted the same way for both arms: the non-padding tokens (attention-mask sum,
image tokens expanded) of the batches the model is called on, seen by a wrapper around
`model.forward`; their total, and each arm's own count, are checked against the records'
tokens (records are a multiple of the batch size and epochs an integer, so both arms see every
record exactly `epochs` times). Rates:

- steady (the goal): the tokens of steps 1..N-1 over the arm's time from its first forward call
  to its last: each step's collation, forward, backward, optimizer step and bookkeeping are in
  it, the one-off costs (encoding, optimizer / Trainer set-up, tear-down) are not. The base
  stage runs ~1,200 steps, where those are noise, while a short bench run would mostly measure
  them on an idle machine;
- end-to-end (printed): all the tokens over the arm's time for the whole training call
  (encoding and set-up included: what a short run pays).

The padding share of each arm's batches is printed too: both sort rows by length within
windows, the baseline within 256 rows, the Trainer's sampler within a quarter of the records
up to 400, so on the default 128 records the new path pads ~4% more tokens (on 800 records,
or the 6,400 of the seed, both pad alike); that costs it a few percent here and not in the stage.

`--repeats` interleaved runs (who goes first alternates), the best of each arm kept. Prints
new/old tokens per second (goal: steady >= 0.9) and exits non-zero below it. The default,
16 steps a run, takes ~35 s on two idle cores and ~3.5 min beside another 2-thread training
(a step takes ~0.15 s alone, 2-3 s beside it); `--records 800` gives 100 steps.

    python bench/bench_train.py [--records 128] [--epochs 1] [--batch-size 8] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import random
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

GOAL = 0.9
BASELINE_COMMIT = "fa917b2"
BASELINE_PATH = "src/mmloop/loop/training.py"
ARMS = ("old", "new")


def load_baseline() -> types.ModuleType:
    """The hand-written loop's training module as of BASELINE_COMMIT, run against today's library."""
    from mmloop.models import chat, vlm

    source = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:{BASELINE_PATH}"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    # `encode_records` imports `messages` from models.vlm; it has moved to models.chat since.
    if not hasattr(vlm, "messages"):
        vlm.messages = chat.messages
    module = types.ModuleType("mmloop_training_" + BASELINE_COMMIT)
    module.__file__ = f"{BASELINE_COMMIT}:{BASELINE_PATH}"
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def seed_records(count: int) -> tuple[list[dict], Path] | None:
    """The pipeline's seed samples, when `dvc repro` has made them."""
    from mmloop.schema import read_samples

    samples, images = REPO / "data" / "seed" / "samples.parquet", REPO / "data" / "images"
    if not (samples.is_file() and images.is_dir()):
        return None
    return read_samples(samples)[:count], REPO / "data"


def world_records(count: int, root: Path) -> tuple[list[dict], Path]:
    """A small world in `root`, each image's questions of every family as one conversation."""
    from mmloop import questions, sources
    from mmloop.io import read_json
    from mmloop.world import scenes as world

    world.build(world.WorldConfig(splits={"seed": count}), 0, root / "images", root / "world")
    coco = read_json(root / "world" / "instances_seed.json")
    objects = sources.coco_objects(coco)
    rng = random.Random(0)
    records = []
    for image in coco["images"]:
        turns = []
        for family in questions.FAMILIES:
            made = questions.make_question(family, objects[image["sha256"]], rng)
            if made is not None:
                turns += questions.turns(made, "mcq", "option")
        if turns:
            records.append({"sample_id": f"s{len(records)}", "image": image["file_name"], "conversations": turns})
    return records, root


def model_texts(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the tiny model's tokenizer is trained on, as the base stage does."""
    from mmloop import questions

    return [turn["content"] for record in records for turn in record["conversations"]] + questions.vocabulary_texts()


class Turnstile:
    """Lets one of the two arm processes run at a time, handing over at every forward call, and
    keeps how long this one ran in each of its turns."""

    def __init__(self, index: int, condition, holder, done):
        self.index, self.other = index, 1 - index
        self.condition, self.holder, self.done = condition, holder, done
        self.turns: list[float] = []
        self.started: float | None = None

    def begin(self) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.holder.value == self.index)
        self.started = time.perf_counter()

    def _hand_over(self) -> None:
        self.turns.append(time.perf_counter() - self.started)
        with self.condition:
            if not self.done[self.other]:
                self.holder.value = self.other
            self.condition.notify_all()

    def switch(self) -> None:
        self._hand_over()
        self.begin()

    def finish(self) -> None:
        if self.started is not None:
            self._hand_over()
        with self.condition:
            self.done[self.index] = 1
            self.holder.value = self.other
            self.condition.notify_all()


def arm_process(index: int, settings: dict, records: list[dict], data_root: str, sync: tuple, conn) -> None:
    """One arm in its own process: set up, wait for the other, then train taking turns with it;
    sends back {stats, calls ((tokens, padded tokens) per forward call), turns (seconds per turn)}
    or {error}."""
    condition, holder, done, ready = sync
    turnstile = Turnstile(index, condition, holder, done)
    try:
        import torch  # noqa: F401 - imported before the clock runs, like everything else here
        import transformers.trainer  # noqa: F401

        from mmloop.config import BaseConfig
        from mmloop.loop import training
        from mmloop.models import vlm

        name = ARMS[index]
        old = load_baseline() if name == "old" else None
        images = training.ImageFiles(records, data_root)  # decoded from the same files in both arms
        config = BaseConfig(epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"],
                            threads=settings["threads"])
        vlm.set_threads(settings["threads"])
        model, processor = vlm.build(model_texts(records), seed=0)
        calls: list[tuple[int, int]] = []
        forward = model.forward

        @functools.wraps(forward)  # keeps the signature the Trainer inspects for loss kwargs
        def counted(*a, **kw):
            mask = kw["attention_mask"]
            calls.append((int(mask.sum()), mask.numel()))
            turnstile.switch()
            return forward(*a, **kw)

        model.forward = counted
        ready.wait()
        turnstile.begin()
        if old is not None:
            # old.train_base has no `images` argument; it is freeze_vision_tower + fit, called
            # here so the baseline gets the decoded images as the Trainer path does.
            old.freeze_vision_tower(model)
            stats = old.fit(model, processor, records, config, seed=0, data_root=data_root, source="bench",
                            desc="old", images=images, checkpoint=None)
            own_tokens = stats["tokens_per_s"] * stats["wall_s"]
        else:
            stats = training.train_base(model, processor, records, config, seed=0, data_root=data_root,
                                        source="bench", images=images, precision="float32", device="cpu")
            own_tokens = stats["tokens_per_s"] * stats["samples"] / stats["samples_per_s"]  # x train_runtime
        turnstile.finish()
        conn.send({"stats": {**stats, "own_tokens": own_tokens}, "calls": calls, "turns": turnstile.turns})
    except BaseException:  # noqa: BLE001 - reported by the parent
        ready.abort()  # the other arm stops waiting for this one
        turnstile.finish()
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


def interleaved(first: int, settings: dict, records: list[dict], data_root: Path) -> dict[str, dict]:
    """Both arms trained once, in two processes taking turns step by step, arm `first` first."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked OpenMP state
    condition, holder, done = context.Condition(), context.Value("i", first), context.Array("b", 2)
    sync = (condition, holder, done, context.Barrier(2))
    pipes = [context.Pipe(duplex=False) for _ in ARMS]
    processes = [context.Process(target=arm_process, args=(index, settings, records, str(data_root), sync, send),
                                 name=f"bench-{name}") for index, ((_, send), name) in enumerate(zip(pipes, ARMS))]
    for process in processes:
        process.start()
    results: dict[str, dict] = {}
    while len(results) < len(ARMS):
        for index, (process, (receive, _)) in enumerate(zip(processes, pipes)):
            name = ARMS[index]
            if name in results:
                continue
            if receive.poll(0.5):
                results[name] = receive.recv()
            elif not process.is_alive():  # died without a word: free the other arm
                results[name] = {"error": f"the process exited with code {process.exitcode}"}
                sync[3].abort()
                with condition:
                    done[index], holder.value = 1, 1 - index
                    condition.notify_all()
    for process in processes:
        process.join()
    errors = {name: result["error"] for name, result in results.items() if "error" in result}
    if errors:
        raise RuntimeError("\n".join(f"{name}: {error}" for name, error in errors.items()))
    return {name: {**results[name]["stats"], "calls": results[name]["calls"], "turns": results[name]["turns"]}
            for name in ARMS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from mmloop.loop import training
    from mmloop.models import vlm

    with tempfile.TemporaryDirectory() as tmp:
        found = seed_records(args.records)
        origin = "data/seed/samples.parquet"
        if found is None:
            found, origin = world_records(args.records, Path(tmp)), "a temporary world"
        records, data_root = found
        records = records[:len(records) // args.batch_size * args.batch_size]  # whole batches only
        if len(records) < 2 * args.batch_size:  # the steady rate spans step 1 to step N
            print(f"{len(records)} records from {origin}: need at least two batches of --batch-size")
            return 1
        steps = len(records) // args.batch_size * args.epochs

        # Non-padding tokens of each record as the model sees them (image tokens expanded), through
        # the baseline's unpadded encoding: what every arm must count in total.
        _, processor = vlm.build(model_texts(records), seed=0)
        images = training.ImageFiles(records, data_root)
        lengths = [len(ids) for ids, _ in load_baseline().encode_records(processor, records, images)]
        tokens = sum(lengths) * args.epochs
        print(f"records={len(records)} from {origin}  images={len(images)}  steps={steps}  "
              f"batch_size={args.batch_size}  threads={args.threads}  tokens/record={sum(lengths) / len(lengths):.0f}  "
              f"tokens={tokens}")
        del images

        settings = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads}
        runs: dict[str, list[dict]] = {name: [] for name in ARMS}
        for repeat in range(args.repeats):
            first = repeat % 2
            results = interleaved(first, settings, records, data_root)
            for name in (ARMS[first], ARMS[1 - first]):
                stats = results[name]
                turns = stats["turns"]
                calls, padded = [real for real, _ in stats["calls"]], sum(total for _, total in stats["calls"])
                if stats["steps"] != steps or len(calls) != steps:
                    print(f"{name}: {stats['steps']} steps, {len(calls)} forward calls; expected {steps} of each")
                    return 1
                # both arms must see exactly the records' tokens (the arm's own count: within rounding)
                if sum(calls) != tokens or abs(stats["own_tokens"] - tokens) > 0.01 * tokens:
                    print(f"{name}: forward calls saw {sum(calls)} tokens, its stats {stats['own_tokens']:.0f}; "
                          f"expected {tokens}")
                    return 1
                # turns[0]: the call's set-up up to the first forward; turns[k]: step k's forward,
                # backward, optimizer step and the next batch's collation; turns[-1]: the last
                # step and the tear-down
                stats["steady_rate"] = sum(calls[:-1]) / sum(turns[1:-1])
                stats["rate"] = tokens / sum(turns)
                stats["padding"] = 1 - tokens / padded
                runs[name].append(stats)
                print(f"  {name} #{repeat + 1}: {steps} steps in {sum(turns):5.1f} s (before step 1 {turns[0]:.1f} s, "
                      f"encode {stats['encode_s']:.1f} s)  steady {stats['steady_rate']:5.0f} tok/s  "
                      f"end-to-end {stats['rate']:5.0f} tok/s  padding {stats['padding']:.1%}  "
                      f"loss {stats['first_loss']:.3f} -> {stats['final_loss']:.3f}")

    best = {name: max(stats["steady_rate"] for stats in arm_runs) for name, arm_runs in runs.items()}
    best_call = {name: max(stats["rate"] for stats in arm_runs) for name, arm_runs in runs.items()}
    ratio = best["new"] / best["old"]
    print(f"baseline: the hand-written loop at {BASELINE_COMMIT}; best of {args.repeats} interleaved runs each")
    print(f"end-to-end: new {best_call['new']:.0f} tok/s  old {best_call['old']:.0f} tok/s  "
          f"ratio={best_call['new'] / best_call['old']:.2f} (one-off costs included; not the goal)")
    print(f"steady:     new {best['new']:.0f} tok/s  old {best['old']:.0f} tok/s")
    verdict = "PASS" if ratio >= GOAL else "FAIL"
    print(f"ratio={ratio:.2f} new/old tokens per second (goal >= {GOAL:g}): {verdict}")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
