"""The engine's declared taps that never appear: tensor-tap keys, the probes that say what ran instead, the finding.

:class:`UnseenTaps` is a collaborator of :class:`rangewatch.Watch` that holds every declared tap to account. A tap named in
``expect=`` or ``modules=`` (a batch path, a submodule's input or output, a tensor fed by
:meth:`rangewatch.Watch.tensor`) that has not appeared by the end of the check window (the first
``check_first_n`` training batches, at least one) is an ``unseen`` finding (a warning; an error under
``policy="raise"``, which stops the run, on every rank alike: the ranks agreed on their taps at that check, so
they reach the same verdict) that says what was seen instead:

- a batch path: the tensor paths the batches do carry (``batch[0]``, ``batch[1]`` on tuple batches);
- a submodule: that its ``forward`` was never called, and which of its submodules' forwards ran
  (``ae.encoder``, ``ae.quant_conv``: an autoencoder whose ``encode()`` bypasses ``forward``), found by
  probes that only record a name, placed on the declared module's submodules for the check window;
- a tensor name: the tensors :meth:`~rangewatch.Watch.tensor` was given, and near misses.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Collection, Mapping, Sequence

from torch import nn

from ..findings.finding import Finding, unseen_finding
from ..taps.batches import tensor_paths
from ..taps.hooks import parse_tap_key
from .expectations import tap_name_for_key

__all__ = ["UnseenTaps"]

_MAX_PROBES = 256  # submodules probed per declared module
_MAX_LISTED = 8


class UnseenTaps:
    """Declared taps that never appear: :meth:`split_tensor_keys` and :meth:`probe` at attach time, :meth:`saw_tensor`
    / :meth:`record_batch` during the check window (what was fed instead), :meth:`check` at its end (once per fit:
    ``done``). ``declared`` returns the ``expect=`` and ``modules=`` keys; the taps seen and the hooked modules are
    given to each call."""

    def __init__(self, declared: Callable[[], tuple[Mapping[str, str], Sequence[str]]]) -> None:
        self._keys = declared
        self.tensor_keys: set[str] = set()  # declared keys that name no submodule: taps fed by tensor()
        #: the check window's end was reached (the finding made, the probes off): nothing more to record
        self.done = False
        self._probes: list[Any] = []
        self._ran: set[str] = set()  # probed submodules whose forward ran in the check window
        self._probed: set[str] = set()  # declared modules that have submodules (probed)
        self._batch_paths: dict[str, tuple[int, ...]] = {}  # tensor paths the training batches carried (window only)
        self._tensor_names: dict[str, None] = {}  # distinct names given to tensor(), in order (window only)

    @property
    def probing(self) -> bool:
        """Whether probes are placed (taken off at the window's end, or once every declared module ran)."""
        return bool(self._probes)

    # ------------------------------------------------------------------ attach time
    def split_tensor_keys(self, model: nn.Module, wanted: dict[str, set[str]], derived: Collection[str] = ()) -> dict[str, set[str]]:
        """Take the keys that name tensors, not submodules, out of ``wanted`` (``Watch.attach(tensor_taps=True)``): an
        ``expect`` / ``modules`` key that names no submodule, is no near miss of one (``encodr``) and does not start with
        a child's name (``vae.encodr``) is a tensor tap (``latents``), fed by ``Watch.tensor``; one never fed is reported
        at the end of the check window, as every declared tap that never appears. ``derived``: the modules the model's
        metadata named (never tensors)."""
        names = {n for n, _ in model.named_modules(remove_duplicate=False)}
        children = {n for n, _ in model.named_children()}
        out = {}
        for name, sides in wanted.items():
            if name in names or name in derived:
                out[name] = sides
                continue
            head = name.split(".", 1)[0]
            near = difflib.get_close_matches(name, [n for n in names if n], n=1, cutoff=0.85)
            if ("." in name and head in children) or near:
                out[name] = sides  # a module path after all: attach says "no submodule named ..."
                continue
            self.tensor_keys.add(name)
        return out

    def _declared(self, hooked: Collection[str] | None) -> list[tuple[list[str], str, str]]:
        """Each declared tap: (its tap names (one of them seen is enough), how it was declared, kind); ``hooked``:
        the modules that carry hooks (None before attach)."""
        out: list[tuple[list[str], str, str]] = []
        expect, modules = self._keys()
        for key, conv in expect.items():
            if key.startswith("val/"):
                continue
            if key.startswith("batch"):
                out.append(([key], f"expect={{{key!r}: {conv!r}}}", "batch"))
                continue
            name = parse_tap_key(key)[0]
            out.append(([tap_name_for_key(key)], f"expect={{{key!r}: {conv!r}}}", self._key_kind(name, hooked)))
        for key in modules:
            if key.startswith("val/"):
                continue
            if key.startswith("batch"):
                out.append(([key], f"modules=[{key!r}]", "batch"))
                continue
            name, side = parse_tap_key(key)
            taps = [f"{name}:{side}"] if ":" in key else [f"{name}:input", f"{name}:output"]
            out.append((taps, f"modules=[{key!r}]", self._key_kind(name, hooked)))
        return out

    def _key_kind(self, name: str, hooked: Collection[str] | None) -> str:
        if name in self.tensor_keys or hooked is None:
            return "tensor"
        if name not in hooked:
            return "skipped"  # a TorchScript module (said when attached)
        return "module"

    def probe(self, model: nn.Module, hooked: Collection[str]) -> None:
        """Probes on the declared (and ``hooked``) modules' submodules: a forward pre-hook that records the name,
        nothing else, for the check window (taken off at its end, or as soon as every declared module has run)."""
        self.unprobe()
        self._ran = set()
        if self.done:
            return
        modules = dict(model.named_modules(remove_duplicate=False))
        expect, keys = self._keys()
        declared = {parse_tap_key(k)[0] for k in list(expect) + list(keys)
                    if not k.startswith(("batch", "val/"))} & set(hooked)
        for name in sorted(declared):
            mod = modules.get(name)
            if mod is None:
                continue
            for i, (sub, m) in enumerate(mod.named_modules(prefix=name)):
                if i > _MAX_PROBES:
                    break
                if sub == name:
                    continue
                try:
                    self._probes.append(m.register_forward_pre_hook(self._probe_for(sub)))
                    self._probed.add(name)
                except Exception:  # noqa: BLE001  (a TorchScript submodule: no probe, nothing else changes)
                    pass

    def _probe_for(self, name: str) -> Any:
        ran = self._ran

        def probe(module: nn.Module, args: Any) -> None:
            ran.add(name)

        return probe

    def unprobe(self) -> None:
        for h in self._probes:
            h.remove()
        self._probes.clear()

    # ------------------------------------------------------------------ during the window
    def saw_tensor(self, name: str, hooked: Collection[str] | None = None) -> None:
        """A name given to ``tensor()`` in the check window (the first 64 distinct kept); the taps of the ``hooked``
        modules (their hooks feed through ``tensor()`` too) are not what the user fed instead, so they are left out."""
        if not self.done and len(self._tensor_names) < 64 and name not in self._tensor_names:
            if hooked is None or name.split(":", 1)[0] not in hooked:
                self._tensor_names[name] = None

    def record_batch(self, batch: Any) -> None:
        """The tensor paths of a training batch, while a declared batch path (``expect=`` or ``modules=``) has not been
        seen."""
        if self.done or len(self._batch_paths) >= 64:
            return
        expect, modules = self._keys()
        if not any(k.startswith("batch") for k in (*expect, *modules)):
            return  # no declared batch path: nothing to say about the batches
        for path, shape in tensor_paths(batch):
            self._batch_paths.setdefault(path, shape)

    def drop_probes_once_seen(self, seen: Collection[str], hooked: Collection[str] | None) -> None:
        """Every declared module has been ``seen`` (a tap): the probes have nothing left to tell (taken off early)."""
        for taps, _, kind in self._declared(hooked):
            if kind == "module" and not any(t in seen for t in taps):
                return
        self.unprobe()

    # ------------------------------------------------------------------ the end of the check window
    def close(self) -> None:
        """The window's end was passed (a resumed run): nothing more to record, the probes off."""
        self.done = True
        self.unprobe()

    def check(self, step: int, batches: int, seen: Collection[str], hooked: Collection[str] | None, raising: bool) -> list[Finding]:
        """The ``unseen`` findings at the end of the check window (once per fit), after ``batches`` training batches,
        for the declared taps not among the taps ``seen``; ``raising``: ``policy="raise"`` (severity error). The probes
        come off."""
        if self.done:
            return []
        self.close()
        out: list[Finding] = []
        n = batches
        for taps, declared, kind in self._declared(hooked):
            if kind == "skipped" or any(t in seen for t in taps):
                continue
            where = taps[0] if len(taps) == 1 else taps[0].rsplit(":", 1)[0]
            evidence, fix = self._why_unseen(where, taps, kind, n, seen)
            out.append(unseen_finding(where, declared=declared, batches=n, evidence=evidence, fix=fix, raising=raising, step=step))
        self._batch_paths.clear()
        self._tensor_names.clear()
        return out

    def _why_unseen(self, where: str, taps: list[str], kind: str, n: int, seen: Collection[str]) -> tuple[str, str]:
        batches = f"{n} training batch{'es' if n != 1 else ''}"
        if kind == "batch":
            paths = sorted(self._batch_paths.items())
            if where in self._batch_paths:  # there, but never a tap: not a tensor rangewatch can watch as images
                shape = list(self._batch_paths[where])
                return (f"the batches carry {where} {shape}, but it was never watched in the first {batches}: not an "
                        "image-like floating-point tensor (integer ids, labels and masks are not watched)",
                        "name the path that holds the images, or watch this tensor by name with watch.tensor(name, tensor)")
            if paths:
                listed = ", ".join(f"{p} {list(s)}" for p, s in paths[:_MAX_LISTED]) + (" ..." if len(paths) > _MAX_LISTED else "")
                images = [t for t in sorted(seen) if t.startswith("batch")]  # the image-like ones
                near = difflib.get_close_matches(where, images, n=2, cutoff=0.5) or images[:2] or [paths[0][0]]
                return (f"no tensor at {where} in the first {batches}; the batches carry {listed}",
                        f"name the path that holds the images ({', '.join(map(repr, near))}), "
                        "as the batch is built (a tuple batch is batch[0], batch[1], ...)")
            return (f"no tensor at {where} in the first {batches}, and the batches carried no tensor at all "
                    "(or watch.batch() was never called)", "feed the batches (watch.batch(batch)) or name the tensor that holds the images")
        name = where.split(":", 1)[0]
        if kind == "module":
            ran = sorted(r for r in self._ran if r.startswith(name + "."))
            entry = [r for r in ran if not any(r.startswith(o + ".") for o in ran if o != r)]
            if entry:
                listed = ", ".join(entry[:_MAX_LISTED]) + (" ..." if len(entry) > _MAX_LISTED else "")
                return (f"{name}.forward was never called in the first {batches}, while the forward of its submodule"
                        f"{'s' if len(entry) != 1 else ''} {listed} ran (a method such as encode() that calls them "
                        "directly, bypassing forward)",
                        f"name the submodule that receives the tensor: {', '.join(repr(e + (':' + taps[0].rsplit(':', 1)[1] if len(taps) == 1 else '')) for e in entry[:3])}")
            subs = ", nor the forward of any of its submodules" if name in self._probed else ""
            return (f"{name}.forward was never called in the first {batches}{subs}: "
                    f"{name} is not used in training (or runs outside the watched steps)",
                    f"name a module the training step calls, or watch the tensor itself with watch.tensor({name!r}, t)")
        given = sorted({g.split(":", 1)[0] for g in self._tensor_names})  # each name once (both sides fed: one name)
        near = difflib.get_close_matches(name, given, n=2, cutoff=0.6)
        if given:
            listed = ", ".join(repr(g) for g in given[:_MAX_LISTED])
            return (f"watch.tensor({name!r}, ...) was never called in the first {batches}; watch.tensor was given {listed}",
                    f"call watch.tensor({name!r}, tensor) in the training step" + (f", or declare the name it is fed as ({', '.join(map(repr, near))})" if near else ""))
        return (f"watch.tensor({name!r}, ...) was never called in the first {batches}, and no submodule is named {name!r}",
                f"call watch.tensor({name!r}, tensor) in the training step, or name a submodule of the model")
