"""The ``inferos`` command. Each subcommand lives in ``inferos.commands.<name>`` and
registers itself through ``add_parser``; its handler returns the exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from inferos.commands import bench, engine, model, serve, service, status
from inferos.errors import ConfigError, InferOSError

COMMANDS = (serve, engine, model, status, service, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferos", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # ``inferos bench ab`` hands its own arguments to bench/ab.py (an argparse REMAINDER
    # cannot take options that come first); every other command takes none it does not know.
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passes_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # One line per HTTP call (health polls, status reads) drowns what matters.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"inferos: configuration error: {exc}", file=sys.stderr)
        return 2
    except InferOSError as exc:
        print(f"inferos: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
