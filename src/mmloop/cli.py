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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    lineage = commands.add_parser("lineage", help="print the chain of a sample back to its bad cases and images")
    lineage.add_argument("sample_id")
    lineage.add_argument("--data-root", default="data", help="where the pipeline's parquet files live (default: data)")
    lineage.set_defaults(run=_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
