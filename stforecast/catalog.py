"""The event-catalog contract shared by every source.

An *event table* is a :class:`pandas.DataFrame` with one row per event:

=============  =====================================================================================
column         meaning
=============  =====================================================================================
``event_id``   stable string id: the source's own id, or ``<source>:<file>:<row>`` when it has none
``time``       ``datetime64[ns, UTC]`` for calendar catalogs, or ``float64`` seconds for lab recordings
``x``, ``y``   ``float64`` coordinates in the catalog's declared CRS (lon/lat for EPSG:4326)
``magnitude``  optional ``float64`` mark
``category``   optional string mark (crime type, location class)
``unit``       optional string mark (neural unit id)
``source``     the catalog name
=============  =====================================================================================

plus lineage columns that let every later problem name its origin: ``_file`` (file name) and ``_row``
(1-based data row in that file; for text files the file line is ``_row + 1`` because of the header).

Rows that cannot be used are never silently dropped: they become *rejects*, a table with the columns of
:data:`REJECT_COLUMNS`, each naming file, row, field, the offending value and a reason. ``kind`` separates
``invalid`` input (the pipeline fails on it unless quarantining) from rows removed on purpose by cleaning
(``duplicate``) or configured filters (``filtered``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

MARK_COLUMNS = ("magnitude", "category", "unit")
EVENT_COLUMNS = ("event_id", "time", "x", "y", *MARK_COLUMNS, "source")
REJECT_COLUMNS = ("file", "row", "line", "field", "value", "reason", "kind")

GEOGRAPHIC_CRS = "EPSG:4326"
SECONDS_PER = {"seconds": 1.0, "s": 1.0, "minutes": 60.0, "hours": 3600.0, "h": 3600.0, "days": 86400.0, "d": 86400.0}


@dataclass(frozen=True)
class Problem:
    """One bad value: where it is and what is wrong with it. ``row`` is the 1-based data row."""

    file: str
    row: int | None
    field: str
    value: object
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f", line {self.line}"
        if self.row is not None:
            where += f" (row {self.row})"
        value = "" if self.value is None or (isinstance(self.value, float) and np.isnan(self.value)) else f" (value {self.value!r})"
        return f"{where}, field '{self.field}': {self.reason}{value}"


class CatalogError(ValueError):
    """Bad input. ``str(error)`` names file, row and field of (the first few) problems."""

    def __init__(self, message: str, problems: Sequence[Problem] = (), total: int | None = None):
        self.problems = list(problems)
        self.total = total if total is not None else len(self.problems)
        if self.total == 1 and len(self.problems) == 1:  # one problem: one line (the CLI prints one line per error)
            super().__init__(f"{message} {self.problems[0]}")
            return
        lines = [message]
        lines += [f"  - {p}" for p in self.problems[:20]]
        if self.total > 20:
            lines.append(f"  ... and {self.total - 20} more")
        super().__init__("\n".join(lines))


def empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("row", "line") else "object") for c in REJECT_COLUMNS})


def shorten(text: str, limit: int = 200) -> str:
    """A value as a reject keeps it: at most ``limit`` characters (a runaway field must not fill the message and
    the quarantine file), with its length said."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def make_rejects(
    frame: pd.DataFrame, mask: np.ndarray | pd.Series, field: str, values: Iterable, reason: str,
    kind: str = "invalid", line_offset: int | None = 1,
) -> pd.DataFrame:
    """Rejects for the rows of ``frame`` (which carries lineage columns) selected by ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    rows = frame["_row"].to_numpy()[mask].astype("int64")
    vals = np.asarray(list(values) if not isinstance(values, (pd.Series, np.ndarray)) else values, dtype=object)
    if len(vals) == len(mask):
        vals = vals[mask]
    out = pd.DataFrame({
        "file": frame["_file"].to_numpy()[mask].astype(object),
        "row": rows,
        "line": rows + line_offset if line_offset is not None else np.full(len(rows), -1, dtype="int64"),
        "field": field,
        "value": [None if v is None else shorten(str(v)) for v in vals],
        "reason": reason,
        "kind": kind,
    })
    return out


def problems_from_rejects(rejects: pd.DataFrame, limit: int = 20) -> list[Problem]:
    out = []
    for r in rejects.head(limit).itertuples(index=False):
        line = None if r.line is None or int(r.line) < 0 else int(r.line)
        out.append(Problem(file=r.file, row=int(r.row), field=r.field, value=r.value, reason=r.reason, line=line))
    return out


def raise_for_invalid(rejects: pd.DataFrame, hint: str = "") -> None:
    """Fail with a message naming file, row and field when any reject is of kind ``invalid``."""
    bad = rejects[rejects["kind"] == "invalid"]
    if len(bad):
        bad = bad.sort_values(["file", "row"], kind="stable")
        rows = len(bad[["file", "row"]].drop_duplicates())
        msg = (f"{rows} invalid row{'s' if rows > 1 else ''}"
               + (f" ({len(bad)} problems)" if len(bad) > rows else "") + f" in the input{hint}:")
        raise CatalogError(msg, problems_from_rejects(bad), total=len(bad))


def check_columns(file: str, available: Sequence[str], required: dict[str, str]) -> None:
    """``required`` maps a role ("time", "x", ...) to the column name that should hold it."""
    missing = [(role, col) for role, col in required.items() if col not in available]
    if missing:
        names = ", ".join(f"'{col}' (for {role})" for role, col in missing)
        raise CatalogError(
            f"{file}: missing column(s) {names}; the file has columns {list(available)}. "
            "Map them with --time-col/--x-col/--y-col/--magnitude-col/--category-col/--unit-col/--id-col."
        )
