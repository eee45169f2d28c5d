"""The shape of the code, checked: data flows one way, so the modules import without circles; models are told
apart by the interface, never by ``hasattr``; model names are listed in the registry alone; and the ingestion
manifest is read by the catalog object alone."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("stforecast", "pipelines")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(path: Path, known: dict) -> set[str]:
    """Every project module ``path`` imports, at any depth (function-level imports make circles too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_import_circles():
    known = modules()
    graph = {m: imports_of(p, known) - {m} for m, p in known.items()}
    # a package's __init__ importing its own modules is not a circle between modules
    graph = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")} for m, deps in graph.items()}
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_models_are_not_told_apart_by_hasattr():
    offenders = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in modules().values()
                 for n in ast.walk(ast.parse(p.read_text()))
                 if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "hasattr"]
    assert offenders == []


def test_model_names_are_listed_in_the_registry_alone():
    from stforecast.model.registry import BASELINES

    registry = ROOT / "stforecast" / "model" / "registry.py"
    offenders = []
    for path in modules().values():
        if path == registry:
            continue
        tree = ast.parse(path.read_text())
        # a class naming itself (`name = "etas"`) is the one place a model's name belongs outside the list
        own_names = {id(n.value) for n in ast.walk(tree)
                     if isinstance(n, ast.Assign) and [getattr(t, "id", None) for t in n.targets] == ["name"]}
        offenders += [f"{path.relative_to(ROOT)}:{c.lineno} {c.value!r}" for c in ast.walk(tree)
                      if isinstance(c, ast.Constant) and c.value in BASELINES and id(c) not in own_names]
    assert sorted(set(offenders)) == []


def test_the_ingestion_manifest_is_read_by_the_catalog_object_alone():
    """`manifest.json` of an ingested catalog is written by the ingestion pipeline and read by
    stforecast/ingested.py; a batch job folder's own record is `forecast.json`."""
    allowed = {ROOT / "stforecast" / "ingested.py", ROOT / "pipelines" / "ingest.py"}
    offenders = []
    for path in modules().values():
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # a path (no spaces), not a sentence of help text that mentions the file
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and (node.value == "manifest.json" or node.value.endswith("/manifest.json")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
