"""Faults and hostile input, round three (issue 19): names that would escape their output root, folders a command
did not create, crafted checkpoints and baseline caches, catalogs across the antimeridian or at a pole, times pandas
cannot hold, runaway fields, two trainings in one folder, leftovers of killed runs, a full disk, an unreachable
scheduler, buffered logs, half-open connections and samples at the sampler's clamp.

Every refusal is ONE line on stderr with no traceback, and nothing that was there before is lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.cli import main

from .test_bad_input import GOOD_ROWS, HEADER, cfg_for, comcat
from .test_cli_errors import one_line_error
from .test_ingest_errors import SPLIT, cli, ingest_cli, one_error_line

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny(ridgecrest_tiny):
    r, ckpt = ridgecrest_tiny
    return r.out_dir, ckpt


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("STFORECAST_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("STFORECAST_BASELINE_CACHE", str(tmp_path / "baselines"))


def victim_folder(root: Path) -> Path:
    victim = root / "victim"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("precious")
    return victim


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def leftover_name(stem: str, pid: int) -> str:
    """A temp name as a writer with ``pid`` on this host makes it (``stforecast.io.atomic``)."""
    from stforecast.io import atomic

    return f"{stem}{atomic._HOST}-{pid}-0badc0de"


# ===================================================================================================== security
def test_a_batch_job_name_cannot_escape_the_output_root(tmp_path, capfd):
    """name = "../../../../../tmp/x/victim" used to delete that folder and put a report there."""
    victim = victim_folder(tmp_path / "x")
    out = tmp_path / "reports" / "batch"
    rel = os.path.relpath(victim, out / "2019-07-12")
    cfg = tmp_path / "evil.toml"
    cfg.write_text(f'[batch]\nout = "{out}"\n[[jobs]]\nname = "{rel}"\ncatalog = "japan"\nmodel = "etas"\n')
    assert main(["batch", "--config", str(cfg), "--no-track", "--workers", "1"]) == 2
    one_line_error(capfd, "error:", "job name", repr(rel), "letters, digits")
    assert (victim / "keep.txt").read_text() == "precious"
    assert not out.exists()


@pytest.mark.parametrize("command", ["report", "csep-eval-summary"])
def test_an_output_folder_the_command_did_not_create_is_never_replaced(tiny, tmp_path, capfd, tracking, command):
    folder, _ = tiny
    victim = victim_folder(tmp_path)
    if command == "report":
        argv = ["report", "--data", str(folder), "--model", "poisson_kde", "--at", "2019-07-12", "--horizon", "6h",
                "--samples", "200", "--simulations", "5", "--no-track", "--out", str(victim)]
        assert main(argv) == 2
        one_line_error(capfd, "error:", str(victim), "not written by stforecast", "left alone")
        assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
        # a catalog folder is an stforecast output, but not a report: refused too
        before = sorted(p.name for p in Path(folder).iterdir())
        assert main([*argv[:-1], str(folder)]) == 2
        one_line_error(capfd, "error:", "holds a catalog, not a report")
        assert sorted(p.name for p in Path(folder).iterdir()) == before
    else:  # the library's atomic folder writer refuses the same way, for every kind of output
        from stforecast.io.atomic import atomic_dir

        for kind in ("catalog", "report", "batch job", "csep day"):
            with pytest.raises(ValueError, match="not written by stforecast"):
                with atomic_dir(victim, kind=kind) as tmp:
                    (tmp / "x").write_text("new")
        assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_an_output_of_the_same_kind_is_replaced_and_marked(tmp_path):
    from stforecast.io.atomic import OWNER_FILE, atomic_dir

    target = tmp_path / "r"
    for text in ("first", "second"):
        with atomic_dir(target, kind="report") as tmp:
            (tmp / "summary.json").write_text(text)
        assert (target / "summary.json").read_text() == text
        assert json.loads((target / OWNER_FILE).read_text())["kind"] == "report"
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty, kind="report") as tmp:  # an empty folder holds nothing to lose
        (tmp / "a").write_text("a")
    assert (empty / "a").exists()


def test_experiment_names_and_csep_labels_are_safe_names(tiny, tmp_path, capfd, tracking):
    folder, _ = tiny
    victim = victim_folder(tmp_path / "art2")
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--experiment",
                 "../art2/victim", "--max-steps", "1"]) == 2
    one_line_error(capfd, "error:", "--experiment", "experiment name")
    assert not (tmp_path / "run").exists() and (victim / "keep.txt").exists()
    from stforecast.tracking import setup

    with pytest.raises(ValueError, match="experiment name"):
        setup("../../escape")
    from pipelines.common import model_label

    for spec in ("../../x/best.pt", "/tmp/../../best.pt", "models:/dstpp/1", "a b/c d/best.pt"):
        label = model_label(spec)
        assert "/" not in label and ".." not in label and " " not in label, label


def write_checkpoint(tmp_path, source: Path, **config_changes) -> Path:
    ckpt = torch.load(source, weights_only=True)
    cfg = json.loads(ckpt["model_config"])
    cfg.update(config_changes)
    ckpt["model_config"] = json.dumps(cfg)
    bad = tmp_path / "crafted.pt"
    torch.save(ckpt, bad)
    return bad


@pytest.mark.parametrize("changes, words", [
    ({"d_model": 200000}, "model.d_model = 200000 is outside"),
    ({"steps": 10**9}, "model.steps = 1000000000 is outside"),
    ({"d_model": 32}, "does not match its weights"),
    ({"d_model": "wide"}, "model.d_model must be a whole number"),
    ({"mark_head": True}, "does not match its weights"),
    ({"mark_mc": 2.0}, "unknown setting"),  # fitted statistics are the scaler's, never the configuration's
])
def test_a_crafted_checkpoint_is_checked_before_anything_is_built(tiny, tmp_path, capfd, changes, words):
    folder, ckpt = tiny
    bad = write_checkpoint(tmp_path, ckpt, **changes)
    assert main(["forecast", "--data", str(folder), "--model", str(bad), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capfd, "error:", str(bad), words)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name, field, value", [
    ("poisson_kde", "rate", float("nan")),
    ("poisson_kde", "rate", -3.0),
    ("poisson_kde", "rate", 1e300),
    ("poisson_kde", "rate", "fast"),
    ("hawkes", "alpha", 1e300),
    ("hawkes", "sigma", -1.0),
    ("hawkes", "beta", "slow"),
    ("hawkes", "mu", float("nan")),
])
def test_a_damaged_baseline_cache_is_named_set_aside_and_refitted(tiny, tmp_path, name, field, value):
    from stforecast.ingested import IngestedCatalog
    from stforecast.registry import cached_baseline

    catalog = IngestedCatalog.open(tiny[0])
    cache = tmp_path / "baselines"
    cached_baseline(name, catalog, cache, log=lambda *a: None)  # a good fit, cached
    (path,) = (cache / catalog.name).glob(f"{name}-*.json")
    good = json.loads(path.read_text())
    record = json.loads(path.read_text())
    record["state"][field] = value
    path.write_text(json.dumps(record))  # NaN is written as NaN, as json.dumps does
    lines = []
    model = cached_baseline(name, catalog, cache, log=lines.append)
    warning = next(line for line in lines if line.startswith("warning"))
    assert str(path) in warning and repr(field) in warning and "refitted" in warning
    assert (path.parent / (path.name + ".bad")).exists()
    assert json.loads(path.read_text())["state"] == good["state"]  # refitted and cached again
    assert model.state() == pytest.approx(good["state"]) if name == "poisson_kde" else True


def test_an_etas_state_is_checked_field_by_field():
    from stforecast.baselines.etas import ETAS

    good = {"variant": "power-law", "theta": [0.0, -1.0, 1.0, -5.0, -2.0, 0.0, -1.0, 1.0], "mc": 2.5,
            "b_value": 1.0, "cutoff": 30.0, "loglik": -100.0, "converged": True, "selected_on": "validation",
            "variants": {}, "validation_nll": {"power-law": 3.2}}
    ETAS.check_state(good)
    for field, value, words in (("theta", [float("nan")] + good["theta"][1:], "theta[0]"),
                                ("theta", good["theta"][:3] + [9.0] + good["theta"][4:], "theta[3]"),
                                ("theta", good["theta"][:2], "list of 8"),
                                ("b_value", -1.0, "b_value"), ("variant", "spline", "variant"),
                                ("cutoff", "soon", "cutoff"), ("converged", "yes", "converged"),
                                ("parent_mc", 2.0, "parent_mc"), ("parent_mc", "M4", "parent_mc")):
        with pytest.raises(ValueError, match=re.escape(words)):
            ETAS.check_state({**good, field: value})


def test_a_damaged_baseline_cache_through_the_command(tiny, tmp_path, capfd, tracking):
    folder, _ = tiny
    argv = ["forecast", "--data", str(folder), "--model", "hawkes", "--samples", "50", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    (path,) = (tmp_path / "baselines").rglob("hawkes-*.json")
    record = json.loads(path.read_text())
    record["state"]["alpha"] = float("nan")
    path.write_text(json.dumps(record))
    capfd.readouterr()
    assert main(argv) == 0
    out = capfd.readouterr().out
    assert "warning" in out and path.name in out.replace("\n", "") and "'alpha'" in out


# ======================================================================================================= data
def lonlat_rows(lons, lats) -> list[str]:
    rows = []
    for i, (lon, lat) in enumerate(zip(lons, lats)):
        d, h = 1 + i // 24 % 28, i % 24
        rows.append(f"2020-01-{d:02d}T{h:02d}:{i % 60:02d}:00.000Z,{lat:.4f},{lon:.4f},10,3.{i % 9},ml,ev{i}")
    return rows


@pytest.mark.parametrize("case", ["antimeridian", "north pole"])
def test_catalogs_across_the_antimeridian_or_at_a_pole_are_projected_about_their_events(settings, tmp_path, case):
    from pipelines.ingest import run_ingest

    rng = np.random.default_rng(0)
    n = 400
    if case == "antimeridian":  # Fiji: both sides of 180°
        lons = rng.choice([180.0, -180.0, 179.99, -179.99, 178.5, -178.5], n)
        lats = rng.uniform(-10, 10, n)
    else:
        lons = rng.uniform(-180, 180, n)
        lats = rng.uniform(81, 90, n)
    path = comcat(tmp_path, lonlat_rows(lons, lats))
    r = run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False)
    lon0, lat0 = r.manifest["schema"]["projection_center_lonlat"]
    events = pd.read_parquet(r.out_dir / "events.parquet")
    if case == "antimeridian":
        assert abs(abs(lon0) - 180) < 1 and abs(lat0) < 1
        assert events["x"].abs().max() < 250 and events["y"].abs().max() < 1200  # km: ±1.5° and ±10°
    else:
        assert lat0 == 90
        assert np.hypot(events["x"], events["y"]).max() < 1005  # within 9° (1,001 km) of the pole
    # the projection is exact: back to the input coordinates
    from stforecast.ingested import IngestedCatalog

    back = IngestedCatalog.open(r.out_dir).units.to_original(events[["t", "x", "y"]])
    dlon = (back["lon"] - events["lon"] + 180) % 360 - 180
    assert np.abs(dlon[events["lat"] < 89.9]).max() < 1e-6 and np.abs(back["lat"] - events["lat"]).max() < 1e-6


@pytest.mark.parametrize("when", ["1677-01-05T02:00:00.000Z", "2263-01-05T02:00:00.000Z", "0099-01-01T00:00:00Z"])
def test_times_outside_what_pandas_holds_are_named_and_can_be_quarantined(settings, tmp_path, when):
    rows = list(GOOD_ROWS)
    rows[19] = f"{when},35.5,139.1,10,3.0,ml,x1"
    path = comcat(tmp_path, rows)
    line = one_error_line(ingest_cli(path, tmp_path / "out"), "cat.csv", "line 21", "'time'", "outside the range")
    assert "--quarantine" in line
    from pipelines.ingest import run_ingest

    r = run_ingest(cfg_for(path), settings, out_root=tmp_path / "q", progress=False, quarantine=True)
    rejected = pd.read_parquet(r.out_dir / "rejected.parquet")
    assert rejected[["line", "field"]].values.tolist() == [[21, "time"]]
    assert len(pd.read_parquet(r.out_dir / "events.parquet")) == len(GOOD_ROWS) - 1


def test_times_outside_the_range_in_a_local_time_zone():
    from stforecast.io.tables import TableSpec, parse_times

    spec = TableSpec(time_col="t", x_col="x", y_col="y", tz="America/Chicago", time_format="%m/%d/%Y %I:%M:%S %p")
    out, info = parse_times(pd.Series(["01/05/1677 02:00:00 PM", "01/05/2020 02:00:00 PM", "01/05/2263 02:00:00 AM"]),
                            spec)
    assert info["out_of_range"].tolist() == [True, False, True]
    assert out.isna().tolist() == [True, False, True] and str(out.dtype) == "datetime64[ns, UTC]"


def test_a_runaway_field_is_refused_with_its_field_and_a_short_value(settings, tmp_path):
    rows = [r.encode() for r in GOOD_ROWS]
    rows[19] = b"2020-01-05T02:00:00.000Z,35.5,139.1,10,3.0,ml," + b"x" * 3_000_000
    path = tmp_path / "cat.csv"
    path.write_bytes(b"\n".join([HEADER.encode(), *rows]) + b"\n")
    line = one_error_line(ingest_cli(path, tmp_path / "out"), "cat.csv", "line 21", "'id'", "longer than the 65,536")
    assert len(line) < 600
    # a Parquet input holds strings of any length: the field cap applies there too
    frame = pd.read_csv(comcat(tmp_path, GOOD_ROWS, "small.csv"))
    frame.loc[19, "id"] = "y" * 200_000
    frame.to_parquet(tmp_path / "cat.parquet")
    line = one_error_line(ingest_cli(tmp_path / "cat.parquet", tmp_path / "out2"), "cat.parquet", "row 20", "'id'",
                          "longer than the 65,536 characters")
    assert len(line) < 600


# ====================================================================================================== faults
def train_argv(folder, out, *extra):
    return ["train", "--data", str(folder), "--out", str(out), "--no-track", "--no-progress", "--max-steps", "2",
            "--batch-size", "8", "--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
            "--set", "model.d_ff=32", "--set", "model.rnn_hidden=16", "--set", "model.steps=30", *extra]


def test_a_second_training_in_the_same_folder_is_refused_naming_the_holder(tiny, tmp_path, capfd):
    folder, _ = tiny
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); "
        "f.write('pid 4242 on elsewhere, since earlier'); f.flush(); print('held', flush=True); time.sleep(120)"),
        str(out / ".train.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(train_argv(folder, out)) == 2
        one_line_error(capfd, "error:", str(out), "in use by another training run", "pid 4242 on elsewhere")
        assert not (out / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(train_argv(folder, out)) == 0  # the holder died: its lock went with it


def test_a_finished_run_is_not_overwritten_without_force(tiny, tmp_path, capfd):
    folder, _ = tiny
    out = tmp_path / "run"
    assert main(train_argv(folder, out)) == 0
    before = {p: p.read_bytes() for p in (out / "last.pt", out / "best.pt")}
    capfd.readouterr()
    assert main(train_argv(folder, out, "--set", "seed=7")) == 2
    one_line_error(capfd, "error:", str(out), "already holds a training run (finished at step 2)", "--resume",
                   "--force")
    assert {p: p.read_bytes() for p in before} == before
    assert main(train_argv(folder, out, "--resume")) == 0  # a finished run: nothing to do, files kept
    assert {p: p.read_bytes() for p in before} == before
    assert main(train_argv(folder, out, "--set", "seed=7", "--force")) == 0
    assert (out / "last.pt").read_bytes() != before[out / "last.pt"]


def test_leftovers_of_killed_runs_are_removed_by_the_next_run_and_live_ones_kept(tiny, tmp_path, settings):
    from pipelines.ingest import run_ingest
    from stforecast.io.atomic import holder_alive, sweep_stale

    dead, alive = dead_pid(), os.getpid()
    # ingest: the staging folder of a killed run, and one of a live run (this process)
    path = comcat(tmp_path, GOOD_ROWS)
    out = tmp_path / "processed"
    out.mkdir()
    killed = out / leftover_name(".t.tmp-", dead)
    live = out / leftover_name(".t.tmp-", alive)
    for p in (killed, live):
        p.mkdir()
        (p / "events.parquet").write_bytes(b"x" * 1000)
    run_ingest(cfg_for(path), settings, out_root=out, progress=False)
    assert not killed.exists() and live.exists()
    shutil.rmtree(live)
    # train: a checkpoint's temp file of a killed run, removed even by --resume of a finished run
    folder, _ = tiny
    run = tmp_path / "run"
    assert main(train_argv(folder, run)) == 0
    part = run / leftover_name(".last.", dead)
    part = part.with_name(part.name + ".part.pt")
    part.write_bytes(b"x" * 1000)
    assert main(train_argv(folder, run, "--resume")) == 0
    assert not part.exists()
    # batch job and csep day folders: swept before the job decides it is up to date
    for target in (tmp_path / "batch" / "2019-07-12" / "p1", tmp_path / "csep" / "etas" / "2019-07-12"):
        target.mkdir(parents=True)
        stale = target.parent / leftover_name(f".{target.name}.tmp-", dead)
        stale.mkdir()
        removed = sweep_stale(target)
        assert removed == [stale] and not stale.exists()
    assert holder_alive(leftover_name(".x.tmp-", alive), time.time())
    assert not holder_alive(leftover_name(".x.tmp-", dead), time.time())
    assert holder_alive(".x.tmp-ffffff-1-00", time.time())  # another host's: kept while young
    assert not holder_alive(".x.tmp-ffffff-1-00", time.time() - 7200)


def test_ingest_killed_with_sigkill_leaves_a_folder_the_next_run_removes(settings, tmp_path):
    """kill -9 while the staging folder exists (the run held open as in the Ctrl-C test); the next run of the same
    ingest removes it at once, not an hour later."""
    import signal

    from .test_ingest_errors import _HELD_OPEN

    out = tmp_path / "out"
    rows = [f"2020-01-{1 + i // 1000:02d}T{(i % 1000) // 50:02d}:{(i % 50) // 10:02d}:0{i % 10}.000Z,35.1,"
            f"139.1,10,3.0,ml,e{i}" for i in range(5_000)]
    big = comcat(tmp_path, rows, "big.csv")
    script, submitted = tmp_path / "held_open.py", tmp_path / "submitted"
    script.write_text(_HELD_OPEN)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = ["ingest", "earthquakes", "--path", str(big), "--name", "big", "--out", str(out), "--no-progress",
            "--workers", "1", *SPLIT]
    p = subprocess.Popen([sys.executable, str(script), str(submitted), *argv], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not submitted.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert p.poll() is None and submitted.exists()
        staging = list(out.glob(".big.tmp-*"))
        assert staging
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=60)
    assert all(s.exists() for s in staging)  # what kill -9 leaves
    done = cli(*argv)
    assert done.returncode == 0, done.stderr
    assert sorted(x.name for x in out.iterdir()) == ["big"]


def test_the_csep_summary_describes_the_day_folders_beside_it(tmp_path):
    from pipelines.csep_eval import DAY_RECORD, DayResult, results_on_disk

    for label, day in (("etas", "2019-07-10"), ("etas", "2019-07-11"), ("dstpp-run", "2019-07-10")):
        (tmp_path / label / day).mkdir(parents=True)
        (tmp_path / label / day / DAY_RECORD).write_text(json.dumps({"task": {"catalogs": 10}, "csep": {}}))
    (tmp_path / "etas" / leftover_name(".2019-07-12.tmp-", dead_pid())).mkdir()  # no record: not a day
    this_run = [DayResult("etas", "2019-07-11", "skipped", {"csep": {}}),
                DayResult("etas", "2019-07-13", "failed", message="boom")]
    found = [(r.label, r.day, r.status) for r in results_on_disk(tmp_path, this_run)]
    assert found == [("dstpp-run", "2019-07-10", "earlier run"), ("etas", "2019-07-10", "earlier run"),
                     ("etas", "2019-07-11", "skipped"), ("etas", "2019-07-13", "failed")]


def can_mount_tmpfs() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"],
        capture_output=True).returncode == 0


def run_on_small_disk(tmp_path, script: str, size: str = "8m") -> subprocess.CompletedProcess:
    """``script`` (sh) in a private mount namespace where ``$DISK`` is a fresh tmpfs of ``size``."""
    disk = tmp_path / "disk"
    disk.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DISK": str(disk), "PY": sys.executable,
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs $DISK && {script}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


#: fill the disk but for a few KB, then run the command again: it must say so in one line and keep the output
FILL = "head -c $(( $(df -k --output=avail $DISK | tail -1) * 1024 - 16384 )) /dev/zero > $DISK/filler 2>/dev/null;"


@pytest.mark.parametrize("command", ["ingest", "train", "report"])
def test_a_full_disk_is_one_line_and_earlier_output_stays(tiny, tmp_path, command):
    if not can_mount_tmpfs():
        pytest.fail("this test needs `unshare -rm` (user and mount namespaces) to make a small disk; the CI "
                    "machine has it")
    folder, ckpt = tiny
    py = "$PY -m pipelines.cli"
    if command == "ingest":
        path = comcat(tmp_path, GOOD_ROWS)
        first = f"{py} ingest earthquakes --path {path} --out $DISK --no-progress --workers 1 {' '.join(SPLIT)}"
        again, keep = f"{first} --force", "t/manifest.json"
        first = first.replace("--path", "--name t --path")
        again = again.replace("--path", "--name t --path")
    elif command == "train":
        first = " ".join(train_argv(folder, "$DISK/run")).replace("train", f"{py} train", 1)
        again, keep = f"{first} --resume --max-steps 8", "run/best.pt"  # continue: its next checkpoint fails
    else:
        first = (f"{py} report --data {folder} --model {ckpt} --at 2019-07-12 --horizon 6h --samples 200 "
                 f"--simulations 5 --no-track --out $DISK/rep")
        again, keep = f"{first} --seed 3", "rep/forecast.nc"
    p = run_on_small_disk(tmp_path, f"{first} >/dev/null 2>&1 && cp $DISK/{keep} $DISK/../kept && {FILL} {again}; "
                          f"echo rc=$?; cmp $DISK/{keep} $DISK/../kept && echo same")
    lines = [line for line in p.stderr.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]  # no bars
    assert "rc=2" in p.stdout and "same" in p.stdout, (p.stdout[-2000:], p.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: no space left on the disk holding"), p.stderr[-3000:]
    assert "Traceback" not in p.stderr


def test_an_unreachable_scheduler_is_one_line(tmp_path, monkeypatch):
    path = comcat(tmp_path, GOOD_ROWS)
    monkeypatch.setenv("STFORECAST_SCHEDULER_TIMEOUT_S", "2")  # distributed retries a refused port until then
    p = ingest_cli(path, tmp_path / "out", "--scheduler", "tcp://127.0.0.1:1")
    one_error_line(p, "cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    monkeypatch.setenv("STFORECAST_SCHEDULER_TIMEOUT_S", "soon")
    one_error_line(ingest_cli(path, tmp_path / "out", "--scheduler", "tcp://127.0.0.1:1"),
                   "STFORECAST_SCHEDULER_TIMEOUT_S must be a positive number of seconds, not 'soon'")


def test_lines_reach_a_log_file_as_they_are_printed(tmp_path):
    """stdout to a file is block-buffered by Python: `stforecast serve > serve.log` used to keep its address line
    (and a killed run its last lines) in the buffer, leaving an empty log."""
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PYTHONUNBUFFERED", None)  # as on a user's machine (this one sets it)
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--root", str(tmp_path), "--port", "0"],
                             cwd=REPO, env=env, stdout=f, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while "risk map: http://127.0.0.1:" not in log.read_text() and time.time() < deadline:
                time.sleep(0.2)
            assert p.poll() is None and "risk map: http://127.0.0.1:" in log.read_text(), log.read_text()
        finally:
            p.kill()
            p.wait()


def test_serve_drops_a_connection_that_sends_no_headers(tmp_path):
    import threading

    from pipelines.serve import make_server

    server = make_server(tmp_path, "127.0.0.1", 0, idle_timeout_s=0.5)  # the same socket timeout as the default 5 s
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(server.server_address, timeout=15) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line that ends the headers
            assert s.recv(1024) == b""  # closed by the server (a client timeout here raises instead)
    finally:
        server.shutdown()
        server.server_close()


def test_csep_eval_names_the_flag_when_the_model_forecasts_no_magnitudes(tiny, tmp_path, capfd, tracking):
    folder, ckpt = tiny  # a DSTPP trained without a magnitude head
    assert main(["csep-eval", "--data", str(folder), "--model", str(ckpt), "--reference", "none", "--start",
                 "2019-07-12", "--days", "1", "--catalogs", "10", "--local", "--no-track",
                 "--out", str(tmp_path / "c")]) == 2
    line = one_line_error(capfd, "error:", "--magnitudes gutenberg-richter")
    assert "magnitudes='" not in line


def test_samples_piling_up_at_the_clamp_are_warned_with_their_share(tiny, tmp_path):
    from pipelines.forecasting import ForecastRequest, run_forecast
    from stforecast.ingested import IngestedCatalog
    from stforecast.checkpoints import load_model

    folder, ckpt = tiny
    model = load_model(ckpt)
    # a denoiser that predicts no noise at all: the ODE then runs x0 = x_K / sqrt(alpha_bar), far past the clamp
    model.denoiser.forward = lambda x, k, ctx: torch.zeros_like(x)
    lines = []
    summary = run_forecast(IngestedCatalog.open(folder), model, ForecastRequest(samples=200, horizon="3h",
                                                                                 simulations=5, max_events=20),
                           tmp_path / "o", log=lines.append)
    share = summary["next_event"]["clamped_share"]
    assert share > 0.5
    assert any(line.startswith("warning") and f"{share:.1%}" in line for line in lines)
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["warnings"]
    # a model that samples exactly has no clamp: nothing to warn about
    from stforecast.registry import cached_baseline

    catalog = IngestedCatalog.open(folder)
    exact = run_forecast(catalog, cached_baseline("poisson_kde", catalog, tmp_path / "b", log=lambda *a: None),
                         ForecastRequest(samples=50), tmp_path / "o2", log=lambda *a: None)
    assert exact["next_event"]["clamped_share"] is None and "warnings" not in exact
