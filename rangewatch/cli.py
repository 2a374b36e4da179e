"""The ``rangewatch`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .conventions import get_convention, list_conventions


def _conventions(_: argparse.Namespace) -> int:
    for name in list_conventions():
        c = get_convention(name)
        if c.kind == "pixel":
            lo, hi = c.bounds(3)
            rng = " / ".join(f"{a:.4g}..{b:.4g}" for a, b in zip(lo, hi))
        else:
            rng = f"scale {c.scale} shift {c.shift or 0} channels {c.channels}"
        print(f"{name:12s} {c.kind:6s} {c.label:34s} {rng}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rangewatch",
        description="Catch value-range mistakes in image and diffusion training.",
        epilog="examples:\n  rangewatch conventions\n  rangewatch demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"rangewatch {__version__}")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("conventions", help="list the value-range conventions rangewatch knows")
    c.set_defaults(func=_conventions)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
