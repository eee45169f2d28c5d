"""Catalog forecasts in the seismology convention (pyCSEP's catalog-based forecast CSV), and their pyCSEP tests.

A horizon forecast's simulations become "stochastic event sets": one synthetic catalog per simulation, rows
``lon, lat, mag, time_string, depth, catalog_id, event_id``. Magnitudes are the model's own forecast
(``magnitudes="model"``: the simulated events' ``magnitude`` column), or, for a model that forecasts none,
drawn from a Gutenberg–Richter law fitted to the training catalog (``magnitudes="gutenberg-richter"``: b by
Aki's maximum likelihood above the completeness magnitude Mc, estimated by maximum curvature), independent of
time and place, as ETAS assumes too. Depth is not in the ingested catalogs; a constant is written (pyCSEP's
tests here ignore it).

pyCSEP's reader takes the forecast's start time from the file name (``NAME_YYYY-MM-DDTHH-MM-SS-ffffff.csv``)
and needs the number of catalogs from the caller. A catalog without events may be left out of the file, except
the last one: pyCSEP 0.8 counts the catalogs it reads and drops empty ones after the last listed id (its
``CatalogForecast`` overwrites ``n_cat`` after the first pass). Writers given ``n_catalogs`` therefore list an
empty last catalog explicitly (a row with only ``catalog_id``, pyCSEP's own convention for an empty catalog),
and :func:`run_csep_tests` pads the forecast back to ``n_catalogs`` for files written without it.

    frame = catalog_forecast_frame(sims, mc, b, magnitudes="gutenberg-richter")   # one day in memory
    path = write_catalog_forecast(frame, out, "japan", start, n_catalogs=1000)
    with CatalogForecastWriter(out, "japan", start, n_catalogs=10_000) as w:       # or streamed in chunks
        for chunk in chunks: w.add(chunk)
    day = run_csep_tests(path, 10_000, observed, start, end, mc, bbox, out_dir=out)  # N, S, M and PL tests
    calibration_plot([day1, day2, ...], "number", out / "calibration_number.png")
    summary_table({"dstpp": days, "etas": etas_days})
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from stforecast.defaults import CSEP_CHUNK, CSEP_MAX_EVENTS
from stforecast.models.marks import M_MAX, sample_gutenberg_richter
from stforecast.sampling import MAGNITUDES

COLUMNS = ["lon", "lat", "mag", "time_string", "depth", "catalog_id", "event_id"]
TESTS = ("number", "spatial", "magnitude", "pseudolikelihood")
ALPHA = 0.05  # the conventional 5 % level of the pass flags

# Which of pyCSEP's two quantiles (delta_1 = P(X >= x), delta_2 = P(X <= x), in that order in `result.quantile`,
# from csep.utils.stats.get_quantiles) is each test's one quantile score. The number test is two-sided (too few
# or too many events: both quantiles must reach alpha/2); the others are one-sided, read as pyCSEP 0.8 reads them
# in csep/plots.py::_annotate_distribution_plot and as the docs' "Theory of CSEP Tests" defines them (Savran et
# al. 2020): S-test and PL-test gamma = P(X <= x) (a too-low (pseudo-)likelihood rejects), M-test
# gamma = P(D >= d_obs) (a too-large distance between the magnitude histograms rejects; the docs print it as
# F_D(d_obs), the code and its plot use delta_1). The number test's score for calibration and means is delta_2,
# as in csep.core.catalog_evaluations.calibration_test (delta_1=False by default).
SCORE_INDEX = {"number": 1, "spatial": 1, "magnitude": 0, "pseudolikelihood": 1}
SCORE_LABEL = {"number": "δ2 = P(N ≤ n_obs)", "spatial": "γ = P(S ≤ s_obs)", "magnitude": "γ = P(D ≥ d_obs)",
               "pseudolikelihood": "γ = P(L ≤ l_obs)"}


def _check_magnitudes(magnitudes: str, mc, b) -> None:
    if magnitudes not in MAGNITUDES:
        raise ValueError(f"magnitudes must be one of {MAGNITUDES}, not {magnitudes!r}")
    if magnitudes == "gutenberg-richter" and (mc is None or b is None):
        raise ValueError("magnitudes='gutenberg-richter' needs the completeness magnitude mc and the b-value")


def _rows(events: pd.DataFrame, magnitudes: str, mc, b, rng: np.random.Generator, m_max: float, depth_km: float,
          first_event_id: int = 0) -> pd.DataFrame:
    """Simulated events → pyCSEP rows sorted by catalog and time; event ids from ``first_event_id``."""
    _check_magnitudes(magnitudes, mc, b)
    if magnitudes == "model" and ("magnitude" not in events or events["magnitude"].isna().any()):
        raise ValueError("the model forecasts no magnitudes (its simulated events have no 'magnitude' column, or "
                         "NaN in it): pass magnitudes='gutenberg-richter' to draw them from a Gutenberg-Richter law")
    missing = {"simulation", "time", "lon", "lat"} - set(events.columns)
    if missing:
        raise ValueError(f"simulated events need the columns simulation, time, lon, lat; missing {sorted(missing)}")
    ev = events.sort_values(["simulation", "time"], kind="stable")
    if magnitudes == "model":
        mags = ev["magnitude"].to_numpy(dtype=float)
    else:
        mags = sample_gutenberg_richter(len(ev), mc, b, rng, m_max)
    times = pd.to_datetime(ev["time"], utc=True).dt.tz_localize(None)  # naive times are taken as UTC
    return pd.DataFrame({
        "lon": ev["lon"].to_numpy(dtype=float).round(5), "lat": ev["lat"].to_numpy(dtype=float).round(5),  # ~1 m
        "mag": np.round(mags, 2),
        "time_string": times.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").to_numpy(),
        "depth": depth_km, "catalog_id": ev["simulation"].to_numpy().astype(int),
        "event_id": np.arange(first_event_id, first_event_id + len(ev)),
    }, columns=COLUMNS)


def catalog_forecast_frame(events: pd.DataFrame, mc: float, b: float, seed: int = 0, depth_km: float = 10.0,
                           m_max: float = M_MAX, magnitudes: str = "model") -> pd.DataFrame:
    """Simulated events with ``simulation``, ``time`` (UTC), ``lon``, ``lat`` (and ``magnitude``) → pyCSEP rows,
    sorted by catalog. ``magnitudes="model"`` writes the events' own magnitudes (a ValueError if they have none);
    ``"gutenberg-richter"`` draws them from the law with ``mc``, ``b`` (truncated at ``m_max``; ``seed``)."""
    return _rows(events, magnitudes, mc, b, np.random.default_rng(seed), m_max, depth_km)


def forecast_file_name(name: str, start: pd.Timestamp) -> str:
    start = pd.Timestamp(start).tz_convert("UTC") if pd.Timestamp(start).tzinfo else pd.Timestamp(start)
    return f"{name.replace('_', '-')}_{start.strftime('%Y-%m-%dT%H-%M-%S-%f')}.csv"


def _empty_catalog_row(catalog_id: int) -> str:
    """pyCSEP's explicit empty catalog: every field blank but ``catalog_id``."""
    return f",,,,,{int(catalog_id)},\n"


class CatalogForecastWriter:
    """Stream one day's simulated catalogs to a pyCSEP forecast file, chunk by chunk (memory bounded by a chunk):

        with CatalogForecastWriter(folder, "japan", start, n_catalogs=10_000) as w:
            for chunk in chunks:            # columns simulation, time, lon, lat, magnitude
                w.add(chunk)
        w.path                              # folder / japan_2019-07-01T00-00-00-000000.csv

    Rows go to a temp file beside the target, renamed onto the pyCSEP file name when the block ends without an
    error; an error leaves nothing (neither the temp file nor a partial forecast). Catalog ids must not decrease
    from one chunk to the next (a catalog may continue into the next chunk); event ids run on across chunks, so
    the file equals :func:`write_catalog_forecast` of :func:`catalog_forecast_frame` of all chunks at once. With
    ``n_catalogs``, ids must stay below it and an empty last catalog is listed explicitly (see the module doc).
    ``magnitudes``, ``mc``, ``b``, ``seed``, ``depth_km``, ``m_max`` as in :func:`catalog_forecast_frame` (the
    Gutenberg–Richter draws continue one generator across chunks)."""

    def __init__(self, folder, name: str, start, *, n_catalogs: int | None = None, magnitudes: str = "model",
                 mc: float | None = None, b: float | None = None, seed: int = 0, depth_km: float = 10.0,
                 m_max: float = M_MAX):
        _check_magnitudes(magnitudes, mc, b)
        if n_catalogs is not None and n_catalogs < 1:
            raise ValueError(f"n_catalogs must be at least 1, not {n_catalogs}")
        self.path = Path(folder) / forecast_file_name(name, start)
        self.n_catalogs = n_catalogs
        self.n_events = 0  # rows written so far
        self.last_catalog_id = -1  # the highest catalog id written so far
        self._options = dict(magnitudes=magnitudes, mc=mc, b=b, m_max=m_max, depth_km=depth_km)
        self._rng = np.random.default_rng(seed)
        self._stack: contextlib.ExitStack | None = None
        self._handle = None

    def __enter__(self) -> "CatalogForecastWriter":
        from stforecast.io.atomic import atomic_output

        if self._stack is not None:
            raise RuntimeError(f"{self.path.name}: the writer is already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        self._handle = stack.enter_context(atomic_output(self.path, "w", encoding="utf-8", newline=""))
        self._stack = stack
        self._handle.write(",".join(COLUMNS) + "\n")
        return self

    def add(self, chunk: pd.DataFrame) -> int:
        """Append a chunk of simulated events; returns the number of rows written."""
        if self._handle is None:
            raise RuntimeError("CatalogForecastWriter.add needs an open writer: use it in a with-block")
        rows = _rows(chunk, rng=self._rng, first_event_id=self.n_events, **self._options)
        if not len(rows):
            return 0
        ids = rows["catalog_id"].to_numpy()
        if ids[0] < max(self.last_catalog_id, 0):
            raise ValueError(f"catalog ids must not decrease across chunks: this chunk starts at {ids[0]}, after "
                             f"catalog {self.last_catalog_id} (pyCSEP reads the catalogs in id order)")
        if self.n_catalogs is not None and ids[-1] >= self.n_catalogs:
            raise ValueError(f"catalog id {ids[-1]} is not below n_catalogs = {self.n_catalogs}")
        _write_rows(self._handle, rows)
        self.n_events += len(rows)
        self.last_catalog_id = int(ids[-1])
        return len(rows)

    def __exit__(self, exc_type, exc, tb):
        stack, handle = self._stack, self._handle
        self._stack = self._handle = None
        if exc_type is None and self.n_catalogs is not None and self.last_catalog_id < self.n_catalogs - 1:
            try:
                handle.write(_empty_catalog_row(self.n_catalogs - 1))
            except BaseException as err:
                stack.__exit__(type(err), err, err.__traceback__)  # removes the temp file
                raise
        return stack.__exit__(exc_type, exc, tb)  # success: fsync and rename; error: remove the temp file


def _write_rows(handle, rows: pd.DataFrame) -> None:
    rows.to_csv(handle, header=False, index=False, lineterminator="\n")


def write_catalog_forecast(frame: pd.DataFrame, folder, name: str, start, n_catalogs: int | None = None) -> Path:
    """Write the rows (:func:`catalog_forecast_frame`) atomically under the pyCSEP file-name convention; returns
    the path. With ``n_catalogs``, ids must stay below it and an empty last catalog is listed explicitly."""
    from stforecast.io.atomic import atomic_output

    path = Path(folder) / forecast_file_name(name, start)
    ids = frame["catalog_id"].to_numpy()
    if len(ids) and (np.diff(ids) < 0).any():
        raise ValueError("rows must be sorted by catalog_id (pyCSEP reads the catalogs in id order)")
    if n_catalogs is not None and len(ids) and ids[-1] >= n_catalogs:
        raise ValueError(f"catalog id {ids[-1]} is not below n_catalogs = {n_catalogs}")
    with atomic_output(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(frame.columns) + "\n")
        _write_rows(handle, frame)
        if n_catalogs is not None and (not len(ids) or ids[-1] < n_catalogs - 1):
            handle.write(_empty_catalog_row(n_catalogs - 1))
    return path


# ------------------------------------------------------------------------------------------------ pyCSEP's tests
def _finite(v) -> float | None:
    """A JSON-safe float: None for None, NaN and ±inf (JSON has none of them)."""
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None


def _pad_to(forecast, n_catalogs: int, region) -> None:
    """Load the forecast once (pyCSEP keeps the filtered catalogs in memory) and append the empty catalogs that
    pyCSEP 0.8 drops after the last id listed in the file, so that every test sees ``n_catalogs`` catalogs."""
    from csep.core.catalogs import CSEPCatalog

    forecast.get_event_counts()  # the first pass: reads and filters every catalog, then stores them as a list
    loaded = len(forecast.catalogs)
    if loaded > n_catalogs:
        raise ValueError(f"{forecast.filename}: the file lists {loaded} catalogs, more than n_catalogs = "
                         f"{n_catalogs}")
    forecast.catalogs.extend(CSEPCatalog(data=[], catalog_id=i, region=region, name=forecast.name)
                             for i in range(loaded, n_catalogs))
    forecast.n_cat = n_catalogs


def _test_entry(test: str, res, alpha: float) -> dict:
    """One pyCSEP result → JSON: quantile(s), observed statistic, status, the score and the pass flag."""
    if res is None:  # pseudolikelihood_test returns None when no observed event can be scored
        return {"quantile": None, "quantiles": [None, None], "observed": None, "status": "not-valid",
                "score": None, "passed": None}
    q = np.atleast_1d(np.asarray(res.quantile, dtype=float))  # (delta_1, delta_2); None -> NaN
    d1, d2 = (_finite(q[0]), _finite(q[-1]))
    if res.status == "not-valid":
        d1 = d2 = None  # pyCSEP marks these with quantiles of -1
    score = (d1, d2)[SCORE_INDEX[test]]
    entry = {"observed": _finite(res.observed_statistic), "status": str(res.status), "score": score}
    if test == "number":
        entry["observed"] = int(res.observed_statistic)
        entry["quantile"] = [d1, d2]
        entry["passed"] = None if d1 is None or d2 is None else bool(d1 >= alpha / 2 and d2 >= alpha / 2)
    else:
        entry["quantile"] = score
        entry["quantiles"] = [d1, d2]
        entry["passed"] = None if score is None or entry["observed"] is None else bool(score >= alpha)
    if entry["passed"] is None:
        entry["score"] = None
    return entry


def run_csep_tests(forecast_path, n_catalogs: int, observed: pd.DataFrame, start, end, mc: float,
                   bbox: tuple[float, float, float, float], dh: float | None = None, out_dir=None,
                   alpha: float = ALPHA) -> dict:
    """pyCSEP's catalog-based number, spatial, magnitude and pseudo-likelihood tests of a forecast file against
    the observed events (``time``, ``lon``, ``lat``, ``magnitude``) in [start, end), on a ``dh``-degree grid over
    ``bbox`` (min lon, min lat, max lon, max lat) and 0.1-magnitude bins from ``mc``; the default ``dh`` is the
    finest of 0.1°, 0.2°, 0.25°, 0.5°, 1° with at most 20,000 cells. Needs the ``csep`` extra.

    Each ``<test>_test`` entry holds pyCSEP's quantile(s) (number: [δ1, δ2]; the others: their one quantile
    score γ under ``quantile`` and [δ1, δ2] under ``quantiles``), the ``observed`` statistic, pyCSEP's
    ``status``, ``score`` (the quantile score that calibration plots and summaries use) and ``passed`` at level
    ``alpha`` (number: two-sided, δ1 and δ2 ≥ alpha/2; the others: γ ≥ alpha); None where a test is undefined
    (no observed event to score). With ``out_dir``, a histogram PNG per test (no maps, nothing downloaded)."""
    import csep
    from csep.core import catalog_evaluations, regions

    start, end = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    lon0, lat0, lon1, lat1 = bbox
    if dh is None:
        dh = next((d for d in (0.1, 0.2, 0.25, 0.5) if (lon1 - lon0) * (lat1 - lat0) / d**2 <= 20_000), 1.0)
    origins = np.array([(x, y) for x in np.arange(lon0, lon1, dh) for y in np.arange(lat0, lat1, dh)])
    mags = np.arange(mc, 9.05, 0.1)
    region = regions.CartesianGrid2D.from_origins(origins, dh=dh, magnitudes=mags)
    t0, t1 = start.value // 1_000_000, end.value // 1_000_000  # pyCSEP's epoch: UTC milliseconds
    obs = observed[(observed["time"] >= start) & (observed["time"] < end)]
    rows = [(i, pd.Timestamp(t).value // 1_000_000, la, lo, 10.0, m)
            for i, (t, lo, la, m) in enumerate(zip(obs["time"], obs["lon"], obs["lat"], obs["magnitude"]))]
    said = io.StringIO()  # pyCSEP prints its warnings; they go into the result instead of the caller's output
    with contextlib.redirect_stdout(said):
        forecast = csep.load_catalog_forecast(
            str(forecast_path), start_time=start.to_pydatetime(), end_time=end.to_pydatetime(), region=region,
            type="ascii", n_cat=n_catalogs, apply_filters=True, filter_spatial=True,
            filters=[f"magnitude >= {mc}", f"origin_time >= {t0}", f"origin_time < {t1}"])
        _pad_to(forecast, n_catalogs, region)
        catalog = csep.catalogs.CSEPCatalog(data=rows, region=region, name="observed")
        catalog = catalog.filter_spatial(region).filter(f"magnitude >= {mc}")
        results = {"number": catalog_evaluations.number_test(forecast, catalog),
                   "spatial": catalog_evaluations.spatial_test(forecast, catalog),
                   "magnitude": catalog_evaluations.magnitude_test(forecast, catalog),
                   "pseudolikelihood": catalog_evaluations.pseudolikelihood_test(forecast, catalog)}
    result = {"grid_degrees": float(dh), "magnitude_min": float(mc), "n_catalogs": int(n_catalogs),
              "alpha": float(alpha),
              "observed_events": int(catalog.event_count),
              "mean_forecast_events": _finite(np.mean([c.event_count for c in forecast.catalogs]))}
    for test, res in results.items():
        result[f"{test}_test"] = _test_entry(test, res, alpha)
    for test in ("spatial", "pseudolikelihood"):
        entry = result[f"{test}_test"]
        if entry["status"] == "undersampled":
            entry["note"] = ("observed events fell in cells where no simulated event fell; pyCSEP scored the "
                             "others: simulate more catalogs or use a coarser grid")
        elif entry["observed"] is None:
            entry["note"] = ("undefined: no observed event above Mc in the region, or none in cells the simulated "
                             "catalogs reach")
    if result["magnitude_test"]["observed"] is None:
        result["magnitude_test"]["note"] = "undefined: no observed event above Mc, or no simulated one"
    messages = [line.strip() for line in said.getvalue().splitlines() if line.strip()]
    if messages:
        result["pycsep_messages"] = messages
    if out_dir is not None:
        _plot_tests(results, result, Path(out_dir), f"{start:%Y-%m-%d}")
    return result


def _plot_tests(results: dict, result: dict, out_dir: Path, day: str) -> None:
    """pyCSEP's histogram of each test's distribution with the observed statistic, on a bare matplotlib Figure
    (no pyplot state, no backend switch, no map tiles), written atomically."""
    from csep import plots
    from matplotlib.figure import Figure

    from stforecast.io.atomic import atomic_path

    for test, res in results.items():
        entry = result[f"{test}_test"]
        sims = np.asarray(res.test_distribution, dtype=float) if res is not None else np.array([])
        if entry["observed"] is None or not np.isfinite(sims).any():
            continue  # nothing to draw: the test is undefined for this day
        fig = Figure(figsize=(6.4, 4.8))
        plots.plot_test_distribution(res, ax=fig.subplots(), show=False, sim_label="simulated catalogs",
                                     obs_label="observed")
        name = f"csep_{test}_test_{day}.png"
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, dpi=100)
        entry["plot"] = name


# ----------------------------------------------------------------------------------------- results over many days
def _test_name(test: str) -> str:
    name = test.removesuffix("_test")
    if name not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, not {test!r}")
    return name


def _day_tests(day: dict) -> dict:
    """A day's test results: a :func:`run_csep_tests` result, or a forecast summary's day entry holding one."""
    return day.get("csep") or day


def quantile_scores(results: list[dict], test: str) -> np.ndarray:
    """The days' quantile scores of one test (days where it is undefined left out)."""
    key = f"{_test_name(test)}_test"
    scores = [(_day_tests(d).get(key) or {}).get("score") for d in results]
    return np.array([s for s in scores if s is not None], dtype=float)


def calibration_plot(results: list[dict], test: str, path, label: str | None = None) -> dict:
    """pyCSEP-style calibration of one test over many days: the empirical CDF of the days' quantile scores against
    the uniform diagonal (a calibrated forecast's scores are uniform), with the 95 % Kolmogorov band (the exact
    two-sided Kolmogorov–Smirnov critical value for that many days). Written atomically as PNG; returns the days
    scored, the KS statistic and p-value, the band half-width and the path. (pyCSEP's own
    ``plot_calibration_test`` is a QQ plot of one CalibrationTestResult built from EvaluationResult objects, not
    from these JSON results, so the plot is drawn here.)"""
    from matplotlib.figure import Figure
    from scipy import stats

    from stforecast.io.atomic import atomic_path

    test = _test_name(test)
    scores = quantile_scores(results, test)
    n = len(scores)
    if not n:
        raise ValueError(f"no day has a {test} test quantile score to calibrate")
    ks = stats.kstest(scores, "uniform")
    band = float(stats.kstwo.ppf(0.95, n))
    fig = Figure(figsize=(5.5, 5.2))
    ax = fig.subplots()
    grid = np.linspace(0, 1, 201)
    ax.fill_between(grid, np.clip(grid - band, 0, 1), np.clip(grid + band, 0, 1), color="0.85", lw=0,
                    label=f"95 % Kolmogorov band (±{band:.3f})")
    ax.plot([0, 1], [0, 1], color="black", lw=1, label="uniform: calibrated")
    x = np.sort(scores)
    ax.step(np.r_[0.0, x, 1.0], np.r_[0.0, np.arange(1, n + 1) / n, 1.0], where="post", color="tab:blue", lw=1.5,
            label=f"{label or 'forecast'}: {n} day{'s' * (n != 1)}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"quantile score {SCORE_LABEL[test]}",
           ylabel="empirical CDF over days", title=f"{test.capitalize()} test calibration "
                                                   f"(KS D = {ks.statistic:.3f}, p = {ks.pvalue:.3f})")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return {"test": test, "days": n, "ks_statistic": float(ks.statistic), "p_value": float(ks.pvalue),
            "band": band, "path": str(path)}


def summary_table(days: dict[str, list[dict]]) -> pd.DataFrame:
    """Per model and test: ``days`` given, ``days_scored`` (the test was defined), ``passed_share`` (of the scored
    days, those passed at the level the days were run with, 5 % by default), ``mean_quantile_score`` and
    ``calibration_p`` (KS test of the scores against uniform; NaN under 2 days)."""
    from scipy import stats

    rows = []
    for model, results in days.items():
        for test in TESTS:
            entries = [_day_tests(d).get(f"{test}_test") or {} for d in results]
            scored = [e for e in entries if e.get("passed") is not None]
            scores = quantile_scores(results, test)
            rows.append({"model": model, "test": test, "days": len(results), "days_scored": len(scored),
                         "passed_share": float(np.mean([e["passed"] for e in scored])) if scored else np.nan,
                         "mean_quantile_score": float(scores.mean()) if len(scores) else np.nan,
                         "calibration_p": float(stats.kstest(scores, "uniform").pvalue) if len(scores) >= 2
                         else np.nan})
    return pd.DataFrame(rows, columns=["model", "test", "days", "days_scored", "passed_share",
                                       "mean_quantile_score", "calibration_p"])


def summary_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A :func:`summary_table` as a Markdown table (no extra dependency)."""
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns)
             + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def completeness(catalog) -> tuple[float, float]:
    """(Mc, b) of a calendar earthquake catalog's training period: Mc by maximum curvature (+0.2), b by Aki's
    maximum likelihood above it. The catalog's threshold is not its completeness (Japan: threshold 2.5, mode of
    the counts 4.4), so the tests count events above Mc and a Gutenberg–Richter fill-in draws from there."""
    from stforecast.models.marks import aki_b_value, max_curvature_mc

    train = catalog.train_events["magnitude"].to_numpy()
    mc = max_curvature_mc(train)
    return mc, aki_b_value(train[train >= mc - 1e-9], mc)


def catalog_forecaster(catalog, model, sampling):
    """``(model, magnitudes, (Mc, b))``: the model as CSEP catalog forecasts draw from it, the same in ``forecast
    --format csep`` and ``csep-eval``: sampling as ``sampling`` says, with the b-value of the catalog's complete
    part (Aki above Mc, :func:`completeness`) where it names none (ETAS's own fit of everything above the catalog's
    threshold gives 0.22 on Japan: M8+ common); ``magnitudes`` "model" where the model forecasts its own and the
    sampling asks for them, else "gutenberg-richter" (the fill-in)."""
    mc, b = completeness(catalog)
    model = model.with_sampling(sampling.replace(magnitude_b=sampling.magnitude_b or b))
    own = sampling.magnitudes == "model" and "magnitude" in model.forecast_marks
    return model, "model" if own else "gutenberg-richter", (mc, b)


def forecast_day(catalog, model, start, n_catalogs: int, folder, *, days: float = 1.0, magnitudes: str = "model",
                 chunk: int = CSEP_CHUNK, max_events: int = CSEP_MAX_EVENTS, max_history: int | None = None,
                 seed: int = 0, progress: bool = False, gr: tuple[float, float] | None = None) -> dict:
    """One CSEP forecast: ``n_catalogs`` catalogs for [``start``, ``start + days``) from any forecaster, conditioned
    on every event of ``catalog`` (an IngestedCatalog with calendar times and magnitudes) before ``start``,
    simulated ``chunk`` at a time (:meth:`~stforecast.models.base.Forecaster.simulate_catalogs`; default all of
    them in one lock-step) and streamed to the pyCSEP file in ``folder``, each catalog stopped at ``max_events``
    (the record counts those capped). ``magnitudes``: "model" (the model's own: DSTPP's
    head, ETAS's Gutenberg–Richter law) or "gutenberg-richter" (the fill-in with ``gr`` = (Mc, b), default
    :func:`completeness`). Returns the day's record (file, counts, seconds)."""
    import time

    units, events = catalog.units, catalog.events
    if not units.calendar or "magnitude" not in events:
        raise ValueError(f"{catalog.name}: CSEP forecasts need an earthquake catalog with calendar times and "
                         "magnitudes")
    start = pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    end = start + pd.Timedelta(days=days)
    t0, t1 = units.model_time_of(start), units.model_time_of(end)
    past = events[events["t"] < t0]
    if not len(past):
        raise ValueError(f"{catalog.name}: no events before {start}")
    keep = int(max_history or model.context)
    # the whole past: each model keeps its newest ``keep`` (ETAS: of the events above the Mc it was fitted on)
    marks = {"magnitude": past["magnitude"].to_numpy(float)}
    mc, b = gr or completeness(catalog)
    began = time.perf_counter()
    counts, capped = [], []
    with CatalogForecastWriter(folder, catalog.name, start, n_catalogs=n_catalogs, magnitudes=magnitudes, mc=mc,
                               b=b, seed=seed) as writer:
        for part in model.simulate_catalogs(past["t"].to_numpy(), past[["x", "y"]].to_numpy(), marks, t1,
                                            n_catalogs, np.random.default_rng(seed), t_start=t0, chunk=chunk,
                                            max_events=max_events, max_history=keep, progress=progress):
            counts.append(part.counts)
            capped.append(part.capped)
            if len(part.events):
                writer.add(units.to_original(part.events))
    counts, capped = np.concatenate(counts), np.concatenate(capped)
    observed = events[(events["t"] >= t0) & (events["t"] < t1)]
    return {"start": str(start), "end": str(end), "file": str(writer.path), "n_catalogs": int(n_catalogs),
            "model": model.describe(), "magnitudes": magnitudes, "gutenberg_richter": {"mc": mc, "b": b},
            "seconds": time.perf_counter() - began, "mean_events": float(counts.mean()),
            "count_quantiles": {str(q): float(v) for q, v in zip((0.025, 0.5, 0.975),
                                                                   np.quantile(counts, [0.025, 0.5, 0.975]))},
            "max_events": int(max_events), "capped": int(capped.sum()), "observed_events": int(len(observed)),
            "observed_events_above_mc": int((observed["magnitude"] >= mc - 1e-9).sum())}
