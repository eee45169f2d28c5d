"""`stforecast batch`: a distributed run on a 2-worker LocalCluster, idempotent re-runs, atomic failures."""

from __future__ import annotations

import json

import pytest

from pipelines.batch_forecast import Job, load_jobs, run_batch


@pytest.fixture
def ridgecrest_model(ridgecrest_tiny):
    r, ckpt = ridgecrest_tiny
    return r.out_dir, ckpt


def write_config(path, folder, ckpt, out, extra=""):
    path.write_text(f'''[batch]
out = "{out}"
[[jobs]]
name = "rc-12h"
catalog = "{folder}"
model = "{ckpt}"
at = "2019-07-12"
horizon = "12h"
simulations = 20
samples = 200
max_events = 60
[[jobs]]
name = "rc-1d"
catalog = "{folder}"
model = "{ckpt}"
at = "2019-07-12"
horizon = "1d"
simulations = 20
samples = 200
max_events = 60
{extra}''')
    return path


def test_distributed_run_then_idempotent_rerun(ridgecrest_model, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("STFORECAST_ARTIFACT_ROOT", str(tmp_path / "art"))
    folder, ckpt = ridgecrest_model
    cfg = write_config(tmp_path / "batch.toml", folder, ckpt, tmp_path / "out")
    assert main(["batch", "--config", str(cfg), "--workers", "2"]) == 0  # a LocalCluster with 2 workers
    day = tmp_path / "out" / "2019-07-12"
    assert sorted(p.name for p in day.iterdir()) == ["rc-12h", "rc-1d"]
    for job in ("rc-12h", "rc-1d"):
        manifest = json.loads((day / job / "forecast.json").read_text())
        assert set(manifest["files_sha256"]) >= {"map.html", "forecast.nc", "forecast.png", "summary.json"}
        assert manifest["model_identity"].startswith("sha256:")
    stamp = {p: p.stat().st_mtime_ns for p in day.rglob("*")}
    out = capsys.readouterr().out
    assert "rc-12h: done" in out and "rc-1d: done" in out
    # each job decides to skip where it runs: in this process this time
    assert main(["batch", "--config", str(cfg), "--local", "--no-track"]) == 0
    assert "rc-12h: skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in day.rglob("*")} == stamp  # nothing rewritten
    import mlflow

    runs = mlflow.search_runs(experiment_names=["stforecast-batch"])
    assert sorted(runs["tags.mlflow.runName"]) == ["batch-rc-12h", "batch-rc-1d"]


def test_a_failing_job_exits_nonzero_and_leaves_the_previous_output(ridgecrest_model, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    folder, ckpt = ridgecrest_model
    jobs = [Job("rc-12h", str(folder), str(ckpt), "12h", 20, 200, "2019-07-12")]
    (first,) = run_batch(jobs, tmp_path / "out")
    assert first.status == "done"
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "2019-07-12" / "rc-12h").iterdir()}

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("pipelines.report.write_report", broken)
    (again,) = run_batch([Job("rc-12h", str(folder), str(ckpt), "12h", 30, 200, "2019-07-12")], tmp_path / "out")
    assert again.status == "failed" and "disk full" in again.message
    day = tmp_path / "out" / "2019-07-12"
    assert {p.name: p.read_bytes() for p in (day / "rc-12h").iterdir()} == before
    assert [p.name for p in day.iterdir()] == ["rc-12h"]  # no staging folder left
    monkeypatch.undo()
    cfg = write_config(tmp_path / "b.toml", folder, tmp_path / "missing.pt", tmp_path / "out2")
    assert main(["batch", "--config", str(cfg), "--workers", "1", "--no-track"]) == 1
    err = capsys.readouterr().err
    assert "job 'rc-12h' failed" in err and "missing.pt" in err


def test_config_errors_name_the_job(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[jobs]]\nname = "a"\ncatalog = "japan"\nmodel = "m.pt"\nhorizon_days = 3\n')
    with pytest.raises(ValueError, match=r"\[\[jobs\]\] number 1: .*horizon_days"):
        load_jobs(bad)
