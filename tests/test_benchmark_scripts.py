"""The benchmark scripts prepare what they read (an ingested catalog) and time the training loop's own step."""

from __future__ import annotations

import pytest
import torch

from benchmarks.prepare import ensure_ingested

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "rnn_hidden": 16, "denoiser_width": 32, "steps": 30}


@pytest.fixture
def processed(tmp_path, monkeypatch, settings):
    """The processed directory pointed at an empty tmp folder, as on a checkout where only `make test` ran."""
    monkeypatch.setenv("STFORECAST_PROCESSED_DIR", str(tmp_path / "processed"))
    return tmp_path / "processed"


def test_a_missing_catalog_is_ingested_once_then_found_up_to_date(processed):
    from pipelines.ingest import run_ingest
    from stforecast.config import load_settings

    said: list[str] = []
    folder = ensure_ingested("ridgecrest", log=said.append)
    assert folder == processed / "ridgecrest" and (folder / "manifest.json").is_file()
    assert len(said) == 1 and "ingesting catalog 'ridgecrest'" in said[0]
    assert ensure_ingested("ridgecrest", log=said.append) == folder  # found: no second ingestion
    assert ensure_ingested(str(folder), log=said.append) == folder  # the folder itself works too
    assert len(said) == 1
    settings = load_settings()
    assert run_ingest(settings.catalog("ridgecrest"), settings, progress=False).skipped  # up to date


def test_an_unknown_catalog_or_missing_checkpoint_is_one_line(processed, tmp_path):
    from benchmarks import bound_gap

    with pytest.raises(SystemExit, match="not a catalog of"):
        ensure_ingested("no_such_catalog", log=lambda line: None)
    with pytest.raises(SystemExit) as e:
        bound_gap.main(["--data", "ridgecrest", "--model", str(tmp_path / "missing.pt")])
    message = str(e.value)
    assert "\n" not in message and "stforecast train --data ridgecrest" in message
    assert not (processed / "ridgecrest").exists()  # refused before ingesting anything


def test_train_speed_times_the_training_loops_step(processed, monkeypatch):
    import stforecast.train as training
    from benchmarks import train_speed

    calls = {"n": 0}
    real = training.train_step

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", counting)
    folder = ensure_ingested("ridgecrest", log=lambda line: None)
    r = train_speed.measure("default", 2, torch.device("cpu"), str(folder), batch_size=8, model_overrides=TINY)
    assert calls["n"] == 3 + 2  # the warm-up and timed steps all go through stforecast.train.train_step
    assert r["events"] > 0 and r["events_per_s"] > 0
