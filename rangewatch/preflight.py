"""``rangewatch check CONFIG.yaml``: a pre-flight check that needs no training.

The config names a LightningDataModule (``data``), optionally a LightningModule (``model``), both
LightningCLI style (``class_path`` + ``init_args``), and the :class:`~rangewatch.RangeWatch` options
(top-level ``rangewatch:`` or a ``trainer.callbacks`` entry of a LightningCLI config). The check

1. builds ``RangeWatch(**options)`` (policy is forced to ``"log"``: the check reports, it never warns or raises),
2. calls the datamodule's ``prepare_data()`` and ``setup("fit")``; the model's ``configure_model()``, ``eval()``,
3. derives the model's expectations and hooks its submodules (as at ``on_fit_start``), reads what the
   loaders' transforms produce (as at ``on_train_start``),
4. pulls ``batches`` batches from ``train_dataloader()``, applies the batch-transfer hooks
   (``on_before_batch_transfer`` / ``transfer_batch_to_device`` (CPU) / ``on_after_batch_transfer``, the
   datamodule's or else the model's, as Lightning picks them), feeds every image-like tensor to the taps and
   runs ``training_step(batch, i)`` under ``torch.no_grad()`` (``validation_step`` when that fails; ``forward``
   for a plain ``nn.Module``) so the submodule hooks see their real inputs,
5. infers each tap's convention from all pulled batches together and checks it against its expectation.

Exit codes of :func:`main_check`: 0 nothing wrong, 1 a value-range problem (a mismatch or NaN/Inf), 2 the
check could not run (bad config, or the datamodule failed) with a one-line message naming the key, or it
ran but could not check an expected module tap (the model's ``training_step`` raised, a TorchScript
module takes no hooks) and no loader prediction covers it: the report says "result: NOT CHECKED".

A config is code: like LightningCLI, the check imports every ``class_path`` it names (nested ones in
``init_args`` too) and instantiates it with its ``init_args``, so module-level code and constructors of
those classes run. Check only configs you would also train with.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


from .config import ConfigError, _short, config_path, read_yaml
from .findings.finding import Finding

__all__ = ["CheckError", "CheckReport", "TapResult", "load_check_config", "check", "run_check", "main_check"]

#: top-level keys of a check config; LightningCLI's other keys are accepted and ignored
_OWN_KEYS = ("data", "model", "rangewatch", "trainer")
_CLI_KEYS = ("seed_everything", "optimizer", "lr_scheduler", "ckpt_path")
_SPEC_KEYS = ("class_path", "init_args", "dict_kwargs")
_QUIET = ("note", "internal")


class CheckError(RuntimeError):
    """The check could not run: the datamodule or its loader failed (exit code 2)."""


# ---------------------------------------------------------------------------------------------- report
@dataclass
class TapResult:
    """One tap after the check: what it carried and what was expected there."""

    name: str
    convention: str  # inferred convention name, or "unknown"
    confident: bool
    evidence: str
    expectation: str | None = None  # expected convention name
    source: str | None = None  # where the expectation comes from
    origin: str | None = None  # "declared", "model" or "transform"
    dtypes: tuple[str, ...] = ()
    channel_min: tuple[float, ...] = ()
    channel_max: tuple[float, ...] = ()
    status: str = "ok"  # "ok", "no expectation", "mismatch", "nonfinite"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dtypes"] = list(self.dtypes)
        d["channel_min"] = [round(v, 6) for v in self.channel_min]
        d["channel_max"] = [round(v, 6) for v in self.channel_max]
        return d


@dataclass
class CheckReport:
    """What ``rangewatch check`` found. ``ok`` is False when a finding gates (see :meth:`fails`)."""

    config: str
    datamodule: str
    model: str | None
    model_call: str | None  # how the model was run, e.g. "training_step(batch, batch_idx) under torch.no_grad(), eval mode"
    batches: int  # batches actually pulled
    taps: dict[str, TapResult] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    unobserved: dict[str, dict[str, str]] = field(default_factory=dict)  # expected taps nothing reached
    loader_predictions: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> convention, source
    notes: list[str] = field(default_factory=list)
    #: expected module taps that were neither observed nor covered by a loader prediction (the model could
    #: not be run, or its hooks could not be placed): the check did not check them, so it does not pass
    unchecked: list[str] = field(default_factory=list)

    def fails(self, f: Finding) -> bool:
        """Does this finding fail the check? Mismatches and NaN/Inf do; notes and rangewatch's own
        internal errors do not. A loader-vs-module mismatch predicted from the transforms (severity
        "info") fails only when the module's input was not observed: when it was, the observation decides
        (the model may re-normalise in between)."""
        if f.kind in _QUIET:
            return False
        if f.severity != "info":
            return True
        if f.kind == "mismatch" and " -> " in f.where:
            return f.where.split(" -> ", 1)[1] not in self.taps
        return False

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if self.fails(f)]

    @property
    def ok(self) -> bool:
        return not self.problems

    def _label(self, f: Finding) -> str:
        pipeline = f.kind == "mismatch" and " -> " in f.where
        if self.fails(f):
            if pipeline:
                return f"MISMATCH (predicted from the transforms; {f.where.split(' -> ', 1)[1]} was not observed)"
            return f.severity.upper()
        if pipeline:
            return f"{f.severity} (predicted from the transforms; the observed {f.where.split(' -> ', 1)[1]} decides)"
        return f"{f.severity} (does not fail the check)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "ok": self.ok,
            "datamodule": self.datamodule,
            "model": self.model,
            "model_call": self.model_call,
            "batches": self.batches,
            "taps": {k: v.to_dict() for k, v in self.taps.items()},
            "findings": [{**f.to_dict(), "fails": self.fails(f)} for f in self.findings],
            "unobserved": self.unobserved,
            "loader_predictions": self.loader_predictions,
            "notes": list(self.notes),
            "unchecked": list(self.unchecked),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def format(self) -> str:
        from .sinks.console import wrap  # lines under about 160 characters, code never cut

        out = [f"rangewatch check {self.config}"]
        out.append(f"  data:  {self.datamodule}.train_dataloader(), {self.batches} batch{'es' if self.batches != 1 else ''}")
        out.append(f"  model: {self.model}, {self.model_call}" if self.model else "  model: none given (module taps cannot be observed)")
        if self.loader_predictions:
            out.append("")
            out.append("loader prediction (read from the transforms):")
            for stage, p in self.loader_predictions.items():
                out.append(f"  {stage}: {p['convention']} ({p['source']})")
        out.append("")
        if self.taps:
            out.append("taps:")
            for name, t in self.taps.items():
                status = {"ok": "ok", "no expectation": "no expectation", "mismatch": "MISMATCH", "nonfinite": "NaN/Inf"}.get(t.status, t.status)
                seen = f"{t.convention} ({'confident' if t.confident else 'not confident'})"
                exp = f"expected {t.expectation} ({t.source})" if t.expectation else "no expectation"
                out.append(wrap(f"  {name}: {seen}; {exp}  [{status}]", indent="      "))
                out.append(wrap(f"      evidence: {t.evidence}", indent="        "))
        else:
            out.append("taps: none (no image-like tensor in the batches; see batch_keys / skip_keys)")
        if self.unobserved:
            out.append("")
            out.append("expected but not observed:")
            for name, u in self.unobserved.items():
                out.append(f"  {name}: expects {u['expectation']} ({u['source']}); {u['why']}")
        out.append("")
        if self.findings:
            out.append(f"findings ({len(self.findings)}):")
            for f in sorted(self.findings, key=lambda f: not self.fails(f)):
                label = self._label(f)
                exp = f", expected {f.expected}" if f.expected else ""
                src = f" ({f.source})" if f.source else ""
                out.append(wrap(f"  {label} [{f.kind}] {f.where}: saw {f.observed}{exp}{src}", indent="      "))
                out.append(wrap(f"      evidence: {f.evidence}", indent="        "))
                if f.fix:
                    out.append(wrap(f"      fix: {f.fix}", indent="        "))
        else:
            out.append("findings: none")
        if self.notes:
            out.append("")
            out.append("notes:")
            out.extend(f"  - {n}" for n in self.notes)
        out.append("")
        n = len(self.problems)
        if n == 0 and self.unchecked:
            out.append(f"result: NOT CHECKED: {', '.join(self.unchecked)} never checked (see 'expected but not observed'); "
                       "nothing wrong in what was checked")
            return "\n".join(out)
        out.append(f"result: {'OK' if n == 0 else f'FAILED: {n} value-range problem' + ('s' if n != 1 else '')}")
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class CheckConfig:
    path: str
    data: tuple[str, dict[str, Any]]  # class_path, init_args
    model: tuple[str, dict[str, Any]] | None
    options: dict[str, Any]
    options_key: str  # where the RangeWatch options came from, for messages
    seed: int | None = None


def _close(word: str, allowed: list[str] | tuple[str, ...]) -> str:
    m = difflib.get_close_matches(str(word), list(allowed), n=1)
    return f"; did you mean {m[0]!r}?" if m else ""


def _spec(value: Any, key: str, origin: str) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str) and value:
        return value, {}
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: {key!r} must be a mapping with 'class_path' and 'init_args', got {type(value).__name__} {_short(value)}")
    for k in value:
        if k not in _SPEC_KEYS:
            raise ConfigError(f"{origin}: unknown key '{key}.{k}'{_close(k, _SPEC_KEYS)} Allowed: {', '.join(_SPEC_KEYS)}")
    cp = value.get("class_path")
    if not isinstance(cp, str) or not cp:
        raise ConfigError(
            f"{origin}: '{key}.class_path' is missing: give the import path of the class, e.g. "
            f"class_path: my_project.{'data.MyDataModule' if key == 'data' else 'model.MyModel'}"
        )
    args = value.get("init_args") or {}
    extra = value.get("dict_kwargs") or {}
    for k, v in (("init_args", args), ("dict_kwargs", extra)):
        if not isinstance(v, dict):
            raise ConfigError(f"{origin}: '{key}.{k}' must be a mapping of argument names to values, got {type(v).__name__} {_short(v)}")
    return cp, {**args, **extra}


def _rangewatch_entries(trainer: Any, origin: str) -> list[tuple[str, Any]]:
    if trainer is None:
        return []
    if not isinstance(trainer, dict):
        raise ConfigError(f"{origin}: 'trainer' must be a mapping, got {type(trainer).__name__}")
    cbs = trainer.get("callbacks") or []
    if isinstance(cbs, dict):
        cbs = [cbs]
    if not isinstance(cbs, list):
        raise ConfigError(f"{origin}: 'trainer.callbacks' must be a list of class_path/init_args entries, got {type(cbs).__name__}")
    out = []
    for i, c in enumerate(cbs):
        cp = c.get("class_path", "") if isinstance(c, dict) else c if isinstance(c, str) else ""
        if isinstance(cp, str) and cp.rsplit(".", 1)[-1] == "RangeWatch":
            args = c.get("init_args") if isinstance(c, dict) else None
            out.append((f"trainer.callbacks[{i}].init_args", args or {}))
    return out


def load_check_config(path: str | os.PathLike) -> CheckConfig:
    """Read and validate the structure of a check config (classes are not imported here)."""
    p = config_path(path)
    origin = str(p)
    data = read_yaml(p)  # every failure (missing, a directory, binary, not YAML, an alias bomb) is a ConfigError
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with 'data' (and optionally 'model', 'rangewatch'), got {type(data).__name__}")
    if isinstance(data.get("fit"), dict) and set(data) <= {"fit", "validate", "test", "predict"}:
        data = data["fit"]  # a LightningCLI config nested under its subcommand
        origin = f"{origin} (fit)"
    allowed = _OWN_KEYS + _CLI_KEYS
    from .options import OPTIONS

    accepted = list(OPTIONS)
    for k in data:
        if k not in allowed:
            hint = f"; RangeWatch options such as {_short(k)} go under 'rangewatch:'" if k in accepted else _close(k, allowed)
            raise ConfigError(f"{origin}: unknown top-level key {_short(k)}{hint} Allowed: {', '.join(allowed)}")
    if data.get("data") is None:
        raise ConfigError(
            f"{origin}: missing top-level key 'data': the LightningDataModule to pull batches from, as "
            "data: {class_path: my_project.data.MyDataModule, init_args: {...}}"
        )
    spec = _spec(data["data"], "data", origin)
    model = _spec(data["model"], "model", origin) if data.get("model") is not None else None

    entries = _rangewatch_entries(data.get("trainer"), origin)
    if "rangewatch" in data:
        entries.insert(0, ("rangewatch", data["rangewatch"] or {}))
    if len(entries) > 1:
        raise ConfigError(f"{origin}: RangeWatch options are given more than once ({', '.join(k for k, _ in entries)}); keep one")
    key, options = entries[0] if entries else ("rangewatch", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{origin}: {key!r} must be a mapping of RangeWatch options, got {type(options).__name__} {_short(options)}")
    for k in options:
        if k not in accepted:
            raise ConfigError(f"{origin}: unknown RangeWatch option '{key}.{str(k)[:80]}'{_close(k, accepted)} Allowed options: {', '.join(accepted)}")

    seed = data.get("seed_everything")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        seed = None  # LightningCLI's `true` (pick a random seed) or a null: nothing to reproduce
    return CheckConfig(str(p), spec, model, dict(options), key, seed)


def _import(class_path: str, key: str, origin: str) -> Any:
    parts = class_path.split(".")
    if len(parts) < 2:
        raise ConfigError(f"{origin}: '{key}.class_path' = {class_path!r} is not an import path; write it in full, e.g. my_project.data.{class_path}")
    err: BaseException | None = None
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
                err = err or e
                continue  # maybe a class nested in a module: try a shorter module path
            err = e
            break
        except Exception as e:  # the module itself failed while importing
            err = e
            break
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            return obj
        except AttributeError:
            raise ConfigError(f"{origin}: '{key}.class_path' = {class_path!r}: module {module_name!r} has no {'.'.join(parts[i:])!r}") from None
    raise ConfigError(f"{origin}: '{key}.class_path' = {class_path!r} cannot be imported: {type(err).__name__}: {err}") from None


def _check_args(cls: Any, args: dict[str, Any], key: str, class_path: str, origin: str) -> None:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    names = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for k in args:
        if k not in names:
            allowed = ", ".join(names) if names else "none"
            raise ConfigError(f"{origin}: '{key}.init_args.{k}' is not an argument of {class_path}{_close(k, names)} Allowed: {allowed}")
    missing = [
        p.name for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.default is inspect.Parameter.empty and p.name not in args
    ]
    if missing:
        raise ConfigError(f"{origin}: '{key}.init_args' lacks required argument(s) of {class_path}: {', '.join(missing)}")


def _build(value: Any, key: str, origin: str) -> Any:
    """Instantiate nested ``{class_path, init_args}`` mappings (LightningCLI style), depth first."""
    if isinstance(value, dict) and "class_path" in value and set(value) <= set(_SPEC_KEYS):
        cp, args = _spec(value, key, origin)
        return _instantiate(cp, args, key, origin)
    if isinstance(value, dict):
        return {k: _build(v, f"{key}.{k}", origin) for k, v in value.items()}
    if isinstance(value, list):
        return [_build(v, f"{key}[{i}]", origin) for i, v in enumerate(value)]
    return value


def _instantiate(class_path: str, args: dict[str, Any], key: str, origin: str, base: type | None = None, what: str = "") -> Any:
    cls = _import(class_path, key, origin)
    if base is not None and not (inspect.isclass(cls) and issubclass(cls, base)):
        raise ConfigError(f"{origin}: '{key}.class_path' = {class_path!r} is {_describe(cls)}, not {what}")
    if not callable(cls):
        raise ConfigError(f"{origin}: '{key}.class_path' = {class_path!r} is {_describe(cls)}, not a class")
    _check_args(cls, args, key, class_path, origin)
    kwargs = {k: _build(v, f"{key}.init_args.{k}", origin) for k, v in args.items()}
    try:
        return cls(**kwargs)
    except (ConfigError, CheckError):
        raise
    except Exception as e:
        raise ConfigError(f"{origin}: {key}: {class_path}(**init_args) raised {type(e).__name__}: {_one_line(e)}") from None


def _describe(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__name__}"


def _one_line(e: BaseException | str, limit: int = 600) -> str:
    text = " ".join(str(e)[: limit * 4].split()) or (type(e).__name__ if isinstance(e, BaseException) else "")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- driver
def _capture(notes: list[str]) -> Any:
    """The engine's lines as report notes: its info lines become notes (the expectations and the loader
    predictions have the report's own sections), its warnings are dropped (the check's policy is "log":
    findings and internal errors are in the report's findings)."""

    def say(level: str, text: str) -> None:
        if level != "info" or text.startswith(("rangewatch expectations:", "rangewatch loader predictions:")):
            return
        text = text.removeprefix("rangewatch: ")
        if text not in notes:
            notes.append(text)

    return say


def _overridden(name: str, obj: Any, base: type) -> bool:
    if obj is None or not isinstance(obj, base):
        return False
    from lightning.pytorch.utilities.model_helpers import is_overridden

    return is_overridden(name, obj, base)


_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def _transfer_hooks(datamodule: Any, model: Any) -> list[str]:
    """The batch-transfer hooks the datamodule or model override (``Class.hook``)."""
    import lightning.pytorch as pl

    out = []
    for hook in _TRANSFER_HOOKS:
        if hook == "transfer_batch_to_device":
            continue  # moves tensors, keeps values
        if _overridden(hook, datamodule, pl.LightningDataModule):
            out.append(f"{type(datamodule).__name__}.{hook}")
        elif _overridden(hook, model, pl.LightningModule):
            out.append(f"{type(model).__name__}.{hook}")
    return out


def _transfer(batch: Any, datamodule: Any, model: Any) -> Any:
    """Lightning's batch-transfer hooks, datamodule first (as the Trainer picks them), to the CPU."""
    import lightning.pytorch as pl
    import torch

    for hook in _TRANSFER_HOOKS:
        if _overridden(hook, datamodule, pl.LightningDataModule):
            owner, who = datamodule, type(datamodule).__name__
        elif _overridden(hook, model, pl.LightningModule):
            owner, who = model, type(model).__name__
        else:
            continue
        args = (batch, torch.device("cpu"), 0) if hook == "transfer_batch_to_device" else (batch, 0)
        try:
            batch = getattr(owner, hook)(*args)
        except Exception as e:
            raise CheckError(
                f"{who}.{hook}() raised {type(e).__name__}: {_one_line(e)} (without it the check cannot see the batch the model sees)"
            ) from None
    return batch


class _ModelRunner:
    """Runs the model on a batch under no_grad: training_step, else validation_step, else forward."""

    def __init__(self, model: Any, notes: list[str]) -> None:
        import lightning.pytorch as pl

        self.model = model
        self.notes = notes
        self.calls: list[str] = []
        if isinstance(model, pl.LightningModule):
            for name in ("training_step", "validation_step"):
                if _overridden(name, model, pl.LightningModule):
                    self.calls.append(name)
        if not self.calls:
            self.calls.append("forward")
        self.used: str | None = None
        self.failed: dict[str, str] = {}

    @property
    def describe(self) -> str:
        def sig(c: str) -> str:
            return "forward(batch)" if c == "forward" else f"{c}(batch, batch_idx)"

        if self.used is None:
            tried = "; ".join(f"{sig(c)} raised {e}" for c, e in self.failed.items())
            return f"not run ({tried})" if tried else "not run"
        return f"{sig(self.used)} under torch.no_grad(), eval mode"

    def __call__(self, batch: Any, i: int) -> None:
        import torch

        while self.calls:
            name = self.calls[0]
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r".*self\.log\(\)")
                    if name == "forward":
                        self.model(batch)
                    else:
                        getattr(self.model, name)(batch, i)
                self.used = name
                return
            except Exception as e:
                self.calls.pop(0)
                why = f"{type(e).__name__}: {_one_line(e)}"
                self.failed[name] = why
                nxt = f"; trying {self.calls[0]} instead" if self.calls else "; the model is not run, so its submodule taps stay empty"
                self.notes.append(f"model: {name} raised {why} at batch {i} (no Trainer in a pre-flight check){nxt}")


def _call_hook(obj: Any, name: str, *args: Any) -> None:
    try:
        getattr(obj, name)(*args)
    except Exception as e:
        a = ", ".join(repr(x) for x in args)
        raise CheckError(f"{type(obj).__name__}.{name}({a}) raised {type(e).__name__}: {_one_line(e)}") from None


def _loader_batches(loader: Any) -> Iterator[Any]:
    if isinstance(loader, (dict, list, tuple)):  # several loaders: Lightning combines them
        from lightning.pytorch.utilities.combined_loader import CombinedLoader

        for batch, _, _ in CombinedLoader(loader, "max_size_cycle"):
            yield batch
    else:
        yield from loader


def _check_batches(batches: Any) -> None:
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ConfigError(f"batches = {_short(batches)} (--batches) must be an integer >= 1")


def check(datamodule: Any, model: Any = None, watch: Any = None, batches: int = 8, progress: bool = True,
          config: str = "<objects>") -> CheckReport:
    """Run the pre-flight check on objects (what :func:`run_check` does after reading the config).

    ``watch`` is a :class:`~rangewatch.RangeWatch` or a :class:`~rangewatch.Watch` (default: ``Watch()``); its
    policy is set to ``"log"``, and its lines go to the report's notes while the check runs.
    Raises :class:`CheckError` when the datamodule fails and :class:`~rangewatch.ConfigError` when the
    RangeWatch options name a submodule the model lacks.
    """
    import lightning.pytorch as pl
    from tqdm.auto import tqdm

    from .engine.watch import Watch

    _check_batches(batches)
    engine: Watch = Watch() if watch is None else getattr(watch, "engine", watch)
    engine.policy = "log"
    notes: list[str] = []
    runner: _ModelRunner | None = None
    pulled = 0
    said, engine.messages = engine.messages, _capture(notes)
    try:
        if hasattr(datamodule, "prepare_data"):
            _call_hook(datamodule, "prepare_data")
        if hasattr(datamodule, "setup"):
            _call_hook(datamodule, "setup", "fit")
        try:
            loader = datamodule.train_dataloader()
        except Exception as e:
            raise CheckError(f"{type(datamodule).__name__}.train_dataloader() raised {type(e).__name__}: {_one_line(e)}") from None
        val_loader = None
        if _overridden("val_dataloader", datamodule, pl.LightningDataModule):
            try:
                val_loader = datamodule.val_dataloader()
            except Exception as e:
                notes.append(f"{type(datamodule).__name__}.val_dataloader() raised {type(e).__name__}: {_one_line(e)}; only the train loader is read")

        if model is not None:
            if hasattr(model, "configure_model"):
                try:
                    model.configure_model()
                except Exception as e:
                    notes.append(f"model: configure_model() raised {type(e).__name__}: {_one_line(e)}")
            model.eval()
            engine.attach(model)  # derived expectations + submodule hooks; ConfigError for unknown submodules
            runner = _ModelRunner(model, notes)
        hooks = _transfer_hooks(datamodule, model)
        if hooks:
            notes.append(
                f"{', '.join(hooks)} change(s) batches after the loader, so the loader's transforms do not say what the "
                "model sees: no loader prediction (the batches are checked as the hooks leave them)"
            )
        else:
            engine.predict_loaders(loader, val_loader)

        try:
            it = iter(_loader_batches(loader))
            bar = tqdm(total=batches, desc="rangewatch check", unit="batch", disable=not progress, leave=False, file=sys.stderr)
            with bar:
                for i in range(batches):
                    try:
                        batch = next(it)
                    except StopIteration:
                        notes.append(f"the train loader ran out after {pulled} batch{'es' if pulled != 1 else ''} (asked for {batches})")
                        break
                    except Exception as e:
                        raise CheckError(f"{type(datamodule).__name__}.train_dataloader() failed at batch {i}: {type(e).__name__}: {_one_line(e)}") from None
                    batch = _transfer(batch, datamodule, model)
                    engine.begin_step(i, detail=True)  # full statistics on every batch: the check looks at few of them
                    engine.batch(batch)
                    if runner is not None and runner.calls:
                        runner(batch, i)
                    pulled += 1
                    bar.update(1)
            del it
            if pulled == 0:
                raise CheckError(f"{type(datamodule).__name__}.train_dataloader() yielded no batches: nothing to check")
            # before the check below starts a new window
            seen = {name: (s, engine.taps[name].dtypes) for name, s in engine.summaries("train").items()}
            # one check over all pulled batches (more extremes than any single batch): inference, expectations,
            # NaN/Inf, latent taps, the module tracer when trace_modules is set
            engine.check(0, "train")
        finally:
            skipped_modules = engine.skipped_modules  # TorchScript modules: no hooks (detach clears it)
            engine.detach()  # hooks and tracer off the model
    finally:
        engine.messages = said

    findings = [dataclasses.replace(f, step=None) for f in engine.findings]
    report = CheckReport(
        config=config,
        datamodule=type(datamodule).__name__,
        model=type(model).__name__ if model is not None else None,
        model_call=runner.describe if runner is not None else None,
        batches=pulled,
        taps=_tap_results(engine, seen),
        findings=findings,
        loader_predictions={k: {"convention": v.convention, "source": v.source} for k, v in engine.loader_expectations.items()},
        notes=notes,
    )
    report.unobserved = _unobserved(engine, report, runner, skipped_modules)
    report.unchecked = _unchecked(engine, report, runner)
    for f in findings:
        t = report.taps.get(f.where)
        if t is not None and report.fails(f):
            t.status = f.kind
    return report


def _fmt(values: Any) -> str:
    return "/".join(f"{float(v):.3g}" for v in values)


def _tap_results(watch: Any, seen: dict[str, Any]) -> dict[str, TapResult]:
    taps: dict[str, TapResult] = {}
    for name, (s, dtypes) in seen.items():
        tap = watch.taps.get(name)
        if tap is None or tap.disabled or s.empty:
            continue
        exp = watch.expectation_for(name)
        common = dict(
            expectation=exp.convention if exp is not None else None,
            source=exp.source if exp is not None else None,
            origin=exp.origin if exp is not None else None,
            dtypes=tuple(s.dtypes) or dtypes,
            status="ok" if exp is not None else "no expectation",
        )
        if tap.latent is not None:
            taps[name] = TapResult(
                name=name, convention=exp.convention if exp is not None else "latent", confident=False,
                evidence=(f"latent tap (no pixel inference): per-channel mean {_fmt(s.mean)}, std {_fmt(s.std)}; "
                          "checked for scale, shift, colour cast and outliers"),
                channel_min=tuple(float(v) for v in s.range_min), channel_max=tuple(float(v) for v in s.range_max), **common,
            )
            continue
        inf = tap.inferred
        if inf is None:
            continue
        taps[name] = TapResult(
            name=name, convention=inf.name, confident=inf.confident, evidence=inf.evidence,
            channel_min=tuple(inf.channel_min), channel_max=tuple(inf.channel_max), **common,
        )
    return taps


def _unchecked(watch: Any, report: CheckReport, runner: _ModelRunner | None) -> list[str]:
    """Expected module taps the check could not check: not observed because the model could not be run or
    its hooks could not be placed, and not covered by the train loader's prediction either."""
    if runner is None:
        return []  # no model in the config: module taps are out of scope, as the report says
    predicted = "train" in watch.loader_expectations
    out = []
    for name, u in report.unobserved.items():
        if name.startswith("batch"):
            continue
        exp = watch.expectations.get(name)
        covered = predicted and name.endswith(":input") and exp is not None and exp.conv.kind == "pixel"
        if not covered and ("could not be run" in u["why"] or "TorchScript" in u["why"] or "cannot be placed" in u["why"]):
            out.append(name)
    return out


def _unobserved(watch: Any, report: CheckReport, runner: _ModelRunner | None,
                skipped_modules: list[str] | None = None) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    batch_taps = [n for n in report.taps if n.startswith("batch")]
    for name, exp in sorted(watch.expectations.items()):
        if name in report.taps or name.startswith("val/"):
            continue
        if name.startswith("batch"):
            why = "no image-like tensor at that path in the batches" + (f"; seen: {', '.join(batch_taps)}" if batch_taps else "")
        elif runner is None:
            why = "no model in the config, so its submodules cannot be observed"
        elif any(s.startswith(name.rsplit(":", 1)[0] + " ") or s.startswith(name.rsplit(":", 1)[0] + ":")
                 for s in skipped_modules or []):
            why = next(s for s in skipped_modules or [] if s.startswith(name.rsplit(":", 1)[0]))
        elif runner.used is None:
            why = "the model could not be run (see notes)"
        else:
            tap = watch.taps.get(name)
            why = "not image-like (see notes)" if tap is not None and tap.disabled else f"{runner.describe.split(' under')[0]} did not call this submodule"
        out[name] = {"expectation": exp.convention, "source": exp.source, "why": why}
    return out


def run_check(config_path: str | os.PathLike, batches: int = 8, progress: bool = True) -> CheckReport:
    """Read a check config (see the module docstring), build the objects and run :func:`check`.

    Raises :class:`~rangewatch.ConfigError` for a bad config and :class:`CheckError` when the datamodule fails.
    """
    import lightning.pytorch as pl
    import torch.nn as nn

    from .callback import RangeWatch

    _check_batches(batches)
    cfg = load_check_config(config_path)
    try:
        watch = RangeWatch(**cfg.options)
    except ConfigError as e:
        raise ConfigError(f"{cfg.path}: {cfg.options_key}: {_one_line(e)}") from None
    if cfg.seed is not None:
        from lightning.fabric.utilities.seed import seed_everything

        seed_everything(cfg.seed, verbose=False)
    dm = _instantiate(*cfg.data, "data", cfg.path, base=pl.LightningDataModule, what="a LightningDataModule")
    model = None
    if cfg.model is not None:
        model = _instantiate(*cfg.model, "model", cfg.path, base=nn.Module, what="a LightningModule (or torch.nn.Module)")
    try:
        return check(dm, model, watch, batches=batches, progress=progress, config=cfg.path)
    except ConfigError as e:
        msg = _one_line(e)
        raise ConfigError(msg if msg.startswith(cfg.path) else f"{cfg.path}: {cfg.options_key}: {msg}") from None


def main_check(args: Any) -> int:
    """The ``rangewatch check`` subcommand: ``args.config``, ``args.batches``, ``args.json``, ``args.no_progress``.

    Prints the report (or its JSON) on stdout; returns 0 when nothing is wrong, 1 when a value-range
    problem was found, 2 with a one-line message on stderr when the check could not run, and 2 after the
    report when an expected module tap could not be checked ("result: NOT CHECKED").
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)  # class_paths of the project the command runs in, as `python -m` would find them
    try:
        report = run_check(args.config, batches=getattr(args, "batches", 8), progress=not getattr(args, "no_progress", False))
    except (ConfigError, CheckError) as e:
        print(f"rangewatch check: error: {_one_line(e)}", file=sys.stderr)
        return 2
    try:
        print(report.to_json() if getattr(args, "json", False) else report.format(), flush=True)
    except BrokenPipeError:  # `rangewatch check ... | head`: the reader left; the exit code still counts
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if not report.ok:
        return 1
    return 2 if report.unchecked else 0  # what was asked could not be checked: not a pass
