"""Option validation and YAML loading for :class:`~rangewatch.RangeWatch`.

Errors name the key, the bad value and what is allowed. YAML is read with ``yaml.safe_load``
(no object construction from tags).
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Callable

import yaml

from .conventions import get_convention, list_conventions

__all__ = ["ConfigError", "load_options", "check_choice", "check_int", "check_float", "check_expect", "check_str_list"]


class ConfigError(ValueError):
    """A bad RangeWatch option: names the key, the value and what is allowed."""


def _where(key: str, origin: str) -> str:
    return f"{origin}: " if origin else ""


def check_choice(key: str, value: Any, allowed: tuple[str, ...], origin: str = "") -> str:
    if value not in allowed:
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


def check_int(key: str, value: Any, minimum: int = 0, origin: str = "", allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {value!r} must be an integer >= {minimum}")
    return value


def check_float(key: str, value: Any, lo: float, hi: float, origin: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {value!r} must be a number in [{lo}, {hi}]")
    return float(value)


def check_bool(key: str, value: Any, origin: str = "") -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {value!r} must be true or false")
    return value


def check_str_list(key: str, value: Any, origin: str = "", allow_none: bool = True) -> list[str] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{_where(key, origin)}option {key!r} = {value!r} must be a list of names")
    return list(value)


def check_expect(value: Any, origin: str = "") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{_where('expect', origin)}option 'expect' = {value!r} must map tap names to conventions, "
            "e.g. {'batch.lq': 'symmetric', 'vae.encoder': 'symmetric'}"
        )
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise ConfigError(f"{_where('expect', origin)}option 'expect' has a bad tap name {k!r}: use e.g. 'batch.image' or 'vae.encoder'")
        if ":" in k and k.rsplit(":", 1)[1] not in ("input", "output"):
            raise ConfigError(f"{_where('expect', origin)}option 'expect' key {k!r}: after ':' use 'input' or 'output'")
        try:
            get_convention(v)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"{_where('expect', origin)}option 'expect[{k!r}]' = {v!r} is not a known convention; "
                f"known: {', '.join(list_conventions())} (or register your own with rangewatch.register_convention)"
            ) from None
        out[k] = v if isinstance(v, str) else v.name
    return out


def load_options(path: str | Path, accepted: Callable) -> dict[str, Any]:
    """Read RangeWatch options from a YAML file.

    Accepts the options at top level, under a ``rangewatch:`` key, as a LightningCLI callback entry
    (``class_path``/``init_args``), or a LightningCLI config with ``trainer.callbacks``.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML (safe loader): {e}") from None
    data = extract_rangewatch_options(data, str(p))
    allowed = [n for n in inspect.signature(accepted).parameters if n != "self"]
    for k in data:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{p}: unknown option {k!r} (value {data[k]!r}){hint} Allowed options: {', '.join(allowed)}")
    return data


def extract_rangewatch_options(data: Any, origin: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of RangeWatch options, got {type(data).__name__}")
    if "rangewatch" in data:
        data = data["rangewatch"] or {}
    elif "trainer" in data and isinstance(data["trainer"], dict):
        entries = [
            c for c in data["trainer"].get("callbacks") or []
            if isinstance(c, dict) and str(c.get("class_path", "")).endswith("RangeWatch")
        ]
        if not entries:
            return {}
        data = entries[0].get("init_args") or {}
    elif "class_path" in data:
        data = data.get("init_args") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: RangeWatch options must be a mapping, got {type(data).__name__}")
    return dict(data)
