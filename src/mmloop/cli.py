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


def _prompts_review(args: argparse.Namespace) -> int:
    from mmloop import ipo

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
    from mmloop import ipo
    from mmloop.params import load_params

    params = load_params(args.params)
    template = args.template or (params.get("generate") or {}).get("openai", {}).get("prompt", "prompts/generate.j2")
    try:
        out = ipo.propose(args.iteration, template, params.get("generate") or {}, data_root=args.data_root)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        print(f"mmloop prompts propose: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} (status: proposed); review it, set 'status: approved', then point "
          f"generate.openai.prompt at it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    lineage = commands.add_parser("lineage", help="print the chain of a sample back to its bad cases and images")
    lineage.add_argument("sample_id")
    lineage.add_argument("--data-root", default="data", help="where the pipeline's parquet files live (default: data)")
    lineage.set_defaults(run=_lineage)

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
