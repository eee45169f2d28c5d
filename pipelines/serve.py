"""``stforecast serve``: the interactive risk map of the latest batch forecasts, on a small local web server
(127.0.0.1 by default) or written once as a static, self-contained HTML file (``--static FILE``).

The page is rebuilt from the batch folder on every request of ``/``, so a new batch run shows up on reload.
"""

from __future__ import annotations

import argparse
import html
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipelines.batch_forecast import JOB_RECORD
from stforecast.io.atomic import atomic_write_text
from stforecast.registry import LABELS
from stforecast.riskmap import riskmap_html


#: how the risk map names a forecaster (``model.name``, kept as ``model_kind`` in a batch manifest)
def model_label(manifest: dict) -> str:
    """The model a batch forecast came from, as the map's Model picker shows it: its kind (``summary.model_kind``,
    or the manifest's ``model_kind``) or, for manifests written before either existed, the job's ``model``."""
    kind = (manifest.get("summary") or {}).get("model_kind") or manifest.get("model_kind")
    if not kind:
        kind = (manifest.get("job") or {}).get("model") or manifest.get("model") or "model"
    return LABELS.get(str(kind), str(kind))


def latest_forecasts(batch_root) -> list[dict]:
    """The newest forecast of every batch job under ``batch_root`` (``<date>/<job>/forecast.json``), each with
    the ``model`` it came from (:func:`model_label`; two jobs of one model for the same region and horizon, e.g.
    two DSTPP checkpoints, get their job names added so that the map keeps them apart)."""
    newest: dict[str, Path] = {}
    for manifest in sorted(Path(batch_root).glob(f"*/*/{JOB_RECORD}")):  # dates sort chronologically
        newest[manifest.parent.name] = manifest.parent
    out = []
    for job, folder in sorted(newest.items()):
        m = json.loads((folder / JOB_RECORD).read_text())
        contours_file = folder / "contours_1.geojson"
        if not contours_file.exists():
            contours_file = folder / "contours_0.geojson"
        features = json.loads(contours_file.read_text())["features"]
        recent = json.loads((folder / "recent.geojson").read_text())
        out.append({"region": m["catalog"], "horizon": m["job"]["horizon"], "forecast_time": _shown_time(m["forecast_time"]),
                    "expected_events": m["summary"]["expected_events"], "frame": recent.get("frame", "geographic"),
                    "contours": {f"{f['properties']['level']:g}": f["geometry"] for f in features},
                    "observed": recent, "job": job, "model": model_label(m),
                    "view": (m.get("summary") or {}).get("view_bounds")})
    seen: dict[tuple, int] = {}
    for f in out:
        key = (f["region"], f["horizon"], f["model"])
        seen[key] = seen.get(key, 0) + 1
    for f in out:
        if seen[(f["region"], f["horizon"], f["model"])] > 1:
            f["model"] = f"{f['model']} ({f['job']})"
    return out


def _shown_time(text: str) -> str:
    """A batch record's forecast time as the maps show times (:func:`stforecast.maps.format_time`); lab clocks
    (numbers) unchanged."""
    import pandas as pd

    from stforecast.maps import format_time

    try:
        when = pd.Timestamp(text)
    except ValueError:
        return text
    return format_time(when) if when.tzinfo is not None else text


def write_static(batch_root, path) -> Path:
    return atomic_write_text(path, riskmap_html(latest_forecasts(batch_root)))


#: seconds a connection may stay silent (headers not sent, response not read) before the server drops it: each
#: open connection holds a thread, so half-open ones must not pile up
IDLE_TIMEOUT_S = 5.0


def make_server(batch_root, host: str = "127.0.0.1", port: int = 8765,
                idle_timeout_s: float = IDLE_TIMEOUT_S) -> ThreadingHTTPServer:
    root = Path(batch_root)

    class Handler(BaseHTTPRequestHandler):
        timeout = idle_timeout_s  # the socket's timeout: a client that sends no headers is dropped after it

        def do_GET(self):  # noqa: N802 - the http.server API
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404, "only / is served")
                return
            try:
                body = riskmap_html(latest_forecasts(root)).encode("utf-8")
            except (ValueError, FileNotFoundError, KeyError) as e:
                # not Python's stock "temporarily overloaded" page: say what is missing and what to run
                body = ("<!doctype html><meta charset='utf-8'><title>stforecast: no forecast yet</title>"
                        f"<h1>No forecast to show yet</h1><p>{html.escape(str(e))}</p><p>Nothing was found under "
                        f"<code>{html.escape(str(root))}</code>. Run <code>stforecast batch</code> (or "
                        "<code>make demo</code>, which runs one batch job), then reload this page.</p>").encode()
                self.send_response(503)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", "default-src 'self' 'unsafe-inline' data:")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # quiet: one line per request is noise for a map
            pass

    return ThreadingHTTPServer((host, port), Handler)


def serve(batch_root, host: str = "127.0.0.1", port: int = 8765, stop_after: float | None = None) -> None:
    """Serve until interrupted (or for ``stop_after`` seconds)."""
    server = make_server(batch_root, host, port)
    if stop_after is not None:
        threading.Timer(stop_after, server.shutdown).start()
    print(f"risk map: http://{host}:{server.server_address[1]}/  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -------------------------------------------------------------------------------- the `stforecast serve` command
def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="the interactive risk map of the latest batch forecasts (local server or static file)",
                       description=("Serve the interactive risk map: the newest forecast of every `stforecast batch` job,\n"
                                    "with a picker for region, horizon and contour level, on http://127.0.0.1:8765/ (this\n"
                                    "machine only unless --host says otherwise). The page is rebuilt on each load, works\n"
                                    "offline, and --static writes it once as one file to share. `make demo` leaves one\n"
                                    "batch forecast ready to show."),
                       epilog="examples:\n  stforecast serve\n  stforecast serve --static reports/riskmap.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="reports/batch", help="batch output root (default reports/batch)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--static", metavar="FILE", help="write the page to FILE instead of serving it")


def run(args) -> int:

    if args.static:
        print(f"risk map written to {write_static(args.root, args.static)} (self-contained, works offline)")
        return 0
    serve(args.root, args.host, args.port)
    return 0
