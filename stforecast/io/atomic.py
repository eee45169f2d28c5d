"""The one atomic writer: readers see the previous output or the complete new one, never a partial file or folder,
and a failed or interrupted write leaves nothing behind.

    with atomic_path("forecast.nc") as tmp:   # any writer that wants a path (to_netcdf, savefig, torch.save)
        ds.to_netcdf(tmp)
    atomic_write_text("summary.json", text)
    with atomic_output("data.csv", "w") as f:  # a file handle, fsynced before the rename (downloads)
        ...
    with atomic_dir(Path("reports/map-japan"), kind="report") as tmp:   # a whole folder, swapped in when complete
        ...

Temp files live beside their target (``os.replace`` is atomic only within one file system) and keep its
suffix, so writers that infer the format from the name still work.

**Leftovers of killed runs.** Every temp name carries the writer's host and process id
(``.NAME.tmp-<host>-<pid>-<random>``, ``.STEM.<host>-<pid>-<random>.part.SUFFIX``), so the next write of the same
target removes what a dead process left (``kill -9``, a power cut) at once, and never what a live one is still
writing. Leftovers of another host (a shared disk) are removed only when older than an hour: a process there
cannot be checked.

**Folders the writer owns.** :func:`atomic_dir` replaces ``target`` wholesale, so it first makes sure the folder
is one stforecast wrote, of the same kind: every folder it creates holds :data:`OWNER_FILE` naming its kind
("catalog", "report", ...). A folder without it that is not empty (or of another kind) is refused with a
one-line :class:`OutputNotOwned`, and nothing is deleted. Folders of a kind written before the marker existed are
known by the record file the caller names (a report's ``summary.json``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import IO, Iterator

#: the file that marks a folder written by :func:`atomic_dir`, with its kind
OWNER_FILE = ".stforecast-output.json"
#: leftovers of another host are removed after this long (no way to check whether their writer still runs)
FOREIGN_MAX_AGE_S = 3600.0

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
#: ``<host>-<pid>-<random>`` inside a temp name
_HOLDER = re.compile(r"(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]+")


class OutputNotOwned(ValueError):
    """An output folder that stforecast did not write (or that holds another kind of output): left alone."""


class NoSpaceLeft(OSError):
    """The disk (or quota) holding ``path`` is full; one line for a person."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, f"no space left on the disk holding {path}: free some space (or write "
                                       "elsewhere) and run the command again; earlier outputs are intact")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


def _holder() -> str:
    return f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def holder_alive(name: str, mtime: float, now: float | None = None) -> bool:
    """Whether the process that wrote the temp file or folder ``name`` may still be writing it: alive on this
    host, or on another host (or named without a holder, by an older version) and younger than an hour."""
    found = _HOLDER.search(name)
    if found and found["host"] == _HOST:
        try:
            os.kill(int(found["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's live process
            return True
        return True
    return ((now or time.time()) - mtime) < FOREIGN_MAX_AGE_S


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep_temp_files(target: str | os.PathLike) -> list[Path]:
    """Remove the temp files that dead writers of ``target`` left beside it (see the module docstring);
    returns what was removed."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.glob(f".{glob_escape(target.stem)}.*.part{glob_escape(target.suffix)}"):
        with contextlib.suppress(FileNotFoundError):
            if not holder_alive(p.name, p.lstat().st_mtime):
                _remove(p)
                removed.append(p)
    return removed


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def is_no_space(e: BaseException) -> bool:
    """An error that means the disk is full, whatever library raised it (an OSError with ENOSPC or EDQUOT;
    torch's ``enforce fail at inline_container``, HDF5's "HDF error" say less, so :func:`no_space_error` checks)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def no_space_error(e: BaseException, path: str | os.PathLike) -> NoSpaceLeft | None:
    """A :class:`NoSpaceLeft` for the write error ``e`` when it means, or the disk shows, that ``path``'s file
    system is full (libraries such as torch and HDF5 wrap ENOSPC in their own errors); None otherwise. Call it
    before removing the failed write's temp files, which free the space again."""
    if isinstance(e, NoSpaceLeft):
        return None
    full = is_no_space(e)
    if not full and isinstance(e, (OSError, RuntimeError)):
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(probe).free < 1 << 20  # under 1 MiB left: the write failed for want of room
    return NoSpaceLeft(path) if full else None


def _temp_beside(target: Path) -> Path:
    return target.with_name(f".{target.stem}.{_holder()}.part{target.suffix}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``target`` to write to; renamed onto ``target`` on success, removed on failure."""
    target = Path(target)
    sweep_temp_files(target)
    temp = _temp_beside(target)
    try:
        yield temp
        os.replace(temp, target)
    except BaseException as e:
        full = no_space_error(e, target)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if full:
            raise full from e
        raise


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """An open temp file beside ``target``, flushed and fsynced, then renamed onto it (removed on failure).
    Created with 0o666 (unlike mkstemp's 0o600), so the umask decides who may read it."""
    target = Path(target)
    sweep_temp_files(target)
    temp = _temp_beside(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException as e:
        full = no_space_error(e, target)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if full:
            raise full from e
        raise


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically; returns the path."""
    with atomic_output(target, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(target)


def output_kind(folder: Path, record: str | None = None, kind: str = "") -> str | None:
    """The kind of output ``folder`` holds when stforecast wrote it (its :data:`OWNER_FILE`), else ``kind`` when
    it holds ``record`` (the kind's record file: folders written before the marker existed), else None."""
    marker = folder / OWNER_FILE
    if marker.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return str(json.loads(marker.read_text()).get("kind", ""))
        return ""
    if record and (folder / record).is_file():
        return kind
    return None


def check_replaceable(target: Path, kind: str, record: str | None = None) -> None:
    """Refuse (:class:`OutputNotOwned`) to replace ``target`` unless it is missing, an empty folder, or a folder
    stforecast wrote holding the same ``kind`` of output (``record``: see :func:`output_kind`)."""
    if target.is_symlink():
        raise OutputNotOwned(f"{target} is a symbolic link; it is left alone: give the folder it points to, or "
                             "another output folder")
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputNotOwned(f"{target} is a file, not an output folder; it is left alone: choose another output")
    found = output_kind(target, record, kind)
    if found is None and any(target.iterdir()):
        raise OutputNotOwned(f"{target} already exists and was not written by stforecast (no {OWNER_FILE}); it is "
                             "left alone: choose another output folder, or empty it yourself")
    if found is not None and found != kind:
        raise OutputNotOwned(f"{target} holds {_a(found)}, not {_a(kind)}; it is left alone: choose another "
                             "output folder")


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


@contextlib.contextmanager
def atomic_dir(target: Path, kind: str = "output", record: str | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on success it replaces ``target``. Whatever fails (the body, Ctrl-C,
    either of the two final renames), the temp folder is removed and the previous ``target`` stays (or is put
    back) in place. ``kind`` names the output ("catalog", "report", ...): an existing ``target`` is replaced only
    when stforecast wrote it with the same kind (:func:`check_replaceable`; ``record``, the kind's record file,
    recognises folders written before the marker); the new folder records it in :data:`OWNER_FILE`. What dead
    runs left beside ``target`` is removed first (:func:`sweep_stale`)."""
    target = Path(target)
    if target.name in ("", ".", ".."):
        raise ValueError(f"{target}: the output must be a named folder, not {target.name or '/'!r}")
    sweep_stale(target)
    check_replaceable(target, kind, record)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{_holder()}"
    tmp.mkdir()
    old = target.parent / f".{target.name}.old-{_holder()}"
    moved = False  # the previous output has been moved aside to `old`
    try:
        yield tmp
        (tmp / OWNER_FILE).write_text(json.dumps({"kind": kind, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        check_replaceable(target, kind, record)  # another process may have put something there meanwhile
        if target.exists() or target.is_symlink():
            os.replace(target, old)
            moved = True
        os.replace(tmp, target)
    except BaseException as e:
        full = no_space_error(e, target)
        try:
            if moved and not target.exists():
                os.replace(old, target)  # put the previous output back (if this fails, sweep_stale will)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise full from e
        raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)


def sweep_stale(target: Path) -> list[Path]:
    """Remove the temp and old folders (and temp files) that dead runs left beside ``target``; if the output
    itself is missing but an old copy survives (a run killed between the two renames), put it back. Leftovers of
    live writers stay. Returns what was removed."""
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    now = time.time()
    for p in sorted(target.parent.glob(f".{glob_escape(target.name)}.*-*")):
        kind = re.match(rf"\.{re.escape(target.name)}\.(tmp|old)-", p.name)
        if not kind:
            continue
        with contextlib.suppress(FileNotFoundError):
            if holder_alive(p.name, p.lstat().st_mtime, now):
                continue
            if kind[1] == "old" and not target.exists():
                os.replace(p, target)
                continue
            _remove(p)
            removed.append(p)
    return removed
