"""Option validation and YAML loading for :class:`~rangewatch.RangeWatch`.

Errors name the key, the bad value and what is allowed. YAML is read with ``yaml.safe_load``
(no object construction from tags).
"""

from __future__ import annotations

import difflib
import os
import reprlib
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from .expect.conventions import get_convention, list_conventions

__all__ = ["ConfigError", "load_options", "read_yaml", "check_choice", "check_int", "check_float", "check_expect", "check_str_list",
           "check_trace_modules", "check_modules", "config_path", "ConfigExit", "exit_under_cli_parser"]

#: upper bounds of the size options (each allocates per tap, per channel or per traced call)
MAX_HIST_BINS = 4096
MAX_TRACE_HISTORY = 1024
MAX_CHECK_FIRST_N = 1_000_000
#: a config file is read only up to this size, and its loaded structure (aliases expanded) only up to this many values
MAX_CONFIG_BYTES = 4 << 20
MAX_CONFIG_VALUES = 100_000

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def _short(value: Any, limit: int = 80) -> str:
    """A bounded repr for error messages: at most ``limit`` characters, never expanding a huge or
    alias-shared structure (``reprlib`` stops at depth 3 and 6 items per container)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001  (a repr that raises: say what it is)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(ValueError):
    """A bad RangeWatch option: names the key, the value and what is allowed."""


class ConfigExit(SystemExit):
    """A :class:`ConfigError` met while a command-line parser (jsonargparse, as ``LightningCLI`` uses it) builds
    the object: it ends the command with the error's message alone, as the parser ends it for a value it
    rejects itself. ``error`` is the :class:`ConfigError`."""

    def __init__(self, error: ConfigError, owner: str) -> None:
        super().__init__(f"error: {owner}: {error}")
        self.error = error


def exit_under_cli_parser(error: ConfigError, owner: str) -> None:
    """Raise :class:`ConfigExit` for ``error`` when a jsonargparse parser is building ``owner`` (a class named in a
    ``LightningCLI`` config) and would exit on its own errors; return otherwise (the caller raises ``error``).

    jsonargparse tries every member of a ``Union`` (``trainer.callbacks`` is ``list[Callback] | Callback | None``)
    under ``except Exception`` and re-raises the failures as one ``ValueError`` chained to the first
    (``jsonargparse/_typehints.py``: ``adapt_typehints``, ``raise_union_unexpected_value``): two tracebacks, about
    90 lines, the message in the middle. A :class:`SystemExit` passes through. Under a parser made with
    ``exit_on_error=False`` (or with ``JSONARGPARSE_DEBUG`` set) the error goes on to jsonargparse as before."""
    if os.environ.get("JSONARGPARSE_DEBUG"):
        return
    under_parser, exits = False, True
    frame = sys._getframe(1)
    for _ in range(200):  # the error path only: a bounded walk up the stack
        if frame is None:
            break
        if str(frame.f_globals.get("__name__", "")).startswith("jsonargparse"):
            under_parser = True
            try:
                if getattr(frame.f_locals.get("self"), "exit_on_error", True) is False:
                    exits = False
            except Exception:  # noqa: BLE001  (an object whose attribute raises: not a parser)
                pass
        frame = frame.f_back
    if under_parser and exits:
        raise ConfigExit(error, owner) from None


def _where(key: str, origin: str) -> str:
    return f"{origin}: " if origin else ""


def check_choice(key: str, value: Any, allowed: tuple[str, ...], origin: str = "") -> str:
    if value not in allowed:
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {_short(value)} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


def check_int(key: str, value: Any, minimum: int = 0, origin: str = "", allow_none: bool = False,
              maximum: int | None = None) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {_short(value)} must be an integer >= {minimum}{upper}")
    return value


def check_float(key: str, value: Any, lo: float, hi: float, origin: str = "", lo_open: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or not lo <= float(value) <= hi or (lo_open and float(value) == lo):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {_short(value)} must be a number in {interval}")
    return float(value)


def check_bool(key: str, value: Any, origin: str = "") -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {_short(value)} must be true or false")
    return value


def check_str_list(key: str, value: Any, origin: str = "", allow_none: bool = True) -> list[str] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {_short(value)} must be a list of names")
    return list(value)


def check_modules(value: Any, origin: str = "") -> list[str]:
    """``modules=``: submodule names, each optionally with ``:input`` / ``:output`` (whether they exist is
    checked against the model at fit start)."""
    out = check_str_list("modules", value, origin) or []
    for m in out:
        if ":" in m and m.rsplit(":", 1)[1] not in ("input", "output"):
            raise ConfigError(f"{_where('modules', origin)}option 'modules' entry {_short(m)}: after ':' use 'input' or 'output' "
                              "(e.g. 'vae.encoder', 'vae.encoder:output')")
    return out


def config_path(path: Any) -> Path:
    """The path of a config file as a :class:`~pathlib.Path`; anything else (a number, None, bytes, a path with
    NUL) is a :class:`ConfigError`."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"config file path = {_short(path)} ({type(path).__name__}) must be a str or a pathlib.Path "
                          "naming a .yaml file")
    try:
        p = Path(path)
    except TypeError:  # an os.PathLike whose __fspath__ returns bytes
        raise ConfigError(f"config file path = {_short(path)} must be a str or a pathlib.Path naming a .yaml file") from None
    if "\x00" in str(p):
        raise ConfigError(f"config file path {_short(str(p))} contains a NUL character: not a file name")
    return p


def check_trace_modules(value: Any, origin: str = "") -> str | list[str] | None:
    """``None``, ``"all"`` or a non-empty list of module names / patterns (whether they exist is
    checked against the model at fit start)."""
    if value is None or value == "all":
        return value
    allowed = "allowed: 'all' (every leaf module) or a non-empty list of module names / patterns such as ['vae.decoder.*']"
    if isinstance(value, str):
        hint = "; did you mean 'all'?" if value.strip().lower() == "all" else ""
        if hint or not value:
            raise ConfigError(f"{_where('trace_modules', origin)}option 'trace_modules' = {_short(value)}{hint} ({allowed})")
        return [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{_where('trace_modules', origin)}option 'trace_modules' = {_short(value)} is not allowed; {allowed}")
    return list(value)


def check_expect(value: Any, origin: str = "") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{_where('expect', origin)}option 'expect' = {_short(value)} must map tap names to conventions, "
            "e.g. {'batch.lq': 'symmetric', 'vae.encoder': 'symmetric'}"
        )
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"{_where('expect', origin)}option 'expect' has a bad tap name {_short(k)}: use e.g. 'batch.image' or 'vae.encoder'")
        if ":" in k and k.rsplit(":", 1)[1] not in ("input", "output"):
            raise ConfigError(f"{_where('expect', origin)}option 'expect' key {_short(k)}: after ':' use 'input' or 'output'")
        try:
            get_convention(v)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"{_where('expect', origin)}option 'expect[{_short(k)}]' = {_short(v)} is not a known convention; "
                f"known: {', '.join(list_conventions())} (or register your own with rangewatch.register_convention)"
            ) from None
        out[k] = v if isinstance(v, str) else v.name
    return out


def load_options(path: str | Path, accepted: Sequence[str]) -> dict[str, Any]:
    """Read RangeWatch options from a YAML file.

    Accepts the options at top level, under a ``rangewatch:`` key, as a LightningCLI callback entry
    (``class_path``/``init_args``), or a LightningCLI config with ``trainer.callbacks``; ``accepted``: the
    option names (:data:`rangewatch.options.OPTIONS`).
    """
    p = config_path(path)
    data = read_yaml(p)
    data = extract_rangewatch_options(data, str(p))
    allowed = list(accepted)
    for k in data:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{p}: unknown option {_short(k)} (value {_short(data[k])}){hint} Allowed options: {', '.join(allowed)}")
    return data


def extract_rangewatch_options(data: Any, origin: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of RangeWatch options, got {type(data).__name__} {_short(data)}")
    if "rangewatch" in data:
        data = data["rangewatch"] or {}
    elif "trainer" in data and isinstance(data["trainer"], dict):
        cbs = data["trainer"].get("callbacks") or []
        if isinstance(cbs, dict):
            cbs = [cbs]
        if not isinstance(cbs, list):
            raise ConfigError(
                f"{origin}: 'trainer.callbacks' = {_short(cbs)} must be a list of callback entries "
                "(class_path: rangewatch.RangeWatch, init_args: {...})"
            )
        entries = [
            c for c in cbs
            if isinstance(c, dict) and str(c.get("class_path", "")).endswith("RangeWatch")
        ]
        if not entries:
            return {}
        data = entries[0].get("init_args") or {}
    elif "class_path" in data:
        data = data.get("init_args") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: RangeWatch options must be a mapping, got {type(data).__name__} {_short(data)}")
    return dict(data)


def read_yaml(path: str | Path) -> Any:
    """``yaml.safe_load`` of a config file, every failure a :class:`ConfigError` naming the file: missing,
    a directory, not UTF-8 text (a binary file), too large, not YAML, or a structure that aliases
    (``&anchor`` / ``*alias``) expand past :data:`MAX_CONFIG_VALUES` values (a "billion laughs" file;
    measured on the node graph before anything is built or walked, so in bounded memory)."""
    p = config_path(path)
    origin = str(p)
    try:
        if p.is_dir():
            raise ConfigError(f"{origin!r} is a directory, not a config file (give the path of a .yaml file)")
        with p.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {origin!r} does not exist") from None
    except OSError as e:
        raise ConfigError(f"config file {origin!r} cannot be read: {type(e).__name__}: {_short(str(e), 200)}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{origin}: config file is larger than {MAX_CONFIG_BYTES >> 20} MiB; a RangeWatch config is a few lines of YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{origin}: not a UTF-8 text file (byte {e.start} is {raw[e.start:e.start + 1]!r}): a YAML config is text") from None
    if "\x00" in text:
        raise ConfigError(f"{origin}: contains NUL bytes: a YAML config is text, not a binary file")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_expanded_size(node, origin)
        return yaml.safe_load(text)
    except ConfigError:
        raise
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML (safe loader): {_short(' '.join(str(e).split()), 300)}") from None
    except RecursionError:
        raise ConfigError(f"{origin}: YAML nested too deeply") from None


def _check_expanded_size(root: Any, origin: str) -> None:
    """Count the values of the document with every alias expanded (memoised over the node graph:
    linear time whatever the expansion), without building it."""
    if root is None:
        return
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    aliased = False
    while stack:
        node, done = stack.pop()
        k = id(node)
        if done:
            on_path.discard(k)
            total = 1
            for child in _children(node):
                total += size[id(child)]
            size[k] = min(total, MAX_CONFIG_VALUES + 1)
            continue
        if k in size:
            aliased = True
            continue
        if k in on_path:
            raise ConfigError(f"{origin}: a YAML alias refers to the structure that contains it (a recursive alias): not a config")
        on_path.add(k)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in size or id(child) in on_path:
                aliased = True
            stack.append((child, False))
    if size[id(root)] > MAX_CONFIG_VALUES:
        why = " through aliases (&anchor / *alias): a YAML alias bomb?" if aliased else ""
        raise ConfigError(f"{origin}: the YAML document expands to more than {MAX_CONFIG_VALUES} values{why} A RangeWatch config is small")


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    return []
