"""What a person reads when something fails: one line (what is wrong, where, what to do), never a traceback."""

from __future__ import annotations

#: errors whose message is written for a person (bad input, missing files, refused settings)
EXPECTED = (ValueError, KeyError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def error_line(e: BaseException) -> str:
    """The message of an expected error (a CatalogError keeps its list of bad rows, one per line), or the type and
    first line of an unexpected one with how to see more."""
    from stforecast.catalog import CatalogError

    if isinstance(e, CatalogError):
        return str(e)
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(line.strip() for line in str(msg).splitlines() if line.strip())
    if isinstance(e, EXPECTED):
        return msg or type(e).__name__
    return (f"unexpected {type(e).__name__}: {msg[:300]} (rerun as `stforecast -v ...` for the traceback, and "
            "please report it)")
