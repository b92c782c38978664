"""``inferos model prepare|list``: the engine's models, converted once and cached."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("model", help="prepare and list the embedded engine's models")
    actions = p.add_subparsers(dest="action", required=True)
    prepare = actions.add_parser("prepare", help="convert a model to ONNX (cached; a second "
                                                 "run returns at once)")
    prepare.add_argument("name", nargs="?", default=None,
                         help="the model (default smollm2-135m-instruct)")
    prepare.add_argument("--name", dest="name_option", default=None,
                         help="the same, as an option")
    prepare.add_argument("--precision", default=None,
                         help="weights: fp32 (default), int8 or int4")
    prepare.set_defaults(func=_cmd_prepare)
    listing = actions.add_parser("list", help="the models that can be prepared, and where")
    listing.set_defaults(func=_cmd_list)


def _progress(message: str) -> None:
    print(f"inferos: {message}", file=sys.stderr, flush=True)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from inferos.engine.prepare import DEFAULT_PRECISION, ensure_prepared

    name = args.name_option or args.name or "smollm2-135m-instruct"
    folder = ensure_prepared(name, args.precision or DEFAULT_PRECISION, progress=_progress)
    print(folder)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from inferos.engine.prepare import PRECISIONS, SOURCES, prepared_folder

    for name, source in SOURCES.items():
        for precision in PRECISIONS:
            folder = prepared_folder(name, precision)
            where = str(folder) if folder is not None else "not prepared"
            print(f"{name}\t{precision}\t{source.licence}\t{where}")
    return 0
