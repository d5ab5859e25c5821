"""evaluate ITER: models/iter=ITER on the loop's benchmark (named by data/bench/bench.json) ->
data/iter=ITER/eval/{predictions,badcases}.parquet, metrics/eval/iter=ITER.json.

The same run as `mmloop eval` (`evaluation.run_benchmark` with params `evaluate`): option
log-likelihood by default, plus CircularEval and multi-round scoring when configured. The
wrong single-round answers become the bad cases that the next iteration's sampling starts from.
The benchmark is whatever the bench stage's manifest names (the embedded world's MMBench TSV,
or params `bench.source` in any format), scored with its format's prompt convention and metrics.
"""

import sys
import time
from pathlib import Path

from mmloop import config, stage
from mmloop.eval import evaluation
from mmloop.eval.manifest import MANIFEST, loop_benchmark, read_manifest
from mmloop.models import vlm

PARAMS = ("answer_format", "evaluate", "bench.name", "compute")
DATA_ROOT = Path("data")
BENCH_DIR = Path(MANIFEST).parent  # the manifest, and the world's TSV when it names that


def inputs(iteration: str) -> list[str]:
    return [f"models/iter={iteration}", str(BENCH_DIR)]


def param_deps(params: config.Params) -> list[str]:
    """The user's benchmark file and image folder (params bench.source, bench.image_dir), which
    the manifest names and this stage reads."""
    return params.bench.files


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python stages/evaluate.py ITERATION")
    iteration = int(argv[0])
    params = stage.begin(f"evaluate@{iteration}", PARAMS, preload=["torch", "transformers", "great_expectations"],
                         param_deps=param_deps)
    settings = params.evaluate
    model_path = Path("models") / f"iter={iteration}"

    vlm.set_threads(settings.threads)
    bench_file = read_manifest(MANIFEST)["file"]
    items, kind = loop_benchmark(MANIFEST)
    device, dtype = vlm.placement(params.compute)
    model, processor = vlm.load(model_path, dtype=dtype, device=device)
    started = time.perf_counter()
    items, predictions, metrics = evaluation.run_benchmark(
        model, processor, items, settings, params.answer_format, kind=kind, benchmark=params.bench.name,
        model_name=vlm.model_name(model_path), iteration=iteration)
    seconds = time.perf_counter() - started

    # Timing stays out of the metrics file, so the same model and benchmark give the same file.
    bad = evaluation.publish(DATA_ROOT / f"iter={iteration}" / "eval", items, predictions, metrics,
                             iteration=iteration, answer_format=params.answer_format, source=Path(bench_file).name,
                             data_root=DATA_ROOT, metrics_path=Path("metrics") / "eval" / f"iter={iteration}.json")
    print(evaluation.format_table(metrics))
    print(f"evaluate iter={iteration}: {len(bad)} bad cases; {len(predictions) / seconds:.0f} items/s")


if __name__ == "__main__":
    main(sys.argv[1:])
