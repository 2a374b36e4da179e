"""rangewatch's console voice: short lines, wrapped where code stays whole, said once, pointing at the user's code.

* :func:`wrap` wraps text at about 150 characters, breaking only at spaces outside backtick code spans,
  brackets and quotes, and never beside an operator (``x * 2 - 1`` stays on one line), so a line copied
  from the console is code that still works.
* :func:`finding_text` is a finding as the console shows it: the headline (kind, where, step, seen vs
  expected), the fix and a pointer to the full evidence (``Finding.evidence``, the HTML report,
  TensorBoard's RANGEWATCH tab), every line under about 160 characters.
* :func:`info` says a line once: through the ``rangewatch`` logger when the program configured logging
  (Python ``logging.basicConfig(level=logging.INFO)``, as training scripts do), else on stderr, never
  both. :func:`warn` issues a ``UserWarning`` whose file and line are the user's (the first frame outside
  rangewatch, torch, Lightning, diffusers and accelerate), not rangewatch's.

>>> print(wrap("apply x * 2 - 1 (Normalize(mean=[0.5]*3, std=[0.5]*3)) before vae.encoder", width=30))
apply x * 2 - 1
    (Normalize(mean=[0.5]*3, std=[0.5]*3))
    before vae.encoder
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..findings.finding import Finding

__all__ = ["WIDTH", "wrap", "finding_text", "info", "warn", "user_stacklevel"]

#: the widest line rangewatch writes on its own (the continuation indent included)
WIDTH = 150

_OPERATORS = {"*", "/", "+", "-", "=", "==", "**", "//", "%", "->", "<", ">", "<=", ">=", "!=", "|", "&", "@"}
_OPEN, _CLOSE = "([{", ")]}"

_LOG = logging.getLogger("rangewatch")


def _words(text: str) -> list[str]:
    """``text`` cut at the spaces where a line may break (outside code, brackets and quotes)."""
    out: list[str] = []
    cur: list[str] = []
    depth, code, quote = 0, False, ""
    for ch in text:
        if ch == "`" and not quote:
            code = not code
        elif not code:
            if quote:
                if ch == quote:
                    quote = ""
            elif ch in "'\"" and depth > 0:  # quotes count inside brackets only (prose has apostrophes)
                quote = ch
            elif ch in _OPEN:
                depth += 1
            elif ch in _CLOSE and depth > 0:
                depth -= 1
        if ch == " " and not code and not quote and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    # glue words around an operator: `x * 2 - 1` is one unit
    glued: list[str] = []
    for w in out:
        if glued and (w in _OPERATORS or glued[-1].rsplit(" ", 1)[-1] in _OPERATORS):
            glued[-1] += " " + w
        else:
            glued.append(w)
    return glued


def wrap(text: str, width: int = WIDTH, indent: str = "    ") -> str:
    """``text`` in lines of at most ``width`` characters (continuations indented by ``indent``), broken only
    where no code is cut; a code unit longer than a line stays whole on its own line. Newlines in ``text``
    are kept."""
    lines: list[str] = []
    for para in text.split("\n"):
        lead = para[: len(para) - len(para.lstrip(" "))]
        cur = ""
        for w in _words(para.lstrip(" ")):
            if not w:
                continue
            if cur and len(cur) + 1 + len(w) > width:
                lines.append(cur)
                cur = indent + w
            else:
                cur = f"{cur} {w}" if cur else lead + w
        lines.append(cur)
    return "\n".join(lines)


def _first_sentence(text: str, limit: int = 140) -> str:
    """The evidence's first sentence when it is short; else nothing (the full text is one pointer away)."""
    head = text.split("; ")[0].split(". ")[0].strip().rstrip(".")
    return head if 0 < len(head) <= limit else ""


def finding_text(f: "Finding") -> str:
    """``f`` as the console shows it: ``rangewatch: [kind] where at step N: saw ...; expected ...``, then
    ``fix: ...`` and where the full evidence is; each line under about 160 characters."""
    at = f" at step {f.step}" if f.step is not None else ""
    exp = f"; expected {f.expected}" if f.expected else ""
    parts = [wrap(f"rangewatch: [{f.kind}] {f.where}{at}: saw {f.observed}{exp}")]
    ev = _first_sentence(f.evidence)
    if ev:
        parts.append(wrap(f"  evidence: {ev} ...", indent="      "))
    if f.fix:
        parts.append(wrap(f"  fix: {f.fix}", indent="      "))
    parts.append("  full evidence: Finding.evidence, `rangewatch report LOGDIR`, TensorBoard's RANGEWATCH tab")
    return "\n".join(parts)


# ------------------------------------------------------------------ saying it
def info(text: str) -> None:
    """Say ``text`` once: to the ``rangewatch`` logger when logging is configured (a handler on it or on
    an ancestor: the program's own ``logging.basicConfig``), else to stderr."""
    if _LOG.level == logging.NOTSET:
        _LOG.setLevel(logging.INFO)
    if _LOG.hasHandlers():
        _LOG.info(text)
    else:
        print(text, file=sys.stderr, flush=True)


def _inside() -> tuple[str, ...]:
    """Folders whose frames are not the user's code: rangewatch and the frameworks that call it."""
    dirs = []
    for name in ("rangewatch", "torch", "lightning", "pytorch_lightning", "lightning_fabric", "diffusers", "accelerate"):
        m = sys.modules.get(name)
        f = getattr(m, "__file__", None) if m is not None else None
        if f:
            dirs.append(os.path.dirname(os.path.abspath(f)) + os.sep)
    return tuple(dirs)


def user_stacklevel(skip: int = 1) -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made ``skip`` frames below the caller of this function,
    so that the warning names the first frame outside rangewatch and the frameworks calling it."""
    inside = _inside()
    frame = sys._getframe(skip + 1)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2


def warn(text: str, category: type[Warning] = UserWarning) -> None:
    """Issue ``text`` as a warning pointing at the user's code (see :func:`user_stacklevel`)."""
    warnings.warn(text, category, stacklevel=user_stacklevel(1))
