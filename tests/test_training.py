"""Training: it learns, it resumes to the same result, it runs under DDP, and MLflow holds a model that reloads."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.ingest import run_ingest
from stforecast.ingested import as_catalog
from stforecast.ingested import IngestedCatalog
from stforecast.checkpoints import load_model
from stforecast.models.base import Histories
from stforecast.sampling import Sampling
from stforecast.train import TrainConfig, build_model, evaluate_loss, train

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "rnn_hidden": 16, "denoiser_width": 32, "steps": 100}


@pytest.fixture(scope="module")
def windows(settings, tmp_path_factory):
    """The DSTPP paper's Japan windows, ingested once for this module."""
    out = tmp_path_factory.mktemp("processed")
    return run_ingest(settings.catalog("dstpp_japan"), settings, out_root=out, progress=False).out_dir


def tiny(windows, tmp_path, **kw) -> TrainConfig:
    values = dict(data=str(windows), model=dict(TINY), batch_size=32, lr=3e-3, warmup_epochs=0.1, progress=False,
                  out_dir=str(tmp_path / "run"), seed=7)
    values.update(kw)
    return TrainConfig(**values)


def test_short_training_reduces_validation_loss(windows, tmp_path):
    cfg = tiny(windows, tmp_path, epochs=1, max_steps=45)
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg.model_config(), windows)
    val = as_catalog(windows).sequences("val")
    before = evaluate_loss(untrained, val, cfg.batch_size, torch.device("cpu"))
    result = train(cfg)
    after = evaluate_loss(load_model(tmp_path / "run" / "best.pt"), val, cfg.batch_size, torch.device("cpu"))
    assert after == pytest.approx(result.best_val, rel=1e-6)  # the saved best is what was selected
    assert after < 0.8 * before, (before, after)


def test_resume_gives_the_same_run(windows, tmp_path, monkeypatch):
    """Interrupted after an epoch boundary (past an evaluation and a best checkpoint), resumed: same weights,
    same history, same best. 950 sequences / 128 = 8 steps per epoch; 12 steps; the stop comes in step 10."""
    kw = dict(max_steps=12, checkpoint_every=1, batch_size=128)
    straight = train(tiny(windows, tmp_path / "a", **kw))

    from stforecast.batch import SequenceSet

    original, calls = SequenceSet.collate, {"n": 0}

    def interrupted(self, index):
        calls["n"] += 1
        if calls["n"] == 11:  # 8 training batches, 1 validation batch, steps 9 and 10 → stop in step 10
            raise KeyboardInterrupt
        return original(self, index)

    cfg = tiny(windows, tmp_path / "b", **kw)
    monkeypatch.setattr(SequenceSet, "collate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(SequenceSet, "collate", original)
    ckpt = torch.load(tmp_path / "b" / "run" / "last.pt", weights_only=True)
    assert ckpt["state"]["step"] == 9 and ckpt["state"]["epoch"] == 1
    resumed = train(cfg, resume=True)
    assert resumed.steps == straight.steps == 12
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history == straight.history and resumed.best_val == straight.best_val
    # resuming a finished run trains nothing more
    again = train(cfg, resume=True)
    assert not again.trained_now and again.steps == 12


def test_a_fresh_run_never_reports_a_previous_runs_checkpoint(windows, tmp_path):
    train(tiny(windows, tmp_path, max_steps=2))
    other = dict(TINY, d_model=8)
    result = train(tiny(windows, tmp_path, max_steps=1, model=other), force=True)  # start the folder over
    assert result.best_step == 1
    assert load_model(tmp_path / "run" / "best.pt").cfg.d_model == 8


def test_mlflow_run_holds_a_registered_model_that_reloads_and_samples(windows, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from stforecast import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("STFORECAST_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    result, uri = tracking.train_and_track(tiny(windows, tmp_path, max_steps=32, batch_size=64),
                                           registered_name="dstpp-test")  # 15 steps per epoch: 2 evaluations
    assert uri == "models:/dstpp-test/1"
    client = MlflowClient()
    version = client.get_model_version("dstpp-test", "1")
    run = client.get_run(version.run_id)
    assert run.data.tags["data.input_hash"] == IngestedCatalog.open(windows).input_hash
    assert run.data.tags["git_commit"] and run.data.params["model.d_model"] == "16" and run.data.params["lr"] == "0.003"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [15, 30]  # once per epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [15, 30]
    assert {"train_loss", "val_loss", "lr", "best_val_loss"} <= set(run.data.metrics)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    model = tracking.fetch_model(uri)
    data = as_catalog(windows).sequences("test")
    histories, _ = data.prefixes(np.arange(4), data.lengths[:4] - 1)
    out = model.with_sampling(Sampling("ddim", 5)).forecast(Histories.from_sequences(histories)).sample(
        6, np.random.default_rng(0))
    assert out.events.shape == (4, 6, 3)
    py = mlflow.pyfunc.load_model(uri)
    hist = pd.DataFrame({"history": [0, 0, 1], "t": [0.1, 0.4, 0.2], "x": [140.0, 141, 139], "y": [35.0, 36, 34]})
    pred = py.predict(hist, params={"n": 4, "steps": 5})
    assert len(pred) == 8 and (pred["dt"] > 0).all()


def test_ddp_two_processes_gloo_with_tracking(windows, tmp_path):
    """The same script under torchrun with DistributedDataParallel (gloo on CPU, 2 processes, tiny model), across
    an evaluation, tracked: one MLflow run and one registered version (only rank 0 logs)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", STFORECAST_ARTIFACT_ROOT=str(tmp_path / "art"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "pipelines.cli", "train", "--data", str(windows), "--max-steps", "12", "--no-progress",
           "--register-as", "ddp-test", "--out", str(tmp_path / "ddp"), "--batch-size", "64",
           *sum((["--set", f"model.{k}={v}"] for k, v in TINY.items()), [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "models:/ddp-test/1" in proc.stdout
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ckpt["state"]["step"] == 12 and len(ckpt["rng_cpu"]) == 2  # one RNG state per rank
    assert len(ckpt["state"]["history"]) > 2  # 7 steps per rank per epoch: an evaluation ran under DDP

    from mlflow import MlflowClient
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    assert len(client.search_model_versions("name='ddp-test'")) == 1
    exp = client.get_experiment_by_name("stforecast")
    assert len(client.search_runs([exp.experiment_id])) == 1
