"""``stforecast report``: a forecast people look at. From a trained model and an ingested catalog up to ``at``:

* next-event location samples → highest-density regions (50/80/95 %) → an offline Folium map with the recent
  observed events, the held-out truth when the catalog goes on past ``at``, and optionally the samples;
* horizon simulations → expected counts per cell and lead-time bin as a CF NetCDF (``forecast.nc``) and a PNG;
* ``summary.json``; all of it logged to MLflow as artifacts of one run tagged with the model it used.

Outputs go to a temporary folder swapped into place at the end (``pipelines.ingest.atomic_dir``), so a failed
report leaves the previous one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stforecast.defaults import SAMPLER_STEPS
from stforecast.forecast import (history_of, horizon_length, model_time_of, next_event, simulate_horizon, time_of,
                                 to_original_units)


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
    steps: int = SAMPLER_STEPS  # DDIM steps
    seed: int = 0
    grid_shape: tuple = (120, 160)


def run_report(folder: Path, model, req: ReportRequest, out: Path, model_uri: str = "", track: bool = True,
               log=print) -> dict:
    """Write the report into ``out`` (swapped into place when complete) and log it to MLflow."""
    from pipelines.ingest import atomic_dir, sweep_stale

    out = Path(out)
    sweep_stale(out)  # what a killed run left beside it
    with atomic_dir(out) as tmp:
        summary = write_report(folder, model, req, tmp, model_uri, log)
    if track:
        import mlflow

        from stforecast.tracking import setup

        manifest = json.loads((Path(folder) / "manifest.json").read_text())
        with mlflow.start_run(experiment_id=setup("stforecast-reports"),
                              run_name=f"report-{manifest['name']}") as run:
            mlflow.set_tags({"model_uri": model_uri, "catalog": manifest["name"],
                             "data.input_hash": manifest["input_hash"], "reference_time": summary["reference_time"]})
            mlflow.log_metric("expected_events", summary["expected_events"])
            mlflow.log_artifacts(str(out))
            summary["mlflow_run_id"] = run.info.run_id
    return summary


def write_report(folder: Path, model, req: ReportRequest, tmp: Path, model_uri: str = "", log=print) -> dict:
    """The report's files, written into the existing (empty) folder ``tmp``; returns the summary."""
    import folium

    from stforecast import maps
    from stforecast.density import kde_grid, mass_contours
    from stforecast.grids import expected_count_grid, grid_axes, next_event_grid, plot_grid, write_netcdf

    folder, tmp = Path(folder), Path(tmp)
    manifest = json.loads((folder / "manifest.json").read_text())
    schema = manifest["schema"]
    if manifest["split"].get("mode") == "given":
        raise ValueError(f"{folder}: a report needs one continuous catalog, not the source's own windows")
    events = pd.read_parquet(folder / "events.parquet")
    t_at = model_time_of(req.at, schema) if req.at else float(events["t"].iloc[-1])
    past = events[events["t"] < t_at] if req.at else events
    if len(past) < 2:
        raise ValueError(f"{folder}: fewer than 2 events before {req.at}")
    t_end = t_at + horizon_length(req.horizon, schema)
    truth = events[(events["t"] >= t_at) & (events["t"] < t_end)] if req.at else events.iloc[:0]
    geographic = bool(schema.get("crs_model"))
    crs = schema.get("crs_model")
    hist_t, hist_xy, marks = history_of(past, model.context)

    log(f"next event: {req.samples} samples; horizon {req.horizon}: {req.simulations} simulations")
    samples = next_event(model, hist_t, hist_xy, req.samples, marks=marks, steps=req.steps, seed=req.seed)
    hf = simulate_horizon(model, hist_t, hist_xy, t_end, req.simulations, marks=marks, max_events=req.max_events,
                          steps=req.steps, seed=req.seed, progress=True)
    # contours of the next event's location, and of all simulated events in the horizon
    next_contours = mass_contours(kde_grid(samples[["x", "y"]].to_numpy(), crs=crs), req.levels,
                                  to_crs="EPSG:4326" if geographic else None)
    layers = [("next event", next_contours)]
    if len(hf.events) >= 3:
        layers.append((f"events in the next {req.horizon}",
                       mass_contours(kde_grid(hf.events[["x", "y"]].to_numpy(), crs=crs), req.levels,
                                     to_crs="EPSG:4326" if geographic else None)))
    for i, (_, frame) in enumerate(layers):
        (tmp / f"contours_{i}.geojson").write_text(frame.to_json(drop_id=True))

    # the gridded forecast over the catalog's extent
    train = events[events["t"] < manifest["split"]["model_time"]["val_start"]]
    lo, hi = train[["x", "y"]].min().to_numpy(), train[["x", "y"]].max().to_numpy()
    pad = 0.05 * (hi - lo)
    x, y = grid_axes((lo[0] - pad[0], lo[1] - pad[1], hi[0] + pad[0], hi[1] + pad[1]), req.grid_shape)
    attrs = {"title": f"stforecast forecast for {manifest['name']}", "source": f"{model.describe()}: {model_uri}",
             "catalog": manifest["name"], "catalog_input_hash": manifest["input_hash"],
             "forecast_time_model_units": t_at, "time_unit": schema["time_unit"],
             "reference_time": str(time_of(t_at, schema))}
    ds = expected_count_grid(hf.events, req.simulations, t_at, np.linspace(0, t_end - t_at, req.lead_bins + 1),
                             x, y, schema, attrs)
    ds["next_event_density"] = next_event_grid(samples, x, y, schema)["density"]
    write_netcdf(ds, tmp / "forecast.nc")
    total = ds["expected_count"].sum("lead_time")
    total.attrs.update(long_name=f"expected events per cell in the next {req.horizon}")  # plot_grid adds the size
    plot_grid(total, tmp / "forecast.png", f"{manifest['name']}: expected events, next {req.horizon}",
              past.tail(req.recent), basemap=geographic)

    # the map
    lat, lon = ("lat", "lon") if geographic else ("y", "x")
    view = past.tail(req.recent)
    bounds = maps.view_bounds(np.r_[view[lat], next_contours.total_bounds[[1, 3]]],
                              np.r_[view[lon], next_contours.total_bounds[[0, 2]]])
    m = maps.new_map("geographic" if geographic else "pixel", bounds=bounds, online_tiles=req.online_tiles)
    # the catalog's own outline (Chicago's city shape, a fault zone, the maze): where events can be recorded
    sample = train.iloc[:: max(1, len(train) // 20000)]
    maps.add_outline(m, maps.footprint(sample[lon].to_numpy(), sample[lat].to_numpy()),
                     "area covered by the catalog (training events)")
    for (name, frame), palette in zip(layers, (maps.NEXT_EVENT_COLOURS, maps.HORIZON_COLOURS)):
        maps.add_contours(m, frame, name, palette=palette)
    marks = [c for c in ("time", "magnitude", "category", "unit") if c in events.columns]
    tick = maps.clock_tick(manifest)  # times are shown to the catalog's clock (see maps.format_time)
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
        s = to_original_units(samples, schema) if geographic else samples
        maps.add_events(m, s, "next-event samples", colour="#6a51a3", radius=1.5, lat=lat, lon=lon,
                        label_cols=(), show=False, limit=1000)
    folium.LayerControl(collapsed=False).add_to(m)
    maps.save_offline(m, tmp / "map.html", allow_online_tiles=req.online_tiles)

    covered = {}
    if len(truth) and geographic:
        import shapely

        for _, row in layers[-1][1].iterrows():
            covered[f"{row['level']:.2f}"] = float(shapely.contains_xy(row.geometry, truth["lon"], truth["lat"]).mean())
    summary = {"catalog": manifest["name"], "model": model_uri, "model_kind": model.name, "reference_time": attrs["reference_time"],
               "horizon": req.horizon, "simulations": req.simulations, "samples": req.samples,
               "expected_events": float(hf.counts.mean()), "capped_simulations": int(hf.capped.sum()),
               "observed_events_in_horizon": int(len(truth)) if req.at else None,
               "share_of_held_out_events_inside_horizon_regions": covered or None,
               "files": sorted(p.name for p in tmp.iterdir())}
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
