"""What a person reads when something fails: one line (what is wrong, where, what to do), never a traceback."""

from __future__ import annotations

#: errors whose message is written for a person (bad input, missing files, refused settings)
EXPECTED = (ValueError, KeyError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def error_line(e: BaseException) -> str:
    """The message of an expected error (a CatalogError keeps its list of bad rows, one per line), or the type and
    first line of an unexpected one with how to see more."""
    from stforecast.catalog import CatalogError
    from stforecast.io.atomic import is_no_space

    if isinstance(e, CatalogError):
        return str(e)
    if is_no_space(e):  # NoSpaceLeft says it already; a bare ENOSPC from a library or a Dask worker names its file
        where = getattr(e, "path", None) or e.filename or "the output's disk"
        return (e.strerror if type(e).__name__ == "NoSpaceLeft" else
                f"no space left on the disk holding {where}: free some space (or write elsewhere) and run the "
                "command again; earlier outputs are intact")
    if isinstance(e, ConnectionError) and str(e).startswith("cannot reach"):
        return str(e)
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(line.strip() for line in str(msg).splitlines() if line.strip())
    if isinstance(e, EXPECTED):
        return msg or type(e).__name__
    return (f"unexpected {type(e).__name__}: {msg[:300]} (rerun as `stforecast -v ...` for the traceback, and "
            "please report it)")
