"""``inferos bench ab``: the seed's acceptance run, ON against OFF (bench/ab.py).

The benchmarks live in the source checkout's ``bench/`` beside the package (the editable
install the README's set-up makes), with the test equipment they share; this command runs
them from there and says so where there is no checkout. Its arguments are bench/ab.py's
(``inferos bench ab --help``); it is loaded only when asked for, so that other commands
do not pay for its imports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inferos.errors import ConfigError

BENCHES = ("ab",)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmarks: 'ab' compares ON against OFF on this "
                                     "machine, with a report")
    inner = p.add_subparsers(dest="bench", required=True)
    ab = inner.add_parser("ab", add_help=False,
                          help="ON against OFF over prompt length x batch x profile "
                               "(--help for its options)")
    ab.set_defaults(func=_cmd_ab, passes_arguments=True)  # inferos.cli: the rest is ours


def _checkout() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "ab.py").is_file():
        raise ConfigError(f"inferos bench needs the source checkout's bench/ (not found "
                          f"beside {root / 'inferos'}); install with pip install -e",
                          key="bench")
    return root


def _cmd_ab(args: argparse.Namespace) -> int:
    root = str(_checkout())
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import ab

    parser = ab.build_parser(argparse.ArgumentParser(
        prog="inferos bench ab", description=ab.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    return ab.run_args(parser.parse_args(args.rest), parser)
