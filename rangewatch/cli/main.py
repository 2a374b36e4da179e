"""The ``rangewatch`` command line.

Argument parsing imports neither torch nor Lightning (``rangewatch --help``, ``--version`` and
option errors answer at once); each subcommand imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__

#: the demo cases (name -> title), kept here so that the parser needs no torch; equal to
#: ``{k: c.title for k, c in rangewatch.cli.demo.CASES.items()}`` (tests/cli/test_ux_cli.py checks it)
DEMO_CASES = {
    "dark-preview": "CodeFormer stage 2: validation previews through tensor2img's default min_max=(0, 1)",
    "vae-range": "[0,1] photos fed to a VAE built for [-1,1] (diffusers AutoencoderKL)",
    "multi-norm": "VAE + CLIP image encoder + DINO-style backbone, CLIP and ImageNet normalisation swapped",
    "fp16-black": "a restoration net in pure fp16 whose decoder overflows 65504 (black images)",
    "sdxl-latent": "SDXL latents fed to the denoiser without * scaling_factor (values past +-30)",
    "clean": "the restoration run with every range right",
}


def _conventions(args: argparse.Namespace) -> int:
    from ..expect.conventions import get_convention, list_conventions

    rows = [("name", "kind", "what", "range of [0, 1] images per channel (pixel) / scale, shift, channels (latent)")]
    for name in list_conventions():
        c = get_convention(name)
        if args.kind and c.kind != args.kind:
            continue
        if c.kind == "pixel":
            lo, hi = c.bounds(3)
            rng = " / ".join(f"{a:.4g}..{b:.4g}" for a, b in zip(lo, hi))
        else:
            rng = f"scale {c.scale} shift {c.shift or 0} channels {c.channels}"
        rows.append((name, c.kind, c.label, rng))
    w0, w1, w2 = (max(len(r[i]) for r in rows) for i in range(3))
    for i, (a, b, c_, d) in enumerate(rows):
        print(f"{a:<{w0}}  {b:<{w1}}  {c_:<{w2}}  {d}")
        if i == 0:
            print(f"{'-' * w0}  {'-' * w1}  {'-' * w2}  {'-' * min(len(d), 40)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    results = run_demo(args.case, args.logdir, progress=not args.no_progress)
    bad = [r.case for r in results if not r.ok]
    if bad:
        print(f"\nthese cases did not give the finding they are about: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _os_error(e: OSError, out: str | None = None) -> int:
    where = e.filename if e.filename is not None else out
    hint = " (--out names a file; give a folder)" if isinstance(e, (FileExistsError, NotADirectoryError)) else ""
    print(f"rangewatch report: cannot write or read {where!s}: {e.strerror or type(e).__name__}{hint}".replace("\n", " "),
          file=sys.stderr)
    return 2


def _check_cache(args: argparse.Namespace) -> int:
    from ..checks.latent_cache import main_check_cache

    return main_check_cache(args)


def _report(args: argparse.Namespace) -> int:
    from ..sinks.report import build_report

    try:
        path = build_report(args.logdir, args.out)
    except (FileNotFoundError, ValueError) as e:  # no log directory, no event files, no rangewatch data
        if isinstance(e, FileNotFoundError) and e.filename is not None:  # raised by the OS, not by build_report
            return _os_error(e)
        print(f"rangewatch report: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an --out that is a file, a folder it may not write, a full disk: one line, exit 2
        return _os_error(e, args.out)
    print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..preflight import main_check

    return main_check(args)


def _tensorboard(args: argparse.Namespace) -> int:
    from .tensorboard_app import main as tb_main

    logdir = args.logdir_opt or args.logdir
    if not logdir:
        print("rangewatch tensorboard: give the log directory (rangewatch tensorboard --logdir rangewatch_logs)", file=sys.stderr)
        return 2
    return tb_main(["--logdir", logdir, "--port", str(args.port), "--host", args.host])


class _Parser(argparse.ArgumentParser):
    """An option error in a subcommand prints that subcommand's usage (argparse does by itself for
    the parser that failed; the top-level parser also gets unknown options of a subcommand, so
    those are sent to the subcommand's parser here)."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            sub = getattr(ns, "_subparser", None)
            (sub or self).error(f"unrecognized arguments: {' '.join(extra)}")
        return ns


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="rangewatch",
        description="Catch value-range mistakes in image and diffusion training.",
        epilog="examples:\n  rangewatch demo\n  rangewatch check configs/check_example.yaml\n  rangewatch check-cache cache/ --vae sdxl_latent\n  rangewatch report rangewatch_logs\n  rangewatch conventions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"rangewatch {__version__}")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser(
        "conventions",
        help="list the value-range conventions rangewatch knows",
        description="Lists every value-range convention rangewatch knows (the names RangeWatch(expect=...) takes): "
        "pixel conventions with the range [0, 1] images take per channel after that normalisation, latent "
        "conventions with their scaling factor, shift and channel count.",
        epilog="examples:\n  rangewatch conventions\n  rangewatch conventions --kind latent\n"
        "  RangeWatch(expect={\"batch.image\": \"symmetric\", \"image_encoder\": \"clip\"})   # the names, in Python",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--kind", choices=("pixel", "latent"), help="only this kind")
    c.set_defaults(func=_conventions, _subparser=c)

    d = sub.add_parser(
        "demo",
        help="train a small model on the embedded photos with RangeWatch attached and show what it finds",
        description="Short real Lightning runs (CPU) on the photos rangewatch ships, one per case; "
        "prints the findings and the tensorboard command.",
        epilog="examples:\n  rangewatch demo                      # the CodeFormer dark-preview case\n"
        "  rangewatch demo --case vae-range\n  rangewatch demo --case all --logdir /tmp/rw\n\ncases:\n"
        + "\n".join(f"  {k:13s} {t}" for k, t in DEMO_CASES.items()) + "\n  all           every case above",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--case", default="dark-preview", choices=[*DEMO_CASES, "all"], help="scenario to run (default: dark-preview)")
    d.add_argument("--logdir", default="rangewatch_logs", help="TensorBoard log directory (default: ./rangewatch_logs)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    d.set_defaults(func=_demo, _subparser=d)

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
    r.set_defaults(func=_report, _subparser=r)

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
    k.set_defaults(func=_check, _subparser=k)

    cc = sub.add_parser(
        "check-cache",
        help="check a latent cache on disk (sd-scripts .npz, .pt, .safetensors): NaN/Inf files, scale/shift, outliers, previews",
        description="Reads a sample of the latent files under DIR (kohya sd-scripts .npz with a `latents` array next to\n"
        "each image; diffusers-based trainers' .pt / .safetensors), names the files with NaN/Inf, judges the scale and\n"
        "shift against the VAE's latent convention (raw or scaled storage, read from the data), names outlier files,\n"
        "and writes latent-to-RGB previews of a few files to an HTML page. With --vae a local diffusers VAE folder that\n"
        "holds weights, a few files are decoded and the decoded pixels' convention judged ([0, 1]-encoded images\n"
        "decode to [0, 1]: washed out).\n\n"
        "exit codes: 0 nothing wrong, 1 a value-range problem, 2 the check could not run (no cache files, unknown --vae)",
        epilog="examples:\n  rangewatch check-cache train_data/ --vae sdxl_latent\n"
        "  rangewatch check-cache cache/ --vae models/FLUX.1-dev/vae --html cache.html\n"
        "  rangewatch check-cache cache/ --vae wan21_latent --json > cache.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cc.add_argument("dir", help="the cache folder (searched recursively) or one cache file")
    cc.add_argument("--vae", default=None, metavar="CONFIG_OR_NAME",
                    help="the VAE: a latent convention name (sdxl_latent, flux_latent, wan21_latent, ...; see "
                    "`rangewatch conventions --kind latent`), a diffusers config.json, or a local diffusers VAE folder")
    cc.add_argument("--sample", type=int, default=64, help="files to read, spread evenly over the sorted list (default: 64)")
    cc.add_argument("--stored", choices=["auto", "raw", "scaled"], default="auto",
                    help="how the trainer stores latents: raw VAE output or already scaled (default: read from the data)")
    cc.add_argument("--previews", type=int, default=4, help="files shown as latent-to-RGB previews (default: 4)")
    cc.add_argument("--decode", type=int, default=2, help="files decoded when --vae is a folder with weights (default: 2)")
    cc.add_argument("--html", default=None, help="the HTML page (default: ./rangewatch_cache.html)")
    cc.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    cc.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cc.set_defaults(func=_check_cache, _subparser=cc)

    t = sub.add_parser(
        "tensorboard",
        help="open TensorBoard on LOGDIR (works where tensorboard and tb-nightly are both installed)",
        description="Starts TensorBoard's own program on LOGDIR. Same as `tensorboard --logdir LOGDIR`, but also "
        "works when basicsr's tb-nightly sits beside tensorboard (plain `tensorboard` then fails with "
        "'Duplicate plugins for name projector').",
        epilog="examples:\n  rangewatch tensorboard --logdir rangewatch_logs\n  rangewatch tensorboard lightning_logs --port 6007",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("logdir", nargs="?", help="the TensorBoard log directory (or --logdir)")
    t.add_argument("--logdir", dest="logdir_opt", metavar="LOGDIR", help="the same, as TensorBoard spells it")
    t.add_argument("--port", type=int, default=6006)
    t.add_argument("--host", default="localhost")
    t.set_defaults(func=_tensorboard, _subparser=t)
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
