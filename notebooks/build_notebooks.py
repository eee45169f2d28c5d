"""Writes the three analyst notebooks (earthquakes, crime, spikes) from one template, without outputs.

    python notebooks/build_notebooks.py

Each notebook ingests its catalog, trains a small DSTPP (or loads a registered one), forecasts the next event and
a horizon, scores the model against the baselines on held-out events, and draws the map. With the environment
variable STFORECAST_QUICK=1 (the test suite) every step runs at toy sizes.
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent

KINDS = {
    "earthquakes": dict(
        catalog="japan", title="Earthquakes: where and when is the next shock in Japan?",
        intro=(
            "Earthquakes cluster: a large shock is followed by aftershocks, close in space and time, whose rate decays "
            "roughly as 1/t (Omori's law). A **spatio-temporal point process** describes such a catalog as a sequence "
            "of events (t_i, x_i, y_i); a forecast is a probability distribution over *when* the next event happens "
            "and *where*. Here we use the USGS catalog of Japan 1990–2019 with the EarthquakeNPP split: the model "
            "learns from 1992–2006, is tuned on 2007–2010 and is scored on 2011–2019, which it never sees."),
        units="days and kilometres", at="2016-04-14T13:00", horizon="3d",
        story="The report is drawn for the Kumamoto sequence: the first M6.2 shock struck on 14 April 2016 at "
              "12:26 UTC; the M7.0 mainshock followed 28 hours later."),
    "crime": dict(
        catalog="chicago", title="Crime: where and when is the next aggravated assault in Chicago?",
        intro=(
            "Crime is not uniform in space or time: it concentrates in places and hours, and some offences trigger "
            "others nearby (retaliation, 'near repeats'). Treating the incident log as a **spatio-temporal point "
            "process** lets us forecast the next incident's time and place as a distribution rather than a single "
            "guess. Here: Chicago aggravated assaults 2010–2019, trained on 2010–2016, tuned on 2017, scored on "
            "2018–2019."),
        units="hours and metres", at="2018-07-04T00:00", horizon="24h",
        story="The report is drawn for 4 July 2018 (local midnight is 05:00 UTC; the forecast starts at 00:00 UTC)."),
    "spikes": dict(
        catalog="wmaze", title="Neural spikes: when and where does a rat's hippocampus fire next?",
        intro=(
            "Place cells in the hippocampus fire when the animal is at particular places. If each spike is marked "
            "with the animal's position at that moment, a recording becomes a **spatio-temporal point process** in "
            "the arena's pixel frame: forecasting the next spike's time and location is forecasting the animal's "
            "neural activity and its movement together. Here: a W-maze recording; the first part trains, the next "
            "tunes, the last is held out."),
        units="seconds and pixels", at=None, horizon="5s",
        story="The report is drawn after the last recorded spike; maps use the arena's pixel frame, not a globe."),
}


def cells(kind: str, spec: dict) -> list:
    md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
    at = repr(spec["at"])
    return [
        md(f"# {spec['title']}\n\n{spec['intro']}\n\n"
           "**What this notebook does**: ingest the catalog (clean, split by time, window into sequences) → train a "
           "small DSTPP, a diffusion model that *generates* the next event given the history → forecast the next "
           "event and the next horizon → score it against classical baselines on held-out events → draw the "
           f"forecast on a map. Units throughout: {spec['units']}."),
        md("## Settings\n\n`QUICK` (set `STFORECAST_QUICK=1`) runs every step at toy sizes, as the test suite does. "
           "Set `MODEL_URI` to a registered model (for example `models:/dstpp/1`) to skip training."),
        code("import os\n\nQUICK = os.environ.get('STFORECAST_QUICK') == '1'\n"
             f"CATALOG = {spec['catalog']!r}\nMODEL_URI = None\nFORECAST_AT = {at}\nHORIZON = {spec['horizon']!r}\n"
             "EPOCHS, MAX_STEPS = (1, 10) if QUICK else (30, None)\n"
             "TARGETS, SAMPLES = (40, 20) if QUICK else (500, 100)\n"
             "SIMULATIONS, MAX_EVENTS = (20, 60) if QUICK else (200, 1000)"),
        code("import json\nfrom pathlib import Path\n\nimport matplotlib.pyplot as plt\nimport pandas as pd\nfrom IPython.display import IFrame, "
             "Image, Markdown, display\n\nfrom pipelines.ingest import run_ingest\nfrom stforecast.config import "
             "REPO_ROOT, load_settings\nfrom stforecast.sampling import Sampling\n\nsettings = load_settings()\n"
             "# where this notebook's model, scores and report go (STFORECAST_NOTEBOOK_WORK: somewhere else)\n"
             "WORK = Path(os.environ.get('STFORECAST_NOTEBOOK_WORK', REPO_ROOT / 'reports' / 'notebooks')) / CATALOG\n"
             "WORK.mkdir(parents=True, exist_ok=True)"),
        md("## 1. Ingest\n\nThe raw file is read in place from the data root, every row is validated (a bad row is "
           "reported by file, line and field), duplicates are dropped, times are ordered and ties spread inside one "
           "clock tick, coordinates are projected to a local metric frame, and the events are split by **date** "
           "into train / validation / test. Re-running is a no-op when nothing changed."),
        code("ingested = run_ingest(settings.catalog(CATALOG), settings, progress=False)\nmanifest = ingested.manifest\n"
             "events = pd.read_parquet(ingested.out_dir / 'events.parquet')\nprint(manifest['title'])\n"
             "pd.DataFrame(manifest['counts']['splits']).T"),
        code("fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))\n"
             "for split, colour in (('train', 'tab:blue'), ('val', 'tab:orange'), ('test', 'tab:green')):\n"
             "    part = events[events['split'] == split]\n"
             "    ax1.scatter(part['x'], part['y'], s=1, c=colour, label=split, alpha=0.5)\n"
             "    ax2.hist(part['t'], bins=100, color=colour, label=split)\n"
             "unit = manifest['schema']['spatial_unit']\n"
             "ax1.set(title='where: events by split', xlabel=f'x ({unit})', ylabel=f'y ({unit})', aspect='equal')\n"
             "ax2.set(title='when: events per bin of model time', xlabel=f\"time ({manifest['schema']['time_unit']})\")\n"
             "ax1.legend(markerscale=8); ax2.legend(); plt.tight_layout(); plt.show()"),
        md("## 2. Train DSTPP (or load a registered model)\n\nThe model encodes the history with self-attention "
           "(time, space and joint views) and learns to turn noise into the next event (waiting time, x, y) step by "
           "step — a denoising diffusion model. The checkpoint is chosen on the **validation** split; the test split "
           "is never read during training."),
        code("from stforecast.tracking import fetch_model\nfrom stforecast.train import TrainConfig, train\n\n"
             "if MODEL_URI:\n    model = fetch_model(MODEL_URI)\nelse:\n"
             "    cfg = TrainConfig(data=str(ingested.out_dir), epochs=EPOCHS, max_steps=MAX_STEPS, batch_size=8, lr=2e-3,\n"
             "                      model={'d_model': 32, 'n_layers': 2, 'n_heads': 4, 'd_ff': 64, 'rnn_hidden': 64},\n"
             "                      out_dir=str(WORK / 'run'), progress=False)\n"
             "    # run again, it reuses (or continues) the run in WORK/run; force=True starts it over\n"
             "    result = train(cfg, resume=True)\n"
             "    print(f'best validation loss {result.best_val:.4f} after {result.steps} steps')\n"
             "    model = fetch_model(str(WORK / 'run' / 'best.pt'))"),
        md("## 3. Forecast the next event\n\nA forecast is a cloud of samples: each is one plausible next event. "
           "Their spread *is* the uncertainty."),
        code("from stforecast.forecast import next_event\nfrom stforecast.ingested import IngestedCatalog\n\n"
             "units = IngestedCatalog.open(ingested.out_dir).units\n"
             "t_at = units.model_time_of(FORECAST_AT) if FORECAST_AT else float(events['t'].iloc[-1])\n"
             "past = events[events['t'] < t_at] if FORECAST_AT else events\n"
             "samples = next_event(model, past['t'].to_numpy()[-128:], past[['x', 'y']].to_numpy()[-128:], 500)\n"
             "fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))\n"
             "ax1.hist(samples['dt'], bins=60, color='tab:purple')\n"
             "ax1.set(title='waiting time to the next event', xlabel=manifest['schema']['time_unit'], xscale='log')\n"
             "ax2.scatter(past['x'].tail(300), past['y'].tail(300), s=4, c='tab:blue', label='last 300 events')\n"
             "ax2.scatter(samples['x'], samples['y'], s=2, c='tab:purple', alpha=0.4, label='next-event samples')\n"
             "ax2.set(title='where the next event may happen', aspect='equal'); ax2.legend(markerscale=4)\n"
             "plt.tight_layout(); plt.show()\n"
             "units.to_original(samples).describe().T"),
        md("## 4. Score it against classical baselines on held-out events\n\nEvery model forecasts the same held-out "
           "test events, each from everything before it: a homogeneous **Poisson** process with a static spatial "
           "density (no memory), a self-exciting **Hawkes** process (each event raises the rate nearby for a while)"
           + (", and **ETAS**, the seismologists' standard (aftershock productivity grows with magnitude)"
              if kind == "earthquakes" else "") +
           ". Lower is better for the likelihood (NLL), CRPS and energy score; coverage should match its nominal "
           "level. DSTPP's NLL is the exact density of its probability-flow ODE (the distribution its samples come from)."
           + (" On a crime catalog the table adds the field's own measures: the hit rate and predictive accuracy "
              "index (PAI) of each model's hotspots, the top 5 % of the 150 m cells where crime is recorded, per "
              "forecast day and week." if kind == "crime" else "")),
        code("from pipelines.evaluation import evaluate_catalog\n\n"
             "ev = evaluate_catalog(ingested.out_dir, model, ('poisson_kde', 'hawkes', 'etas'), 'test', TARGETS,\n"
             "                      SAMPLES, Sampling(tolerance=1e-2 if QUICK else 1e-4), bound_repeats=1 if QUICK else 4,\n"
             "                      out_dir=WORK / 'eval', hotspot_periods=4 if QUICK else 60,\n"
             "                      hotspot_samples=50 if QUICK else 500,\n"
             "                      baseline_fit_events=1500 if QUICK else None, log=lambda *a: None)\n"
             "cols = ['model', 'nll_joint', 'nll_dt', 'nll_xy', 'crps_dt', 'energy_xy', 'cover_dt_80', 'cover_xy_80', "
             "'nll_kind']\n"
             "cols += [c for c in ('hit_day_5', 'pai_day_5', 'pai_week_5') if c in ev.table]  # crime: hotspot measures\n"
             "ev.table[cols].round(3)"),
        code("display(Image(filename=str(WORK / 'eval' / 'reliability.png')))"),
        md(f"## 5. The forecast on a map\n\n{spec['story']} Shaded: the regions holding 50/80/95 % of the forecast; "
           "dots: recent observed events; green: what actually happened (when the forecast time is inside the "
           "catalog). The map works offline."),
        code("from pipelines.report import ReportRequest, run_report\n\n"
             "req = ReportRequest(at=FORECAST_AT, horizon=HORIZON, samples=SAMPLES * 10, simulations=SIMULATIONS,\n"
             "                    max_events=MAX_EVENTS, lead_bins=3)\n"
             "summary = run_report(ingested.out_dir, model, req, WORK / 'report', model_uri=MODEL_URI or 'notebook',\n"
             "                     track=False, log=lambda *a: None)\n"
             "print(json.dumps({k: summary[k] for k in ('reference_time', 'horizon', 'expected_events', "
             "'observed_events_in_horizon')}, indent=1))\n"
             "IFrame(src=os.path.relpath(WORK / 'report' / 'map.html'), width='100%', height=520)"),
        code("display(Image(filename=str(WORK / 'report' / 'forecast.png')))\n"
             "import xarray as xr\n\nwith xr.open_dataset(WORK / 'report' / 'forecast.nc') as grid:\n"
             "    display(grid)"),
        md("## What to try next\n\n- Train longer (`EPOCHS`, or `stforecast train --config data/train_demo.toml`) "
           "and compare again.\n- `stforecast benchmark` runs this comparison on all three catalogs.\n- "
           "`stforecast batch` and `stforecast serve` turn the report into a scheduled, interactive risk map."),
    ]


def main() -> None:
    for kind, spec in KINDS.items():
        nb = nbf.v4.new_notebook()
        nb["cells"] = cells(kind, spec)
        nb["metadata"] = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                          "language_info": {"name": "python"}}
        nbf.write(nb, HERE / f"{kind}.ipynb")
        print(HERE / f"{kind}.ipynb")


if __name__ == "__main__":
    main()
