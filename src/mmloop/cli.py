"""The `mmloop` command line. Heavy libraries load only inside the subcommand that needs them."""

from __future__ import annotations

import argparse
import sys


def _lineage(args: argparse.Namespace) -> int:
    from mmloop import lineage

    try:
        chain = lineage.trace(args.sample_id, data_root=args.data_root)
    except (KeyError, FileNotFoundError) as err:
        print(f"mmloop lineage: {err.args[0]}", file=sys.stderr)
        return 1
    print(lineage.format_chain(chain))
    return 0


def _history(args: argparse.Namespace) -> int:
    from mmloop import report

    try:
        print(report.markdown(report.collect(args.eval_dir)))
    except (FileNotFoundError, ValueError) as err:
        print(f"mmloop history: {err}", file=sys.stderr)
        return 1
    return 0


def _graph(args: argparse.Namespace) -> int:
    from mmloop import graph

    try:
        if args.write:
            print("dvc.yaml: deps and params rewritten" if graph.write() else "dvc.yaml: already true")
            return 0
        difference = graph.check()
    except (FileNotFoundError, ValueError) as err:  # params.yaml or dvc.yaml unreadable or invalid
        print(f"mmloop graph: {err}", file=sys.stderr)
        return 1
    print("\n".join(difference) if difference else "dvc.yaml: every stage declares what it reads")
    return 1 if difference else 0


def _eval(args: argparse.Namespace) -> int:
    """Evaluate a model on a benchmark file: the DVC evaluate stage's run, on its own."""
    from pathlib import Path

    from mmloop import config
    from mmloop.eval import benchmarks, evaluation
    from mmloop.eval.prompts import HARNESS_ANSWER_FORMAT
    from mmloop.models import vlm

    overrides = {"mode": args.mode, "rounds": args.rounds, "round_source": args.round_source,
                 "circular": args.circular, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                 "judge": args.judge, "threads": args.threads}
    try:
        # Defaults come from the repository's params.yaml when there is one, so this reproduces the stage.
        has_params = Path(args.params).is_file()
        params = config.read(args.params) if has_params else config.Params()
        settings = config.EvaluateConfig(**{**params.evaluate.model_dump(),
                                            **{key: value for key, value in overrides.items() if value is not None}})
        answer_format = args.answer_format or (params.answer_format if has_params else HARNESS_ANSWER_FORMAT)
        kind = args.format or benchmarks.guess_format(args.bench)
        items = benchmarks.load_benchmark(args.bench, kind, image_dir=args.image_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"mmloop eval: {err}", file=sys.stderr)
        return 1
    vlm.set_threads(settings.threads)
    compute = config.ComputeConfig(**{**params.compute.model_dump(),
                                      **{key: value for key, value in (("device", args.device), ("dtype", args.dtype))
                                         if value is not None}})
    device, dtype = vlm.placement(compute)
    try:
        model, processor = vlm.load(args.model, dtype=dtype, device=device)
    except vlm.ModelNotFoundError as err:
        print(f"mmloop eval: --model {err}", file=sys.stderr)
        return 1
    items, predictions, metrics = evaluation.run_benchmark(
        model, processor, items, settings, answer_format, kind=kind, benchmark=args.name or Path(args.bench).stem,
        model_name=vlm.model_name(args.model), iteration=args.iteration)
    print(evaluation.format_table(metrics))
    if args.out:
        try:
            evaluation.publish(args.out, items, predictions, metrics, iteration=args.iteration,
                               answer_format=answer_format, source=Path(args.bench).name, data_root=args.data_root)
        except ValueError as err:  # a failing validation suite: nothing was written
            print(f"mmloop eval: not written to {args.out}: {err}", file=sys.stderr)
            return 1
        print(f"wrote {args.out}/{evaluation.PREDICTIONS_FILE}, {evaluation.BADCASES_FILE}, {evaluation.METRICS_FILE}")
    return 0


def _prompts_review(args: argparse.Namespace) -> int:
    from mmloop.teachers import ipo

    out = args.out or f"metrics/prompts/review-iter={args.iteration}.html"
    try:
        versions = ipo.review(args.iteration, out, data_root=args.data_root)
    except (FileNotFoundError, ValueError) as err:
        print(f"mmloop prompts review: {err}", file=sys.stderr)
        return 1
    for version, entry in versions.items():
        rates = ", ".join(f"{key} {value:.2f}" for key, value in entry.items() if key.endswith("_rate"))
        print(f"{version}: {rates}")
    print(f"wrote {out}")
    return 0


def _prompts_propose(args: argparse.Namespace) -> int:
    from mmloop import config
    from mmloop.teachers import ipo

    try:
        teacher = config.read(args.params).generate.openai
        if teacher is None:
            raise ValueError(f"{args.params}: generate.openai is not set; it configures the teacher that proposes "
                             "the revision")
        out = ipo.propose(args.iteration, args.template or teacher.prompt, teacher, data_root=args.data_root)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        print(f"mmloop prompts propose: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} (status: proposed); review it, set 'status: approved', then point "
          f"generate.openai.prompt at it")
    return 0


def _evolution(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mmloop.loop.evolution import round_table

    path = Path(args.metrics_dir) / f"iter={args.iteration}.json"
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        print(f"mmloop evolution: {path}: {err}", file=sys.stderr)
        return 1
    if not stats.get("rounds"):
        print(f"mmloop evolution: {path}: no evolution rounds ran (evolve.rounds is 0)", file=sys.stderr)
        return 1
    print(round_table(stats))
    return 0


def _compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mmloop import experiments

    try:
        shown = (json.loads(Path(args.json).read_text(encoding="utf-8")) if args.json
                 else experiments.show_experiments())
        found = experiments.runs(shown, by=args.by, seed=args.seed, iteration=args.iteration)
        print(experiments.table(found, by=args.by, seed=args.seed, baseline=args.baseline))
    except (OSError, ValueError, RuntimeError) as err:
        print(f"mmloop compare: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mmloop.config import ANSWER_FORMATS, DEVICES, DTYPES, EVAL_MODES, ROUND_SOURCES  # light: no torch until a command runs
    from mmloop.eval.benchmarks import FORMATS

    parser = argparse.ArgumentParser(prog="mmloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    lineage = commands.add_parser("lineage", help="print the chain of a sample back to its bad cases and images")
    lineage.add_argument("sample_id")
    lineage.add_argument("--data-root", default="data", help="where the pipeline's parquet files live (default: data)")
    lineage.set_defaults(run=_lineage)

    history = commands.add_parser("history", help="the loop's accuracy per iteration and category as a Markdown "
                                                  "table, with the gain in points")
    history.add_argument("--eval-dir", default="metrics/eval", help="where the iter=N.json metrics are")
    history.set_defaults(run=_history)
    evolution = commands.add_parser("evolution", help="an iteration's evolution rounds as a Markdown table: evolved, "
                                                      "kept, dropped by reason and difficulty, per operator")
    evolution.add_argument("iteration")
    evolution.add_argument("--metrics-dir", default="metrics/evolve", help="where the iter=N.json metrics are")
    evolution.set_defaults(run=_evolution)
    compare = commands.add_parser("compare", help="DVC experiments' gains per category by arm and seed, as a Markdown "
                                                  "table with each arm's paired difference from the baseline arm")
    compare.add_argument("--by", required=True, help="the params key whose value is the arm (e.g. evolve.rounds)")
    compare.add_argument("--seed", default="loop.seed", help="the params key whose value is the seed (default: "
                                                            "loop.seed)")
    compare.add_argument("--baseline", help="the arm the others are compared with (default: the lowest value)")
    compare.add_argument("--iteration", help="the iteration whose gain over 0 is compared (default: each run's last)")
    compare.add_argument("--json", help="a saved `dvc exp show --json` (default: run it here)")
    compare.set_defaults(run=_compare)
    graph = commands.add_parser("graph", help="check (or --write) dvc.yaml's deps and params against what the "
                                              "stages read")
    graph.add_argument("--write", action="store_true", help="rewrite dvc.yaml's deps and params")
    graph.set_defaults(run=_graph)

    evaluate = commands.add_parser("eval", help="evaluate a model on a benchmark file and print a per-category table")
    evaluate.add_argument("--model", required=True, help="a local model folder or a hub id")
    evaluate.add_argument("--bench", required=True, help="a benchmark file or folder (MMBench TSV, A-OKVQA, POPE, "
                          "MME, SEED-Bench, JSONL)")
    evaluate.add_argument("--format", choices=FORMATS,
                          help="the benchmark format (default: guessed from the file)")
    evaluate.add_argument("--image-dir", help="where the benchmark's image files are (default: beside the file)")
    evaluate.add_argument("--mode", choices=EVAL_MODES, help="option log-likelihood or generation "
                          "plus answer extraction (default: params evaluate.mode, else loglik)")
    evaluate.add_argument("--rounds", type=int, help="also score each question after this many earlier turns")
    evaluate.add_argument("--round-source", choices=ROUND_SOURCES,
                          help="earlier turns: other questions on the same image, or generic instructions")
    evaluate.add_argument("--circular", action=argparse.BooleanOptionalAction, default=None,
                          help="CircularEval: also score every rotation of each item's options")
    evaluate.add_argument("--answer-format", choices=ANSWER_FORMATS,
                          help="replies name the option by letter or by text (default: params answer_format, "
                          "else letter)")
    evaluate.add_argument("--judge", help="'package.module:function' that picks an answer when extraction fails")
    evaluate.add_argument("--batch-size", type=int)
    evaluate.add_argument("--max-new-tokens", type=int)
    evaluate.add_argument("--threads", type=int, help="CPU threads (default: params evaluate.threads)")
    evaluate.add_argument("--device", choices=DEVICES,
                          help="default: params compute.device")
    evaluate.add_argument("--dtype", choices=DTYPES,
                          help="default: params compute.dtype")
    evaluate.add_argument("--iteration", type=int, default=0, help="the iteration recorded in the outputs")
    evaluate.add_argument("--name", help="the benchmark's name in item ids (default: the file's stem)")
    evaluate.add_argument("--out", help="a folder for predictions.parquet, badcases.parquet and metrics.json")
    evaluate.add_argument("--params", default="params.yaml", help="defaults from this params file when it exists")
    evaluate.add_argument("--data-root", default="data", help="where content-addressed images live (bad cases)")
    evaluate.set_defaults(run=_eval)

    prompts = commands.add_parser("prompts", help="Interactive Prompt Optimization of the LLM teacher's prompt")
    prompt_commands = prompts.add_subparsers(dest="prompts_command", required=True)
    review = prompt_commands.add_parser("review", help="an HTML page of an iteration's generated items by outcome")
    review.add_argument("iteration")
    review.add_argument("--out", help="where to write the page (default: metrics/prompts/review-iter=N.html)")
    review.add_argument("--data-root", default="data")
    review.set_defaults(run=_prompts_review)
    propose = prompt_commands.add_parser("propose", help="ask the teacher for a revised template from the failures")
    propose.add_argument("iteration")
    propose.add_argument("--template", help="the template to revise (default: generate.openai.prompt)")
    propose.add_argument("--params", default="params.yaml")
    propose.add_argument("--data-root", default="data")
    propose.set_defaults(run=_prompts_propose)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
