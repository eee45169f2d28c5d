"""The one layout and the one loader of every settings file.

Settings files (every TOML under ``data/``, and any copy a user passes with ``--config``; YAML alike) share one
layout:

1. No key at the top level: every setting sits in a table named for what it configures (:data:`TABLES`):
   ``[settings]`` (where things live), ``[catalogs.NAME]`` (one catalog: its ingestion keys, and
   ``[catalogs.NAME.train]`` / ``[catalogs.NAME.train.model]`` for training on it), ``[train]`` / ``[train.model]``
   (TrainConfig / ModelConfig fields), ``[base]``, ``[benchmark]``, ``[ablations]``, ``[quick]``, ``[batch]`` and
   ``[[jobs]]``. Each reader names the tables it takes; any other table, or a key at the top level, is a one-line
   ValueError naming the file and where the keys belong (the old layouts' ``[catalog]``, ``[[job]]`` and ``[model]``
   get the table's new name).
2. One merge rule, :func:`deep_merge`, wherever one table is laid over another (``[catalogs.NAME.train]`` over
   ``[train]``, ``[quick]`` over the file, a file's ``[train]`` over its ``[base]``, ingest flags over a catalog):
   tables merge key by key, recursively; any other value replaces, and so does an empty table ``{}`` — the way to
   drop an inherited table (``model = {}``: the preset's model, not ``[train.model]``'s).
3. A training file is read from its ``[train]`` table only (:func:`train_settings`); ``[base]`` (``file``, optional
   ``catalog``) starts it from another file's ``[train]`` merged with that file's ``[catalogs.CATALOG.train]``, so
   ``data/train_demo.toml`` is the benchmark's Japan settings plus its own few differences.
4. ``[quick]`` (benchmark ``--quick``) holds the same tables again (``[quick.benchmark]``, ``[quick.train]``,
   ``[quick.ablations]``), merged over the file's.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path


# ------------------------------------------------------------------------------- the one settings loader
#: the tables a settings file may hold at its top level, each named for what it configures (the module docstring)
TABLES = {
    "settings": "where things live: data_root, processed_dir, cache_dir",
    "catalogs": "[catalogs.NAME]: one catalog (IngestConfig fields; [catalogs.NAME.train]: training on it)",
    "train": "TrainConfig fields; [train.model]: ModelConfig fields",
    "base": "the file (and catalog) whose training settings this file's [train] is merged over",
    "benchmark": "`stforecast benchmark`: catalogs, seeds, sizes of the scoring",
    "ablations": "the benchmark's conditioning variants, scored on validation",
    "quick": "what `stforecast benchmark --quick` merges over the file ([quick.benchmark], [quick.train], ...)",
    "batch": "`stforecast batch`: its output root",
    "jobs": "[[jobs]]: one scheduled forecast each",
}
#: tables of the old layouts → their name now
RENAMED_TABLES = {"catalog": "catalogs", "job": "jobs", "model": "train.model"}


def check_layout(doc: dict, where: str, tables=None, home: str | None = None) -> dict:
    """``doc`` (a parsed settings file, or one of its tables holding tables, such as ``[quick]``) checked against
    the one layout: no key outside a table, and only tables of :data:`TABLES` (or of ``tables``, the reader's own).
    ``home``: the table a top-level key belongs in, for the message. Returns ``doc``."""
    def is_table(v) -> bool:  # a table, or an array of tables ([[jobs]])
        return isinstance(v, dict) or (isinstance(v, list) and bool(v) and all(isinstance(t, dict) for t in v))

    loose = sorted(k for k, v in doc.items() if not is_table(v))
    if loose:
        # a file that has its reader's table already keeps these keys for another reader (an old benchmark.toml read
        # as a training file): say where they belong in general
        to = f"under [{home}]" if home and home not in doc else "into the table they configure"
        raise ValueError(f"{where}: setting(s) {loose} outside any table; every setting belongs in a table: move them "
                         f"{to} (see 'Settings files' in README.md)")
    allowed = list(tables) if tables is not None else list(TABLES)
    for key in doc:
        if key in RENAMED_TABLES:
            old, new = (f"[[{key}]]", f"[[{RENAMED_TABLES[key]}]]") if isinstance(doc[key], list) else \
                (f"[{key}...]", f"[{RENAMED_TABLES[key]}...]")
            raise ValueError(f"{where}: {old} is the old layout: rename it {new} (see 'Settings files' in README.md)")
        if key not in allowed:
            raise ValueError(f"{where}: unknown table [{key}]; this file may hold " +
                             ", ".join(f"[{t}]" for t in allowed))
    return doc


def read_settings_file(path: str | os.PathLike, tables=None, home: str | None = None) -> dict:
    """A TOML (or ``.yaml``/``.yml``) settings file as a dict, checked against the one layout (:func:`check_layout`:
    ``tables`` the reader takes, ``home`` the table a stray top-level key belongs in). A file that does not parse
    is an error naming the file (and the parser's line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no settings file {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - TOML and YAML parsers raise their own types
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "TOML"
        raise ValueError(f"{path}: not valid {kind}: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a settings file holds tables, not {type(values).__name__}")
    return check_layout(values, str(path), tables, home)


_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", dict: "a table",
               list: "a list", tuple: "a list"}


def typed_fields(cls, values: dict, where: str, prefix: str = "") -> dict:
    """``values`` checked against the fields of dataclass ``cls``: an unknown key, or a value of the wrong type, is
    a ValueError naming the key and ``where`` (the file, or --set). Ints are accepted for floats, lists for
    tuples; nested dataclass fields are built from their tables. Returns the keyword arguments for ``cls``."""
    import typing

    if not isinstance(values, dict):
        raise ValueError(f"{where}: {prefix.rstrip('.') or 'settings'} must be a table, not {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {[prefix + k for k in unknown]}; allowed: {sorted(known)}")
    out = {}
    for key, value in values.items():
        hint = hints[key]
        options = [a for a in typing.get_args(hint) if a is not type(None)] if type(None) in typing.get_args(hint) \
            else [hint]
        if value is None and type(None) in typing.get_args(hint):
            out[key] = None
            continue
        if value is None and dataclasses.is_dataclass(hint):  # an empty nested table: its defaults
            out[key] = hint()
            continue
        done = False
        for kind in options:
            base = typing.get_origin(kind) or kind
            if dataclasses.is_dataclass(base) and isinstance(value, dict):
                out[key], done = base(**typed_fields(base, value, where, f"{prefix}{key}.")), True
            elif base is float and isinstance(value, int) and not isinstance(value, bool):
                out[key], done = float(value), True
            elif base is tuple and isinstance(value, (list, tuple)):
                out[key], done = tuple(value), True
            elif base is typing.Any or (isinstance(base, type) and isinstance(value, base)
                                         and not (base in (int, float) and isinstance(value, bool))):
                out[key], done = value, True
            if done:
                break
        if not done:
            wanted = " or ".join(_TYPE_WORDS.get(typing.get_origin(k) or k, str(k)) for k in options)
            raise ValueError(f"{where}: setting {prefix}{key} must be {wanted}, not {value!r}")
    return out


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` laid over ``base``, the one merge rule of every settings table: tables merge key by key,
    recursively; any other value replaces the one below, and so does an empty table ``{}`` (the way to drop an
    inherited table: ``model = {}``). The result shares no mutable value with either input."""
    import copy

    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) \
            else copy.deepcopy(v)
    return out


@dataclass
class BaseTable:
    """``[base]`` of a training file: start from ``file``'s ``[train]`` (a path relative to this file), merged with
    its ``[catalogs.CATALOG.train]`` when ``catalog`` is given."""

    file: str
    catalog: str | None = None


def train_settings(path: str | os.PathLike, catalog: str | None = None, _seen: tuple = ()) -> dict:
    """The training settings (TrainConfig fields, ``model`` holding ModelConfig fields) of a settings file: what its
    ``[base]`` names, then its ``[train]``, then (``catalog``) its ``[catalogs.CATALOG.train]``, merged by
    :func:`deep_merge`. A file with neither ``[train]`` nor ``[base]`` is an error (it holds no training settings)."""
    path = Path(path)
    doc = read_settings_file(path, home="train")
    if path.resolve() in _seen:
        raise ValueError(f"{path}: [base] leads back to this file")
    if "train" not in doc and "base" not in doc:
        raise ValueError(f"{path}: no [train] table: training settings are TrainConfig fields under [train] and "
                         "ModelConfig fields under [train.model]")
    values: dict = {}
    if "base" in doc:
        if "file" not in doc["base"]:
            raise ValueError(f"{path} [base]: missing `file` (the settings file this one's [train] is merged over)")
        b = BaseTable(**typed_fields(BaseTable, doc["base"], f"{path} [base]"))
        values = train_settings(path.parent / b.file, b.catalog, (*_seen, path.resolve()))
    values = deep_merge(values, doc.get("train", {}))
    if catalog is not None:
        values = deep_merge(values, doc.get("catalogs", {}).get(catalog, {}).get("train", {}))
    return values


def parse_overrides(items: list[str], example: str = "key=value") -> dict:
    """``--set`` overrides (``["lr=3e-4", "model.d_model=32"]``) as a nested dict; each value is read as a TOML
    value (a number, true/false, a quoted string, a list), else kept as a bare string. Every command that takes
    settings accepts them the same way; the settings' own checks then judge the keys and types."""
    import tomllib

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} must look like key=value, e.g. {example}")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part} is set to a value above; it cannot also hold {leaf}")
        try:
            node[leaf] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            node[leaf] = raw.strip()  # a bare string
    return out
