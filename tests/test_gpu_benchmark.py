"""`python -m benchmarks.gpu`: one clear line and status 2 without CUDA; `--device cpu --quick --no-compile` runs the
same code path (bf16 autocast on the CPU) end to end and writes its record with the loss-parity check passing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu


def test_without_cuda_it_says_so_in_one_line_and_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 2
    assert gpu.main(["--device", "cuda:0", "--out", str(out)]) == 2  # asked for explicitly: the same answer
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    assert "CUDA" in lines[0] and "--device cpu" in lines[0] and "Traceback" not in captured.err
    assert captured.out == "" and not out.exists()


def test_the_module_exits_2_without_a_traceback_where_cuda_is_hidden(tmp_path):
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--out", str(tmp_path / "gpu.json")], cwd=root,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def ridgecrest(settings, tmp_path_factory) -> str:
    """The Ridgecrest sample ingested once for this module (a small earthquake catalog with magnitudes, so the
    benchmark's Japan model settings, which read magnitudes, apply)."""
    from benchmarks.prepare import ensure_ingested

    return str(ensure_ingested(str(tmp_path_factory.mktemp("gpu-bench") / "processed" / "ridgecrest"),
                               settings=settings, log=lambda line: None))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_cpu_dry_run_measures_everything_and_the_parity_passes(tmp_path, ridgecrest, one_thread, capsys):
    out = tmp_path / "reports" / "gpu.json"
    status = gpu.main(["--device", "cpu", "--quick", "--no-compile", "--data", ridgecrest, "--out", str(out),
                       "--run-dir", str(tmp_path / "runs")])
    printed = capsys.readouterr().out
    assert status == 0
    bf16 = gpu.cpu_bf16_lstm()  # CPUs without AVX-512 BF16 run no bf16 LSTM: the dry run says so and uses float32
    record = json.loads(out.read_text())
    assert record["device"]["device"] == "cpu" and record["device"]["torch"] == torch.__version__
    s = record["settings"]
    assert s["quick"] and s["amp"] == bf16 and not s["compile"] and s["settings_of"] == "japan"
    assert s["model"]["mark_inputs"] and s["model"]["location"] == "bounded"  # the benchmark's Japan model
    parity = record["parity"]
    assert parity["passed"] and parity["batches"] == 4 and parity["rtol"] == 2e-2
    assert parity["device_dtype"] == ("bfloat16 autocast" if bf16 else "float32")
    assert parity["magnitude_head"] == bool(s["model"].get("mark_head"))  # its NLL term is compared too
    assert (0 < parity["max_rel_diff"] or not bf16) and parity["max_rel_diff"] <= 2e-2  # bf16 changed something
    assert parity["mean_loss_cpu"] < 0.9  # on weights that learnt something (an untrained loss is ~1)
    train = record["training"]
    assert train["steps"] == 20 and train["events"] > 0 and train["events_per_s"] > 0
    rows = {(r["sampler"], r["histories"], r["samples_per_history"]): r for r in record["sampling"]}
    assert set(rows) == {(name, h, n) for name in ("ddim50", "ode", "ode:fp32") for h, n in ((8, 1), (16, 4))}
    assert all(r["samples_per_s"] > 0 and r["finite_fraction"] == 1.0 for r in rows.values())
    assert rows[("ode", 8, 1)]["amp"] == bf16 and not rows[("ode:fp32", 8, 1)]["amp"]
    assert rows[("ode", 16, 4)]["network_evaluations"] > 0
    assert record["compile_failures"] == [] and record["full_train"] is None
    assert "loss parity" in printed and "PASS" in printed and "samples/s" in printed and "events/s" in printed


def test_a_failed_parity_exits_1_after_writing_the_record(tmp_path, ridgecrest, one_thread, capsys):
    if not gpu.cpu_bf16_lstm():
        pytest.skip("this CPU runs no bf16 LSTM: its float32 dry run equals the float32 reference, nothing can fail")
    out = tmp_path / "gpu.json"
    status = gpu.main(["--device", "cpu", "--quick", "--no-compile", "--data", ridgecrest, "--out", str(out),
                       "--rtol", "1e-9", "--steps", "2", "--sizes", "2x1", "--samplers", "ddim5"])
    assert status == 1
    assert not json.loads(out.read_text())["parity"]["passed"]
    err = capsys.readouterr().err
    assert "loss parity FAILED" in err and len(err.strip().splitlines()) == 1
