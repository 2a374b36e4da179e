"""The import rules of the package layout (docs/ARCHITECTURE.md), read from the source with ``ast``:
every ``import`` and ``from ... import`` statement, function-local ones included, relative ones resolved,
and ``from rangewatch import name`` followed to the module ``rangewatch._EXPORTS`` names for it.

- ``checks/`` never imports ``engine/`` or ``sinks/``: a check returns findings, it does not write.
- Nothing below the engine (taps, stats, expect, checks, findings, sinks, previews, integrations, compat)
  imports ``rangewatch.engine`` or a front end (callback, loop, preflight, pipeline, cli): the engine
  drives them, never the other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rangewatch

PACKAGE = Path(rangewatch.__file__).resolve().parent
BELOW_ENGINE = ("taps", "stats", "expect", "checks", "findings", "sinks", "previews", "integrations", "compat")
ABOVE = ("rangewatch.engine", "rangewatch.callback", "rangewatch.loop", "rangewatch.preflight", "rangewatch.pipeline",
         "rangewatch.cli")
NOT_IN_CHECKS = ("rangewatch.engine", "rangewatch.sinks")

#: (importing file, imported module) pairs that break a rule today and wait for a change another piece of #27
#: makes; each says what remains. Empty: no rule is broken. (An entry that no longer occurs fails the test,
#: so that the list only shrinks.)
ALLOWED_FOR_NOW: dict[tuple[str, str], str] = {}


def _module_name(path: Path, package: Path) -> str:
    parts = ["rangewatch", *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in ``path`` (a file of the package at ``root``),
    at any depth."""
    mod = _module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                if target == "rangewatch" and a.name in rangewatch._EXPORTS:  # the lazy public names
                    out.append((node.lineno, f"rangewatch.{rangewatch._EXPORTS[a.name]}"))
                elif _is_module(root.parent / Path(*f"{target}.{a.name}".split("."))):
                    out.append((node.lineno, f"{target}.{a.name}"))  # a submodule: from ..engine import watch
                else:
                    out.append((node.lineno, target))
    return out


def _is_module(path: Path) -> bool:
    return path.with_suffix(".py").exists() or path.is_dir()


def _graph() -> dict[str, list[tuple[int, str]]]:
    return {str(p.relative_to(PACKAGE.parent)): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _within(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def _violations(graph: dict[str, list[tuple[int, str]]]) -> dict[tuple[str, str], str]:
    found = {}
    for path, imports in graph.items():
        folder = Path(path).parts[1]
        for line, target in imports:
            if folder == "checks" and _within(target, NOT_IN_CHECKS):
                found[(path, target)] = f"{path}:{line}: checks/ imports {target}"
            elif folder in BELOW_ENGINE and _within(target, ABOVE):
                found[(path, target)] = f"{path}:{line}: {folder}/ (below the engine) imports {target}"
    return found


def test_the_scan_sees_every_kind_of_import(tmp_path):
    """The rules below can fail: the scan finds module-level, function-local, relative, submodule and lazy
    public-name imports, and the rules flag them (a made-up package laid out as rangewatch is)."""
    root = tmp_path / "rangewatch"
    for folder in ("checks", "engine", "sinks", "stats"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "engine" / "watch.py").write_text("")
    (root / "stats" / "native.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "loop.py").write_text("")
    made_up = root / "checks" / "made_up.py"
    made_up.write_text("import math\nfrom ..stats import native\nfrom ..engine import watch\n\n\ndef f():\n"
                       "    from ..sinks.loggers import write_image\n    from rangewatch import RangeWatch\n"
                       "    from .. import __version__\n")
    got = _imports(made_up, root)
    assert got == [(1, "math"), (2, "rangewatch.stats.native"), (3, "rangewatch.engine.watch"),
                   (7, "rangewatch.sinks.loggers"), (8, f"rangewatch.{rangewatch._EXPORTS['RangeWatch']}"), (9, "rangewatch")]
    stats = [(1, "rangewatch.loop"), (2, "rangewatch.checks.rules"), (3, "rangewatch.engineering")]
    assert set(_violations({"rangewatch/checks/made_up.py": got, "rangewatch/stats/made_up.py": stats})) == {
        ("rangewatch/checks/made_up.py", "rangewatch.engine.watch"),
        ("rangewatch/checks/made_up.py", "rangewatch.sinks.loggers"),
        ("rangewatch/checks/made_up.py", f"rangewatch.{rangewatch._EXPORTS['RangeWatch']}"),
        ("rangewatch/stats/made_up.py", "rangewatch.loop")}
    # and the real package is read: its engine imports findings/, its front end the engine
    graph = _graph()
    assert any(t.startswith("rangewatch.findings") for _, t in graph["rangewatch/engine/watch.py"])
    assert any(t.startswith("rangewatch.engine") for _, t in graph["rangewatch/callback.py"])


def test_checks_never_import_the_engine_or_sinks_and_nothing_below_the_engine_imports_it():
    found = _violations(_graph())
    new = {k: v for k, v in found.items() if k not in ALLOWED_FOR_NOW}
    assert not new, "import rules broken (docs/ARCHITECTURE.md):\n" + "\n".join(sorted(new.values()))
    gone = set(ALLOWED_FOR_NOW) - set(found)
    assert not gone, f"fixed: take these out of ALLOWED_FOR_NOW: {sorted(gone)}"


# ---------------------------------------------------------------------------------------------- one write path
#: the calls that write to a logger: TensorBoard's ``SummaryWriter`` (and its file writer), Lightning's loggers, W&B's
#: and MLflow's clients
WRITER_CALLS = frozenset({
    "add_scalar", "add_scalars", "add_image", "add_images", "add_text", "add_histogram", "add_histogram_raw",
    "add_figure", "add_video", "add_custom_scalars", "add_summary", "log_metrics", "log_image", "log_table",
    "log_dict", "log_text", "log_artifact", "log_hyperparams"})
#: what a rangewatch tag starts with (its two groups; sinks/tags.py)
TAG_TEXT = ("rangewatch/", "rangewatch_channels")


def _writes_and_tags(path: Path) -> tuple[list[str], list[str]]:
    """(writer calls, tag texts) in ``path``: every call of a :data:`WRITER_CALLS` method, and every string (f-string
    parts included, docstrings not) that holds a rangewatch tag's group."""
    tree = ast.parse(path.read_text(), str(path))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    calls, texts = [], []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in WRITER_CALLS:
            calls.append(f"{path.name}:{n.lineno}: .{n.func.attr}(...)")
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs and any(t in n.value for t in TAG_TEXT):
            texts.append(f"{path.name}:{n.lineno}: {n.value[:60]!r}")
    return calls, texts


def test_the_scan_sees_writer_calls_and_tag_texts(tmp_path):
    made_up = tmp_path / "made_up.py"
    made_up.write_text('"""Docs may name rangewatch/findings."""\n\n\ndef f(writer, lg, step, name):\n'
                       '    writer.add_image(f"rangewatch/{name}/latent_preview", None, step)\n'
                       '    lg.log_metrics({"rangewatch_channels/x/min/c0": 0.0}, step=step)\n    print("rangewatch: fine")\n')
    calls, texts = _writes_and_tags(made_up)
    assert calls == ["made_up.py:5: .add_image(...)", "made_up.py:6: .log_metrics(...)"]
    assert texts == ["made_up.py:5: 'rangewatch/'", "made_up.py:6: 'rangewatch_channels/x/min/c0'"]


def test_only_sinks_write_and_only_the_tag_layout_spells_a_tag():
    """One write path: no module outside ``sinks/`` calls a writer, and no module but ``sinks/tags.py`` spells a tag
    (the report and the TensorBoard plugin read back what the writers write, from the same builders)."""
    calls, texts = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        c, t = _writes_and_tags(path)
        calls += [] if rel.startswith("sinks/") else [f"{rel}: {x}" for x in c]
        texts += [] if rel == "sinks/tags.py" else [f"{rel}: {x}" for x in t]
    assert not calls, "writer calls outside rangewatch/sinks/ (write through a LoggerSink):\n" + "\n".join(calls)
    assert not texts, "tags spelled outside rangewatch/sinks/tags.py (build them there):\n" + "\n".join(texts)


def _cycles(graph: dict[str, list[tuple[int, str]]]) -> list[set[str]]:
    """The import circles among the package's modules (strongly connected groups of two or more), every import
    statement counted (``TYPE_CHECKING`` and function-local ones too)."""
    mods = {_module_name(PACKAGE.parent / p, PACKAGE): {t for _, t in imps} for p, imps in graph.items()}
    edges = {m: {t for t in ts if t in mods and t != m} for m, ts in mods.items()}
    seen: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        seen[v] = low[v] = len(seen)
        stack.append(v)
        for w in edges[v]:
            if w not in seen:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], seen[w])
        if low[v] == seen[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(group)

    for v in sorted(edges):
        if v not in seen:
            visit(v)
    return out


def test_the_pipeline_front_end_is_in_no_import_circle():
    """pipeline/checks.py reads the per-call record and the watch's setup from pipeline/call.py, never pipeline/watch.py."""
    made_up = {"rangewatch/a.py": [(1, "rangewatch.b")], "rangewatch/b.py": [(1, "rangewatch.a")], "rangewatch/c.py": [(1, "rangewatch.a")]}
    assert _cycles(made_up) == [{"rangewatch.a", "rangewatch.b"}]  # the scan finds a circle
    circles = [c for c in _cycles(_graph()) if any(m.startswith("rangewatch.pipeline") for m in c)]
    assert not circles, circles
