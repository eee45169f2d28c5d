"""Keep expected outcomes out of the Dask workers' logs.

A task that raises :class:`stforecast.catalog.CatalogError` (a bad row, a truncated file), or fails because the
disk is full, is an expected outcome:
the client re-raises it and the CLI prints it as one ``error:`` line. The worker, however, logs every failed task
as a ``distributed.worker - ERROR - Compute Failed`` block with the internal traceback, which would appear on the
user's terminal before that line. Likewise a run cancelled with Ctrl-C closes the workers while tasks execute, and
each logs ``Async instruction for <Task ...> ended with CancelledError``. :class:`QuietCatalogErrors` installs a
logging filter on every worker (also on workers that join later) that drops exactly those records and nothing
else: any other exception is a bug or an environment problem, and its block and traceback stay visible.

Why a log filter and not error values passed as task results: the graph stays as it is, so the first failing
chunk still fails the run at once (the client stops waiting on the other chunks), the threaded and synchronous
schedulers behave the same, and no task has to know about its neighbours' failures. The filter matches the
records the worker emits (message "Compute Failed" with the exception text ``CatalogError(...)``, i.e. ``repr``
of the exception, see ``distributed.core.error_message``); if a future version of distributed words them
differently, the block shows again and nothing worse happens.

This module imports ``distributed``; :func:`pipelines.ingest.run_ingest` imports it only when given a client.
"""

from __future__ import annotations

import logging

from distributed.diagnostics.plugin import WorkerPlugin

QUIET_EXCEPTIONS = ("CatalogError(", "OSError(28,", "OSError(122,", "NoSpaceLeft(")  # 28 ENOSPC, 122 EDQUOT
LOGGERS = ("distributed.worker", "distributed.worker.state_machine")


class CatalogErrorFilter(logging.Filter):
    """Drop a worker's "Compute Failed" record of a task that raised a :class:`CatalogError` or ran out of disk
    space (the CLI says so in one line), and the
    "ended with CancelledError" warnings of a worker closed while a cancelled run's tasks executed, and the heartbeat
    error of a worker that outlives its scheduler by a moment."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Compute Failed"):
            args = record.args if isinstance(record.args, tuple) else ()
            return not any(isinstance(a, str) and a.startswith(QUIET_EXCEPTIONS) for a in args)
        if msg.startswith("Async instruction for") and msg.endswith("ended with CancelledError"):
            return False
        # a worker whose scheduler already closed (Ctrl-C, or the end of a run under load) says so once more
        if msg.startswith("Failed to communicate with scheduler during heartbeat"):
            return False
        return True


class QuietCatalogErrors(WorkerPlugin):
    """Worker plugin: add :class:`CatalogErrorFilter` to the worker loggers (once per process)."""

    name = "stforecast-quiet-catalog-errors"
    idempotent = True

    def setup(self, worker=None) -> None:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, CatalogErrorFilter) for f in logger.filters):
                logger.addFilter(CatalogErrorFilter())


def install(client) -> None:
    """Register the plugin on ``client``'s cluster (idempotent)."""
    client.register_plugin(QuietCatalogErrors(), name=QuietCatalogErrors.name)
