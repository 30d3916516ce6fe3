"""The ``fusegraph`` console script: ``report``, ``compare`` and ``demo``.

Exit codes: 0 fine; 1 the command ran and found a problem (``--strict`` shortfall, an output out of
tolerance); 2 bad input (unknown preset, broken factory, bad option, unwritable output), reported
as one line on stderr without a traceback. Progress goes to stderr, results to stdout (or ``-o``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fusegraph.cli.errors import EXIT_USAGE, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (its default prints the whole usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from fusegraph import __version__
    from fusegraph.cli import compare, demo, report

    parser = _Parser(prog="fusegraph", description="Fuse the DeepSeek-V4 decoder-layer subgraphs of a "
                     "torch model and show what was fused, where, and whether it is still correct.")
    parser.add_argument("--version", action="version", version=f"fusegraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    report.add_arguments(sub.add_parser(
        "report", help="what matched, where, which kernel, coverage, near misses",
        description="Compile MODEL for a target (no GPU needed) and report the fused sites, the kernel "
                    "provider chosen for each, coverage weighted by bytes and launches, the expected "
                    "DSV4 match set and the near misses."))
    compare.add_arguments(sub.add_parser(
        "compare", help="run fused vs unfused: errors per output and per site, timings, graph diff",
        description="Run MODEL unfused and fused on the same seeded inputs and compare every model "
                    "output and every match site against an fp64 reference."))
    demo.add_arguments(sub.add_parser(
        "demo", help="the main job on the built-in presets (tiny on CPU; flash and pro planned for sm90)",
        description="Compile the tiny preset on the CPU, run it and compare with the unfused model, "
                    "then plan flash and pro for sm90 and summarize what matched."))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            from fusegraph.cli import report

            return report.run(args)
        if args.command == "compare":
            from fusegraph.cli import compare

            return compare.run(args)
        from fusegraph.cli import demo

        return demo.run(args)
    except UsageError as exc:
        print(f"fusegraph: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fusegraph: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fusegraph report pro | head`
        return 0


if __name__ == "__main__":  # python -m fusegraph.cli.main
    sys.exit(main())
