"""The ``hf-unlearn`` command line: unlearn, locate, audit, dissect, evaluate and early exit.

Each subcommand lives in its own module with ``add_parser(subparsers)`` (which sets ``handler``), so a new one is
one module and one entry in ``SUBCOMMANDS``. Bad input ends with exit code 2 and one line on stderr; rerun with
``--traceback`` to see where an unexpected error came from.

Example:
    >>> from hf_unlearn.cli import main
    >>> main(["unlearn", "--list-methods"])
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

from . import audit, demo, dissect, early_exit, evaluate, locate, push, unlearn
from ._common import CLIError, Parser, one_line

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: the subcommand modules, in ``--help`` order.
SUBCOMMANDS = (unlearn, locate, audit, dissect, evaluate, early_exit, push, demo)

DESCRIPTION = """\
Unlearning for Hugging Face causal LMs: train, audit and inspect.

examples:
  hf-unlearn unlearn --list-methods
  hf-unlearn unlearn --model ./my-model --method npo --forget forget.jsonl --retain retain.jsonl \\
      --output-dir out/npo --max_steps 50
  hf-unlearn unlearn --model smollm2 --concept "Harry Potter" --questions hp.txt --output-dir out/hp
  hf-unlearn audit --original smollm2 --unlearned out/hp --vectors vectors.json --output-dir out/audit
"""


def build_parser() -> Parser:
    parser = Parser(prog="hf-unlearn", description=DESCRIPTION)
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hf-unlearn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Example:
        >>> main(["evaluate", "--model", "out/npo", "--forget", "forget.jsonl"])
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Accepted anywhere on the line, not only before the subcommand.
    show_traceback = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "config_flags", False):
            raise CLIError(f"hf-unlearn {args.command}: unrecognized arguments: {' '.join(extra)}")
        return int(args.handler(args, extra) or 0)
    except SystemExit as exit_:  # --help, and argparse's own exits
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except (CLIError, ValueError, FileNotFoundError) as error:  # bad input: the library's errors say what to change
        if show_traceback:
            traceback.print_exc()
        print(f"error: {one_line(error)}", file=sys.stderr)
        return getattr(error, "code", 2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if show_traceback:
            traceback.print_exc()
        hint = "" if show_traceback else " (rerun with --traceback for details)"
        print(f"error: {type(error).__name__}: {one_line(error)}{hint}", file=sys.stderr)
        return 1

