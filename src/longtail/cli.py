"""``longtail <verb>``: one verb per pipeline stage.

Each stage package has a ``cli`` module with ``register(subparsers)``; it adds its verbs and sets
``func`` on each parser. Errors caused by bad input (``LongtailError``) print as one clear message and
exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from longtail import __version__
from longtail.common.errors import LongtailError

#: Stage order = pipeline order (README stage map).
STAGE_MODULES = [
    "longtail.data.cli",
    "longtail.hierarchy.cli",
    "longtail.proposals.cli",
    "longtail.proposals.annotation_free.cli",
    "longtail.embedding.cli",
    "longtail.discovery.cli",
    "longtail.report.cli",
]


def add_params_args(p: argparse.ArgumentParser) -> None:
    """--params and --set, shared by every verb."""
    p.add_argument("--params", default=None, help="params file (default: params.yaml at the repo root)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params.yaml value, e.g. --set embedding.alpha=0.5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longtail",
        description="Unsupervised discovery of long-tail object categories in instance segmentation. "
                    "One verb per pipeline stage; see the README's stage map.")
    parser.add_argument("--version", action="version", version=f"longtail {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for mod_name in STAGE_MODULES:
        if importlib.util.find_spec(mod_name) is None:
            continue
        importlib.import_module(mod_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except LongtailError as e:
        print(f"longtail {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"longtail {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
