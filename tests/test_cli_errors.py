"""Errors a user can act on: every failing command prints one line on stderr (what is wrong, where, what to do),
never a traceback; Ctrl-C says what was kept; every flag explains itself."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from pipelines.cli import build_parser, main


def one_line_error(capfd, *must_contain: str) -> str:
    """The command's stderr: exactly one non-empty line, no traceback, naming what it must name."""
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "File \"" not in err
    for text in must_contain:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def tiny(ridgecrest_tiny):
    r, ckpt = ridgecrest_tiny
    return r.out_dir, ckpt


def test_a_checkpoint_path_that_does_not_exist(tiny, tmp_path, capfd):
    folder, _ = tiny
    missing = tmp_path / "runs" / "nope" / "best.pt"
    assert main(["forecast", "--data", str(folder), "--model", str(missing), "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capfd, "error:", str(missing), "stforecast train")
    assert "mlflow" not in line.lower() or "models:/" in line


def test_an_mlflow_model_that_does_not_exist(tiny, tmp_path, capfd, monkeypatch):
    folder, _ = tiny
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("STFORECAST_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    assert main(["forecast", "--data", str(folder), "--model", "models:/nosuch/1", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capfd, "error:", "models:/nosuch/1", "MLflow")


@pytest.mark.parametrize("damage", ["empty", "truncated", "foreign"])
def test_a_damaged_checkpoint(tiny, tmp_path, capfd, damage):
    import torch

    folder, ckpt = tiny
    bad = tmp_path / "best.pt"
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        bad.write_bytes(ckpt.read_bytes()[:2000])
    else:
        torch.save({"weights": torch.zeros(3)}, bad)
    for command in (["forecast", "--out", str(tmp_path / "o")], ["report", "--no-track", "--out", str(tmp_path / "r")],
                    ["evaluate", "--no-track", "--out", str(tmp_path / "e")]):
        assert main([command[0], "--data", str(folder), "--model", str(bad), *command[1:]]) == 2
        one_line_error(capfd, "error:", str(bad), "checkpoint")


@pytest.mark.parametrize("setting, words", [("lr=abc", "lr must be a number"),
                                            ("epochs=1.5", "epochs must be a whole number"),
                                            ("model.d_model=wide", "model.d_model must be a whole number"),
                                            ("no_such=1", "unknown training setting"),
                                            ("lr", "must look like key=value")])
def test_bad_training_settings(tiny, tmp_path, capfd, setting, words):
    folder, _ = tiny
    assert main(["train", "--data", str(folder), "--no-track", "--out", str(tmp_path / "run"),
                 "--set", setting]) == 2
    one_line_error(capfd, "error:", words)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_benchmark_settings_file_trains(tmp_path):
    """data/benchmark.toml keeps its training settings under [train]: `train --config` reads them (and only them)."""
    from stforecast.config import REPO_ROOT
    from stforecast.train import load_train_config

    cfg = load_train_config(REPO_ROOT / "data" / "benchmark.toml", ["epochs=2"])
    assert cfg.batch_size == 8 and cfg.epochs == 2 and cfg.model["d_model"] == 32


def test_a_model_from_a_catalog_in_other_units_is_refused(tiny, tmp_path, capfd):
    """A Japan checkpoint on an hourly, metre-unit crime catalog: refused, or run with a warning when asked."""
    folder, ckpt = tiny
    other = tmp_path / "crime-like"
    shutil.copytree(folder, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["name"], manifest["schema"]["time_unit"], manifest["schema"]["spatial_unit"] = "crime", "hours", "m"
    (other / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "fc"
    assert main(["forecast", "--data", str(other), "--model", str(ckpt), "--samples", "20", "--out", str(out)]) == 2
    one_line_error(capfd, "error:", "ridgecrest", "crime", "hours", "--allow-other-catalog")
    assert not out.exists()
    assert main(["forecast", "--data", str(other), "--model", str(ckpt), "--samples", "20", "--steps", "3",
                 "--out", str(out), "--allow-other-catalog"]) == 0
    assert "warning: the model was trained on catalog 'ridgecrest'" in capfd.readouterr().out


def test_evaluate_with_model_none_scores_the_baselines(tiny, tmp_path, capfd):
    folder, _ = tiny
    assert main(["evaluate", "--data", str(folder), "--model", "none", "--baselines", "poisson_kde", "--targets", "20",
                 "--samples", "20", "--no-track", "--out", str(tmp_path / "e")]) == 0
    out = " ".join(capfd.readouterr().out.split())  # rich wraps long lines
    assert "poisson_kde" in out and "first 20 of them" in out  # the HDR cap is said, not silent
    assert "dstpp" not in (tmp_path / "e" / "next_event.csv").read_text()


def test_ctrl_c_in_training_says_where_to_resume(tiny, tmp_path, capfd, monkeypatch):
    import stforecast.train as train_module

    folder, _ = tiny
    run = tmp_path / "run"
    original, calls = train_module.lr_at, {"n": 0}

    def interrupt_at_step_4(step, *a, **k):
        calls["n"] += 1
        if step == 4:
            raise KeyboardInterrupt
        return original(step, *a, **k)

    monkeypatch.setattr(train_module, "lr_at", interrupt_at_step_4)
    args = ["train", "--data", str(folder), "--no-track", "--no-progress", "--out", str(run), "--epochs", "3",
            "--batch-size", "4", "--set", "checkpoint_every=2", "--set", "model.d_model=8", "--set", "model.d_ff=16",
            "--set", "model.rnn_hidden=8", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
            "--set", "model.steps=10"]
    assert main(args) == 130
    line = one_line_error(capfd, "interrupted at step 4", "last.pt holds step 4", f"--out {run} --resume")
    assert "KeyboardInterrupt" not in line
    monkeypatch.setattr(train_module, "lr_at", original)
    # the line's advice works: --out and --resume alone continue with the settings the run started with
    assert main(["train", "--out", str(run), "--resume", "--no-track", "--no-progress"]) == 0
    out = capfd.readouterr().out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert epoch_lines and all("validation loss" in line and "events/s" in line for line in epoch_lines)
    assert epoch_lines[-1].startswith("epoch 3/3")


def test_ctrl_c_in_ingest_keeps_the_previous_output(capfd, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipelines.ingest.cli.run_ingest", interrupted)  # the command's own name for it
    assert main(["ingest", "earthquakes", "ridgecrest", "--out", "/nonexistent-never-written"]) == 130
    one_line_error(capfd, "interrupted; previous output kept")


def test_an_unexpected_error_is_one_line_with_a_way_to_see_more(tiny, tmp_path, capfd, monkeypatch):
    folder, ckpt = tiny

    def broken(*a, **k):
        raise ZeroDivisionError("float division by zero\nsecond line")

    monkeypatch.setattr("pipelines.forecasting.run_forecast", broken)
    assert main(["forecast", "--data", str(folder), "--model", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capfd, "error: unexpected ZeroDivisionError: float division by zero second line", "-v")
    with pytest.raises(ZeroDivisionError):  # -v shows the traceback
        main(["-v", "forecast", "--data", str(folder), "--model", str(ckpt), "--out", str(tmp_path / "o")])


def test_a_failed_batch_job_is_one_line(tiny, tmp_path, capfd):
    folder, _ = tiny
    cfg = tmp_path / "batch.toml"
    cfg.write_text(f'[batch]\nout = "{tmp_path / "b"}"\n[[jobs]]\nname = "j"\ncatalog = "{folder}"\n'
                   f'model = "{tmp_path / "missing.pt"}"\nhorizon = "12h"\n')
    assert main(["batch", "--config", str(cfg), "--workers", "1", "--no-track"]) == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "distributed" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "job 'j' failed" in lines[0] and "missing.pt" in lines[0]


def test_every_flag_explains_itself():
    """Every command has a description, every flag a help string, and no metavar shows an internal name."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    problems = []
    for name, parser in sub.choices.items():
        if not parser.description:
            problems.append(f"{name}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = "/".join(action.option_strings) or action.dest
            if not action.help:
                problems.append(f"{name} {flag}: no help")
            shown = action.metavar or (None if action.choices else action.dest.upper())
            if action.option_strings and action.nargs != 0 and shown and "." in str(shown):
                problems.append(f"{name} {flag}: metavar {shown}")
    assert problems == []


def test_one_set_of_sampling_defaults():
    """forecast, report, batch, evaluate and the benchmark sample with the same DDIM steps and score with the same
    number of samples."""
    import tomllib

    from pipelines.batch_forecast import Job
    from pipelines.forecasting import ForecastRequest
    from pipelines.report import ReportRequest
    from stforecast.config import REPO_ROOT
    from pipelines.benchmark import benchmark_sampling, load_benchmark_config
    from stforecast.defaults import SCORE_SAMPLES
    from stforecast.sampling import CATALOGS, DEFAULT, from_args

    parse = build_parser().parse_args
    bench = tomllib.loads((REPO_ROOT / "data" / "benchmark.toml").read_text())
    for argv in (["forecast", "--data", "d", "--model", "m"], ["report", "--data", "d", "--model", "m"],
                 ["evaluate", "--data", "d"]):
        assert from_args(parse(argv)) == DEFAULT, argv
    assert from_args(parse(["forecast", "--data", "d", "--model", "m", "--format", "csep"]), CATALOGS) == CATALOGS
    assert from_args(parse(["csep-eval", "--data", "d", "--model", "m", "--start", "2020-01-01"]), CATALOGS) == CATALOGS
    assert parse(["evaluate", "--data", "d"]).samples == SCORE_SAMPLES == bench["benchmark"]["samples"]
    assert benchmark_sampling(load_benchmark_config()) == DEFAULT
    assert ForecastRequest().sampling is None and ReportRequest().sampling == DEFAULT == Job("a", "b", "c").sampling()


def test_serve_without_a_forecast_says_what_to_run(tmp_path):
    import threading
    import urllib.error
    import urllib.request

    from pipelines.serve import make_server

    server = make_server(tmp_path / "empty", "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stopper = threading.Timer(30, server.shutdown)
    stopper.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/", timeout=10)
        body = err.value.read().decode()
        assert err.value.code == 503 and "stforecast batch" in body and "make demo" in body
        assert "overload" not in body.lower()
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()
