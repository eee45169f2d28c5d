"""The one atomic writer: readers see the previous output or the complete new one, never a partial file or folder,
and a failed or interrupted write leaves nothing behind.

    with atomic_path("forecast.nc") as tmp:   # any writer that wants a path (to_netcdf, savefig, torch.save)
        ds.to_netcdf(tmp)
    atomic_write_text("summary.json", text)
    with atomic_output("data.csv", "w") as f:  # a file handle, fsynced before the rename (downloads)
        ...
    with atomic_dir(Path("reports/map-japan")) as tmp:   # a whole folder, swapped into place when complete
        ...

Temp files live beside their target (``os.replace`` is atomic only within one file system) and keep its
suffix, so writers that infer the format from the name still work.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import IO, Iterator


def _temp_beside(target: Path) -> Path:
    return target.with_name(f".{target.stem}.{secrets.token_hex(6)}.part{target.suffix}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``target`` to write to; renamed onto ``target`` on success, removed on failure."""
    target = Path(target)
    temp = _temp_beside(target)
    try:
        yield temp
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """An open temp file beside ``target``, flushed and fsynced, then renamed onto it (removed on failure).
    Created with 0o666 (unlike mkstemp's 0o600), so the umask decides who may read it."""
    target = Path(target)
    temp = _temp_beside(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically; returns the path."""
    with atomic_output(target, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(target)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on success it replaces ``target``. Whatever fails (the body, Ctrl-C,
    either of the two final renames), the temp folder is removed and the previous ``target`` stays (or is put
    back) in place."""
    target = Path(target)
    if target.name in ("", ".", ".."):
        raise ValueError(f"{target}: the output must be a named folder, not {target.name or '/'!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    moved = False  # the previous output has been moved aside to `old`
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            os.replace(target, old)
            moved = True
        os.replace(tmp, target)
    except BaseException:
        try:
            if moved and not target.exists():
                os.replace(old, target)  # put the previous output back (if this fails, sweep_stale will)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)


def sweep_stale(target: Path, max_age_s: float = 3600) -> None:
    """Remove temp/old folders that a killed run left beside ``target`` (older than ``max_age_s``); if the
    output itself is missing but an old copy survives (killed between the two renames), restore it."""
    target = Path(target)
    if not target.parent.exists():
        return
    now = time.time()
    for p in target.parent.glob(f".{target.name}.*-*"):
        if ".old-" in p.name and not target.exists():
            os.replace(p, target)
        elif now - p.stat().st_mtime > max_age_s:
            shutil.rmtree(p, ignore_errors=True)
