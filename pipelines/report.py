"""``stforecast report``: a forecast people look at. From a trained model and an ingested catalog up to ``at``:

* next-event location samples → highest-density regions (50/80/95 %) → an offline Folium map with the recent
  observed events, the held-out truth when the catalog goes on past ``at``, and optionally the samples;
* horizon simulations → expected counts per cell and lead-time bin as a CF NetCDF (``forecast.nc``) and a PNG;
* ``summary.json``; all of it logged to MLflow as artifacts of one run tagged with the model it used.

Outputs go to a temporary folder swapped into place at the end (``stforecast.io.atomic.atomic_dir``), so a failed
report leaves the previous one.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.common import add_model_guard, model_label, open_catalog, warn_clamped
from stforecast.config import safe_name
from stforecast.forecast import history_of, next_event, simulate_horizon
from stforecast.ingested import as_catalog, unwrap_longitudes
from stforecast.registry import BASELINES, load_forecaster
from stforecast.sampling import DEFAULT, Sampling
from stforecast.sampling import add_arguments as add_sampling_arguments
from stforecast.sampling import from_args as sampling_from_args


@dataclass
class ReportRequest:
    at: str | None = None
    samples: int = 2000
    horizon: str = "7d"
    lead_bins: int = 7
    simulations: int = 200
    max_events: int = 1000
    levels: tuple = (0.5, 0.8, 0.95)
    recent: int = 300  # observed events shown
    show_samples: bool = False
    online_tiles: bool = False
    sampling: Sampling = DEFAULT  # how DSTPP samples (recorded in the summary)
    seed: int = 0
    grid_shape: tuple = (120, 160)


def run_report(catalog, model, req: ReportRequest, out: Path, model_uri: str = "", track: bool = True,
               log=print) -> dict:
    """Write the report of ``catalog`` (an IngestedCatalog, folder or name) from any forecaster into ``out``
    (swapped into place when complete) and log it to MLflow."""
    from stforecast.io.atomic import atomic_dir

    catalog, out = as_catalog(catalog), Path(out)
    with atomic_dir(out, kind="report", record="summary.json") as tmp:  # (removes what killed runs left beside it)
        summary = write_report(catalog, model, req, tmp, model_uri, log)
    if track:
        import mlflow

        from stforecast.tracking import tracked_run

        tags = {"model_uri": model_uri, "model_kind": model.name, "catalog": catalog.name,
                "data.input_hash": catalog.input_hash, "reference_time": summary["reference_time"]}
        with tracked_run("stforecast-reports", f"report-{catalog.name}", tags) as run:
            mlflow.log_metric("expected_events", summary["expected_events"])
            mlflow.log_artifacts(str(out))
            summary["mlflow_run_id"] = run.info.run_id
    return summary


#: quantiles of the simulated event count a report's summary gives
COUNT_QUANTILES = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)


def write_report(catalog, model, req: ReportRequest, tmp: Path, model_uri: str = "", log=print) -> dict:
    """The report's files, written into the existing (empty) folder ``tmp``; returns the summary."""
    import folium

    from stforecast import maps
    from stforecast.density import kde_grid, mass_contours
    from stforecast.grids import expected_count_grid, grid_axes, next_event_grid, plot_grid, write_netcdf

    catalog, tmp = as_catalog(catalog), Path(tmp)
    catalog.require_continuous("a report")
    model = model.with_sampling(req.sampling)
    schema, units, events = catalog.schema, catalog.units, catalog.events
    t_at = units.model_time_of(req.at) if req.at else float(events["t"].iloc[-1])
    past = catalog.before(t_at) if req.at else events
    if len(past) < 2:
        raise ValueError(f"{catalog.folder}: fewer than 2 events before {req.at}")
    t_end = t_at + units.horizon(req.horizon)
    truth = events[(events["t"] >= t_at) & (events["t"] < t_end)] if req.at else events.iloc[:0]
    geographic = bool(units.crs_model)
    crs = units.crs_model
    hist_t, hist_xy, marks = history_of(past, model.context)

    log(f"next event: {req.samples} samples; horizon {req.horizon}: {req.simulations} simulations")
    samples = next_event(model, hist_t, hist_xy, req.samples, marks=marks, seed=req.seed)
    hf = simulate_horizon(model, hist_t, hist_xy, t_end, req.simulations, marks=marks, max_events=req.max_events,
                          seed=req.seed, progress=True)
    # the samples behind the next-event regions, in the catalog's units and its own (the forecast command's table)
    units.to_original(samples).to_parquet(tmp / "next_event.parquet", index=False)
    # contours of the next event's location, and of all simulated events in the horizon, on the catalog's region
    # grid (so no region can leave it, nor wrap the globe across the antimeridian)
    box = catalog.view_box()
    lon_center = catalog.lon_center if geographic else None

    def regions(xy):
        return mass_contours(kde_grid(xy, shape=req.grid_shape, bounds=box, crs=crs), req.levels,
                             to_crs="EPSG:4326" if geographic else None, lon_center=lon_center)

    next_contours = regions(samples[["x", "y"]].to_numpy())
    layers = [("next event", next_contours)]
    if len(hf.events) >= 3:
        layers.append((f"events in the next {req.horizon}", regions(hf.events[["x", "y"]].to_numpy())))
    for i, (_, frame) in enumerate(layers):
        (tmp / f"contours_{i}.geojson").write_text(frame.to_json(drop_id=True))

    # the gridded forecast over the catalog's extent
    train = catalog.train_events
    x, y = grid_axes(box, req.grid_shape)
    attrs = {"title": f"stforecast forecast for {catalog.name}", "source": f"{model.describe()}: {model_uri}",
             "catalog": catalog.name, "catalog_input_hash": catalog.input_hash,
             "forecast_time_model_units": t_at, "time_unit": units.time_unit,
             "reference_time": str(units.time_of(t_at))}
    ds = expected_count_grid(hf.events, req.simulations, t_at, np.linspace(0, t_end - t_at, req.lead_bins + 1),
                             x, y, schema, attrs)
    ds["next_event_density"] = next_event_grid(samples, x, y, schema)["density"]
    write_netcdf(ds, tmp / "forecast.nc")
    total = ds["expected_count"].sum("lead_time")
    total.attrs.update(long_name=f"expected events per cell in the next {req.horizon}")  # plot_grid adds the size
    plot_grid(total, tmp / "forecast.png", f"{catalog.name}: expected events, next {req.horizon}",
              past.tail(req.recent), basemap=geographic)

    # the map
    lat, lon = ("lat", "lon") if geographic else ("y", "x")
    view = past.tail(req.recent)
    if geographic:  # longitudes continuous across the antimeridian, as the regions'
        view = view.assign(lon=unwrap_longitudes(view["lon"], lon_center))
        truth = truth.assign(lon=unwrap_longitudes(truth["lon"], lon_center))
    bounds = catalog.view_bounds()  # the map opens on the catalog's region
    m = maps.new_map("geographic" if geographic else "pixel", bounds=bounds, online_tiles=req.online_tiles)
    # the catalog's own outline (Chicago's city shape, a fault zone, the maze): where events can be recorded
    sample = train.iloc[:: max(1, len(train) // 20000)]
    outline_x = unwrap_longitudes(sample[lon], lon_center) if geographic else sample[lon].to_numpy()
    maps.add_outline(m, maps.footprint(outline_x, sample[lat].to_numpy()),
                     "area covered by the catalog (training events)")
    for (name, frame), palette in zip(layers, (maps.NEXT_EVENT_COLOURS, maps.HORIZON_COLOURS)):
        maps.add_contours(m, frame, name, palette=palette)
    marks = [c for c in ("time", "magnitude", "category", "unit") if c in events.columns]
    tick = catalog.clock_tick_s  # times are shown to the catalog's clock (see maps.format_time)
    recent = {"type": "FeatureCollection", "frame": "geographic" if geographic else "pixel", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(r[lon]), float(r[lat])]},
         "properties": {c: maps.label_value(c, r[c], tick) for c in marks}} for _, r in view.iterrows()]}
    (tmp / "recent.geojson").write_text(json.dumps(recent))
    maps.add_events(m, view, f"observed: last {len(view)} events before the forecast", lat=lat, lon=lon,
                    label_cols=marks, tick_s=tick)
    if len(truth):
        maps.add_events(m, truth, f"held out: {len(truth)} events that happened", colour="#00a651", radius=4,
                        lat=lat, lon=lon, label_cols=marks, tick_s=tick)
    if req.show_samples:
        s = units.to_original(samples) if geographic else samples
        s = s.assign(lon=unwrap_longitudes(s["lon"], lon_center)) if geographic else s
        maps.add_events(m, s, "next-event samples", colour="#6a51a3", radius=1.5, lat=lat, lon=lon,
                        label_cols=(), show=False, limit=1000)
    folium.LayerControl(collapsed=False).add_to(m)
    maps.save_offline(m, tmp / "map.html", allow_online_tiles=req.online_tiles)

    covered = {}
    if len(truth) and geographic:
        import shapely

        for _, row in layers[-1][1].iterrows():
            covered[f"{row['level']:.2f}"] = float(shapely.contains_xy(row.geometry, truth["lon"], truth["lat"]).mean())
    summary = {"catalog": catalog.name, "model": model_uri, "model_kind": model.name,
               "reference_time": attrs["reference_time"], "sampling": req.sampling.to_dict(),
               "horizon": req.horizon, "simulations": req.simulations, "samples": req.samples,
               "expected_events": float(hf.counts.mean()), "capped_simulations": int(hf.capped.sum()),
               "clamped_share": {"next_event": samples.attrs.get("clamped_share"), "horizon": hf.clamped_share},
               # the simulated count's distribution beside what happened: is the observed count inside its 95 %?
               "simulated_count_quantiles": {f"{q:g}": float(v) for q, v in
                                             zip(COUNT_QUANTILES, np.quantile(hf.counts, COUNT_QUANTILES))},
               "observed_events_in_horizon": int(len(truth)) if req.at else None,
               "share_of_held_out_events_inside_horizon_regions": covered or None,
               "view_bounds": bounds,
               "files": sorted(p.name for p in tmp.iterdir())}
    for share, what in ((samples.attrs.get("clamped_share"), "next-event samples"),
                        (hf.clamped_share, "simulated events' values")):
        warn_clamped(share, what, summary, log)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# -------------------------------------------------------------------------------- the `stforecast report` command
def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="forecast map (offline HTML), gridded forecast (NetCDF + PNG), logged to MLflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Draw a forecast: regions holding 50/80/95 % of the next event's location and of the events\n"
                     "in the horizon on a Folium map that works offline (Natural Earth basemap; pixel frame for\n"
                     "spikes), the recent observed events and, when --at is inside the catalog, the events that\n"
                     "happened; expected counts per cell and lead time as CF NetCDF and a PNG."),
        epilog=("examples:\n"
                "  stforecast report --data japan --model runs/demo-japan/best.pt --horizon 7d\n"
                "  stforecast report --data japan --model models:/dstpp/1 --at 2016-04-14T13:00 --horizon 3d"))
    p.add_argument("--data", required=True, help="an ingested catalog name (under data/processed) or folder")
    p.add_argument("--model", required=True, help=f"checkpoint path, MLflow URI, a baseline ({', '.join(BASELINES)}) "
                                                  "or ensemble:A+B (their mixture, weights fitted on validation)")
    p.add_argument("--at", help="forecast time (default: after the catalog's last event)")
    p.add_argument("--horizon", default="7d", help="e.g. 24h, 7d (default 7d)")
    p.add_argument("--lead-bins", type=int, default=7, help="lead-time bins in the NetCDF (default 7)")
    p.add_argument("--samples", type=int, default=2000, help="next-event samples for its regions (default 2000)")
    p.add_argument("--simulations", type=int, default=200,
                   help="continuations simulated over the horizon (default 200)")
    p.add_argument("--levels", default="0.5,0.8,0.95", help="probability levels of the regions")
    p.add_argument("--show-samples", action="store_true", help="add a (hidden) layer with the samples")
    p.add_argument("--online-tiles", action="store_true", help="offer OpenStreetMap tiles (needs internet)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="output folder (default reports/map-<data>-<model>)")
    add_model_guard(p)
    add_sampling_arguments(p)
    p.add_argument("--no-track", action="store_true", help="do not log the report to MLflow")


def run(args) -> int:
    from rich.console import Console

    console = Console()
    from stforecast.io.atomic import check_replaceable

    catalog = open_catalog(args.data)
    out = Path(args.out or Path("reports") / f"map-{safe_name(catalog.folder.name)}-{model_label(args.model)}")
    check_replaceable(out, "report", "summary.json")  # refuse before any work (atomic_dir checks again at the end)
    if out.exists():
        console.print(f"replacing the previous report in {out} when this one is complete")
    model = load_forecaster(args.model, catalog, allow_other_catalog=args.allow_other_catalog, log=console.print,
                            track=not args.no_track)
    req = ReportRequest(at=args.at, horizon=args.horizon, lead_bins=args.lead_bins, samples=args.samples,
                        simulations=args.simulations, levels=tuple(float(v) for v in args.levels.split(",")),
                        show_samples=args.show_samples, online_tiles=args.online_tiles,
                        sampling=sampling_from_args(args), seed=args.seed)
    summary = run_report(catalog, model, req, out, model_uri=args.model, track=not args.no_track,
                         log=console.print)
    console.print(f"expected events in the next {args.horizon}: {summary['expected_events']:.2f}")
    console.print(f"map (open in a browser, works offline): {out / 'map.html'}")
    console.print(f"gridded forecast: {out / 'forecast.nc'} (NetCDF), {out / 'forecast.png'}")
    if "mlflow_run_id" in summary:
        console.print(f"MLflow run: {summary['mlflow_run_id']} (experiment stforecast-reports)")
    return 0
