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


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    try:
        path = build_report(args.logdir, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"rangewatch report: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    from .preflight import main_check

    return main_check(args)


def _tensorboard(args: argparse.Namespace) -> int:
    from .tensorboard_app import main as tb_main

    return tb_main(["--logdir", args.logdir, "--port", str(args.port), "--host", args.host])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rangewatch",
        description="Catch value-range mistakes in image and diffusion training.",
        epilog="examples:\n  rangewatch demo\n  rangewatch check configs/check_example.yaml\n  rangewatch report rangewatch_logs\n  rangewatch conventions",
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

    r = sub.add_parser(
        "report",
        help="write a self-contained HTML report (plus PNGs) from rangewatch's TensorBoard logs",
        description="Reads the TensorBoard event files rangewatch wrote under LOGDIR (every run, DDP "
        "included) and writes per-tap range charts, histograms, broken/corrected preview pairs and the "
        "findings to one HTML page; prints its path.",
        epilog="examples:\n  rangewatch report rangewatch_logs\n  rangewatch report lightning_logs/version_3 --out /tmp/report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("logdir", help="a TensorBoard log directory (searched recursively)")
    r.add_argument("--out", default=None, help="output folder (default: LOGDIR/rangewatch_report)")
    r.set_defaults(func=_report)

    k = sub.add_parser(
        "check",
        help="pre-flight check without training: pull a few batches through RangeWatch and the model; exit 1 on a mismatch",
        description="Reads a YAML with `data` (a LightningDataModule: class_path + init_args), optionally `model`\n"
        "(a LightningModule) and `rangewatch` (RangeWatch options), or a LightningCLI config with a RangeWatch\n"
        "entry under trainer.callbacks. Pulls --batches batches from train_dataloader(), runs them through the\n"
        "taps and the model's training_step under torch.no_grad(), and prints per tap the inferred convention,\n"
        "its evidence and the findings.\n\n"
        "exit codes: 0 nothing wrong, 1 a value-range problem, 2 the check could not run (bad config, failing datamodule)\n"
        "or could not check an expected module tap (result: NOT CHECKED)\n\n"
        "a config is code: as with LightningCLI, every class_path in it (nested ones in init_args too) is imported\n"
        "and instantiated, so its module code and constructors run; check only configs you would train with",
        epilog="examples:\n  rangewatch check configs/check_example.yaml\n  rangewatch check fit.yaml --batches 16 --json > check.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument("config", help="YAML config (data / model / rangewatch, or a LightningCLI config)")
    k.add_argument("--batches", type=int, default=8, help="batches to pull from train_dataloader() (default: 8)")
    k.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    k.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    k.set_defaults(func=_check)

    t = sub.add_parser(
        "tensorboard",
        help="open TensorBoard on LOGDIR (works where tensorboard and tb-nightly are both installed)",
        description="Starts TensorBoard's own program on LOGDIR. Same as `tensorboard --logdir LOGDIR`, but also "
        "works when basicsr's tb-nightly sits beside tensorboard (plain `tensorboard` then fails with "
        "'Duplicate plugins for name projector').",
        epilog="examples:\n  rangewatch tensorboard rangewatch_logs\n  rangewatch tensorboard lightning_logs --port 6007",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("logdir", help="the TensorBoard log directory")
    t.add_argument("--port", type=int, default=6006)
    t.add_argument("--host", default="localhost")
    t.set_defaults(func=_tensorboard)
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
