"""evaluate ITER: models/iter=ITER on data/bench/bench.tsv -> data/iter=ITER/eval/{predictions,badcases}.parquet,
metrics/eval/iter=ITER.json.

The same run as `mmloop eval` (`evaluation.run_benchmark` with params `evaluate`): option
log-likelihood by default, plus CircularEval and multi-round scoring when configured. The
wrong single-round answers become the bad cases that the next iteration's sampling starts from.
"""

import sys
import time
from pathlib import Path

from mmloop import evaluation, vlm
from mmloop.io import atomic_path, write_json
from mmloop.loaders import read_mmbench
from mmloop.params import load_params
from mmloop.schema import prediction_schema, write_samples
from mmloop.validation import validate

DATA_ROOT = Path("data")
BENCH_TSV = DATA_ROOT / "bench" / "bench.tsv"


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python stages/evaluate.py ITERATION")
    iteration = int(argv[0])
    params = load_params()
    section = params.get("evaluate") or {}
    settings = evaluation.EvalSettings.from_params(section, str(params.get("answer_format", "letter")))
    benchmark = str((params.get("bench") or {}).get("name", "bench"))
    model_path = Path("models") / f"iter={iteration}"
    eval_dir = DATA_ROOT / f"iter={iteration}" / "eval"
    metrics_path = Path("metrics") / "eval" / f"iter={iteration}.json"

    vlm.set_threads(int(section.get("threads", vlm.MAX_THREADS)))
    items = read_mmbench(BENCH_TSV)
    model, processor = vlm.load(model_path)
    started = time.perf_counter()
    items, predictions, metrics = evaluation.run_benchmark(model, processor, items, settings, kind="mmbench",
                                                           benchmark=benchmark,
                                                           model_name=vlm.model_name(model_path), iteration=iteration)
    seconds = time.perf_counter() - started
    single_round = [row for row in predictions if not row["rounds"]]
    bad = evaluation.badcases(single_round, items, iteration, DATA_ROOT, source=BENCH_TSV.name,
                              answer_format=settings.answer_format)

    # Timing stays out of the metrics file, so the same model and benchmark give the same file.
    # Both suites pass before anything is written; the eval folder is published whole or not at all.
    validate(predictions, "predictions", source=eval_dir / "predictions.parquet", iteration=iteration)
    validate(bad, "badcases", source=eval_dir / "badcases.parquet", iteration=iteration, data_root=DATA_ROOT)
    metrics["badcases"] = len(bad)
    with atomic_path(eval_dir, directory=True) as tmp:
        write_samples(predictions, tmp / "predictions.parquet", schema=prediction_schema())
        write_samples(bad, tmp / "badcases.parquet")
        write_json(metrics_path, metrics)
    print(evaluation.format_table(metrics))
    print(f"evaluate iter={iteration}: {len(bad)} bad cases; {len(predictions) / seconds:.0f} items/s")


if __name__ == "__main__":
    main(sys.argv[1:])
