"""``rangewatch tensorboard LOGDIR``: TensorBoard's own program, opening on the RANGEWATCH dashboard
(:mod:`rangewatch.sinks.tb_plugin`, listed first), and started so that it also works when both
``tensorboard`` and ``tb-nightly`` are installed (basicsr depends on ``tb-nightly``; the two register the
same ``projector`` plugin and plain ``tensorboard`` then stops with "Duplicate plugins for name projector")."""

from __future__ import annotations

from typing import Any


def plugins() -> list[Any]:
    """The RANGEWATCH dashboard first (TensorBoard opens on the first active dashboard), then TensorBoard's
    built-in plugins and each dynamic plugin once."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorboard's default.py imports the deprecated pkg_resources
        from tensorboard import default

    from ..sinks.tb_plugin import RangewatchPlugin

    out: list[Any] = [RangewatchPlugin]
    for plugin in default.get_plugins():  # static plugins + the entry-point ones (listed once per dist)
        if plugin not in out:
            out.append(plugin)
    return out


def main(argv: list[str]) -> int:
    """Run TensorBoard with ``argv`` (e.g. ``["--logdir", "rangewatch_logs"]``)."""
    from tensorboard import program

    tb = program.TensorBoard(plugins=plugins())
    tb.configure(argv=[None, *argv])
    return int(tb.main() or 0)
