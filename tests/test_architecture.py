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
    from stforecast.registry import BASELINES

    registry = ROOT / "stforecast" / "registry.py"
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
    """`manifest.json` of an ingested catalog is written by the ingestion pipeline (from one
    :class:`pipelines.ingest.manifest.Manifest`, whose file name is its ``MANIFEST``) and read by
    stforecast/ingested.py; a batch job folder's own record is `forecast.json`."""
    allowed = {ROOT / "stforecast" / "ingested.py", ROOT / "pipelines" / "ingest" / "manifest.py"}
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


def test_the_manifest_is_looked_up_in_the_catalog_object_alone():
    """Every other module asks an :class:`IngestedCatalog` (its ``input_hash``, ``units``, ``normalisation``,
    ``identity``...), never the raw manifest dict."""
    allowed = {ROOT / "stforecast" / "ingested.py"}
    offenders = []
    for path in modules().values():
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript):
                value = node.value
                name = value.id if isinstance(value, ast.Name) else getattr(value, "attr", None)
                if name == "manifest":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_models_import_nothing_from_the_baselines():
    """The neural model and what it shares (base, marks, simulator) stand on their own; the baselines are siblings
    that import from them, never the other way (the registry, outside the package, names both)."""
    known = modules()
    offenders = sorted(f"{name} -> {dep}" for name, path in known.items() if name.startswith("stforecast.models")
                       for dep in imports_of(path, known) if dep.startswith("stforecast.baselines"))
    assert offenders == []


def test_one_lockstep_simulator():
    """The step-by-step catalog simulator is written once (stforecast.models.simulate.lockstep); the generic and
    DSTPP's simulations only give it their stepper. ETAS's branching process is the one other way to simulate.
    Any other ``simulate_catalogs`` may only check its inputs and hand over to ``super()`` (no loop of its own)."""
    loops, implementations, delegating = [], {}, set()
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in ("simulate_catalogs", "lockstep"):
                calls = {getattr(c.func, "id", getattr(c.func, "attr", "")) for c in ast.walk(node)
                         if isinstance(c, ast.Call)}
                implementations[f"{name}.{node.name}"] = calls
                supers = [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                          and c.func.attr == "simulate_catalogs" and isinstance(c.func.value, ast.Call)
                          and getattr(c.func.value.func, "id", "") == "super"]
                if supers and not any(isinstance(n, (ast.For, ast.While)) for n in ast.walk(node)):
                    delegating.add(f"{name}.{node.name}")
            if isinstance(node, ast.FunctionDef) and node.name == "lockstep":
                loops.append(name)
    assert loops == ["stforecast.models.simulate"]
    assert "lockstep" in implementations["stforecast.models.base.simulate_catalogs"]
    assert "lockstep" in implementations["stforecast.models.dstpp.simulation.simulate_catalogs"]
    others = {k for k in implementations if k.endswith(".simulate_catalogs")} - {
        "stforecast.models.base.simulate_catalogs", "stforecast.models.dstpp.simulation.simulate_catalogs",
        "stforecast.baselines.etas.simulate_catalogs"} - delegating
    assert others == set()
    assert "stforecast.models.ensemble.simulate_catalogs" in delegating  # a check of its members, then the generic


def test_one_gutenberg_richter_sampler():
    """Magnitudes are drawn from the Gutenberg-Richter law in one function (stforecast.models.marks), with one
    behaviour (truncated at M_MAX); no other module inverts its CDF or draws exponential magnitudes."""
    offenders = []
    for name, path in modules().items():
        if name == "stforecast.models.marks":
            continue
        text = path.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            if "log(10)" in line and ("exponential(" in line or "log1p(" in line):
                offenders.append(f"{name}:{i}")
        offenders += [f"{name}: defines {n.name}" for n in ast.walk(ast.parse(text))
                      if isinstance(n, ast.FunctionDef) and "gutenberg" in n.name.lower()]
    assert offenders == []


#: library modules allowed over 400 lines, and why (each is one thing that does not split without scattering it)
LONG_MODULES = {
    "stforecast.io.tables": "one table reader: chunking, vectorised line checks, parsing and validation of a row",
    "stforecast.io.spikes": "one recording reader: MatClust clusters, the Trodes position track, their alignment",
    "stforecast.io.remote": "one downloader: HTTP with retries and resumes, paged FDSN and Socrata queries",
    "stforecast.csep": "pyCSEP's catalog forecasts: the file writer, the day's simulation, the four tests, plots",
    "stforecast.baselines.etas": "the ETAS model and its maximum-likelihood fit over three kernel variants",
}


def test_no_library_module_is_longer_than_a_reader_can_hold():
    long = {name: len(path.read_text().splitlines()) for name, path in modules().items()
            if name.startswith("stforecast") and len(path.read_text().splitlines()) > 400}
    assert sorted(set(long) - set(LONG_MODULES)) == [], long


def test_the_model_configuration_holds_hyperparameters_alone():
    """Every statistic fitted on the train split lives in the scaler (its buffers and its ``Statistics``), none in
    ``ModelConfig``: the configuration says how to build a model, the checkpoint's state dict what was fitted."""
    import dataclasses

    from stforecast.models.dstpp import ModelConfig, Scaler, Statistics

    fitted = {f.name for f in dataclasses.fields(Statistics)} | {name for name, _ in Scaler().named_buffers()}
    assert {"mark_center", "mark_scale", "mark_mc", "mark_b", "parent_c"} <= fitted
    assert fitted & {f.name for f in dataclasses.fields(ModelConfig)} == set()
