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


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    results = run_demo(args.case, args.logdir, progress=not args.no_progress)
    bad = [r.case for r in results if not r.ok]
    if bad:
        print(f"\nthese cases did not give the finding they are about: {', '.join(bad)}", file=sys.stderr)
        return 1
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

    from .demo import CASES

    d = sub.add_parser(
        "demo",
        help="train a small model on the embedded photos with RangeWatch attached and show what it finds",
        description="Short real Lightning runs (CPU) on the photos rangewatch ships, one per case; "
        "prints the findings and the tensorboard command.",
        epilog="examples:\n  rangewatch demo                      # the CodeFormer dark-preview case\n"
        "  rangewatch demo --case vae-range\n  rangewatch demo --case all --logdir /tmp/rw\n\ncases:\n"
        + "\n".join(f"  {k:13s} {c.title}" for k, c in CASES.items()) + "\n  all           every case above",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--case", default="dark-preview", choices=[*CASES, "all"], help="scenario to run (default: dark-preview)")
    d.add_argument("--logdir", default="rangewatch_logs", help="TensorBoard log directory (default: ./rangewatch_logs)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    d.set_defaults(func=_demo)
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
