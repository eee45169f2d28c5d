"""The Dask cluster every distributed command runs on: a local one bound to 127.0.0.1, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import math
import os


#: seconds to reach an existing scheduler before giving up (distributed's default, 30 s, looks like a hang);
#: the environment variable STFORECAST_SCHEDULER_TIMEOUT_S sets another (a scheduler still starting, a slow link)
CONNECT_TIMEOUT_S = 10.0
TIMEOUT_VARIABLE = "STFORECAST_SCHEDULER_TIMEOUT_S"


def connect_timeout() -> float:
    """Seconds :func:`connect` waits for a scheduler: $STFORECAST_SCHEDULER_TIMEOUT_S, else 10."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return CONNECT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"environment variable {TIMEOUT_VARIABLE} must be a positive number of seconds, "
                         f"not {text[:40]!r}")
    return value


def connect(address: str):
    """A client of the scheduler at ``address``; one line naming it when it cannot be reached."""
    from distributed import Client

    timeout = connect_timeout()
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:  # refused, timed out, unresolvable, malformed address
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConnectionError(f"cannot reach the Dask scheduler at {address} ({first}); check the address and that "
                              "the scheduler runs, or leave out --scheduler to use a local cluster") from None


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int = 2):
    """A distributed client: the given scheduler, or a LocalCluster bound to 127.0.0.1 without a dashboard.

    The local workers are started with Ctrl-C (SIGINT) ignored: a terminal sends it to the whole process group,
    and only this process should act on it (the run is cancelled, its temp folder removed, the cluster closed
    here) instead of every worker process printing its own KeyboardInterrupt traceback. Started processes inherit
    an ignored signal; the handler of this process is restored at once (a Ctrl-C pressed meanwhile then arrives: it
    is deferred, not lost). Closing (a second or so) ignores Ctrl-C
    too: an interrupt there would only leave the cluster half-closed, and when the work has finished, its output
    is already in place."""
    import signal
    import threading

    from distributed import Client, LocalCluster

    @contextlib.contextmanager
    def no_sigint(defer: bool = False):
        """SIGINT ignored here and in the processes started meanwhile. ``defer``: also blocked here, so a Ctrl-C
        during the start is not lost: Linux keeps a blocked signal pending even while its action is "ignore", and
        it arrives (as KeyboardInterrupt) once the handler is back and the signal unblocked. Started processes
        inherit the block as well as the ignore."""
        if threading.current_thread() is not threading.main_thread():  # signal handlers live there only
            yield
            return
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        if defer:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            if defer:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler:
        with connect(scheduler) as client:
            yield client
        return
    with no_sigint(defer=True):
        # no dashboard; the scheduler's HTTP server (health checks) on a free local port: with the default 8787
        # busy, distributed would warn on stderr
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    client = None
    try:
        client = Client(cluster)
        yield client
    finally:
        with no_sigint():
            if client is not None:
                client.close()
            cluster.close()


def wait_with_progress(futures, progress: bool, label: str) -> None:
    """Until every future is done, with a progress bar (``progress``); a worker's error is raised here, with its
    message."""
    from distributed import as_completed

    if not progress:
        for _ in as_completed(futures):
            pass
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        task = bar.add_task(label, total=len(futures))
        for fut in as_completed(futures):
            if fut.status == "error":
                fut.result()  # re-raise the worker's error here, with its message
            bar.advance(task)

