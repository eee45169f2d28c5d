"""Settings files: every TOML under data/ follows the one layout (stforecast/config.py), old layouts are one-line
errors naming the file and the table, one merge rule, and the values every run ends up with are those of the
layouts before it (read from the old files: the demo's, the paper's and the benchmark's per-catalog settings)."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from pipelines.batch_forecast import load_jobs
from pipelines.benchmark import catalog_settings, load_benchmark_config
from stforecast.config import REPO_ROOT, load_settings
from stforecast.settings_files import TABLES, deep_merge, train_settings
from stforecast.train import TrainConfig, load_train_config

DATA = REPO_ROOT / "data"

#: each settings file under data/ and the readers that take it (a new file must be added here)
READERS = {
    "catalogs.toml": [load_settings],
    "benchmark.toml": [load_benchmark_config, lambda p: load_benchmark_config(p, quick=True), load_train_config],
    "train_demo.toml": [load_train_config],
    "train_paper.toml": [load_train_config],
    "batch.toml": [load_jobs],
}


def test_every_settings_file_follows_the_one_layout():
    files = sorted(p.name for p in DATA.glob("*.toml"))
    assert files == sorted(READERS), "a new settings file under data/: add it and its readers to READERS"
    for name in files:
        doc = tomllib.loads((DATA / name).read_text())
        loose = [k for k, v in doc.items() if not isinstance(v, (dict, list)) or
                 (isinstance(v, list) and not all(isinstance(t, dict) for t in v))]
        assert not loose, f"{name}: keys outside any table: {loose}"
        assert set(doc) <= set(TABLES), f"{name}: tables {sorted(set(doc) - set(TABLES))} are not in settings_files.TABLES"
        for read in READERS[name]:
            read(DATA / name)


MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "rnn_hidden": 64, "steps": 200,
         "time_features": False, "mark_inputs": False, "location": "bounded", "parents": 0}
QUICK_MODEL = {**MODEL, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "rnn_hidden": 16, "steps": 20}
JAPAN_MODEL = {"time_features": True, "mark_inputs": True, "mark_head": True, "parents": 8}  # issue 22: parents
CHICAGO_MODEL = {"parents": 8, "parent_choice": "newest"}
TRAIN = {"preset": "default", "epochs": 60, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 1.0, "patience": 10,
         "seed": 1234}
QUICK = {"epochs": 1, "max_steps": 8, "batch_size": 16}
#: data/benchmark.toml's training settings per catalog before the one layout (they key the run folders)
BENCHMARK_TRAIN = {
    ("japan", False): {**TRAIN, "model": {**MODEL, **JAPAN_MODEL}},
    ("chicago", False): {**TRAIN, "epochs": 15, "patience": 5, "model": {**MODEL, **CHICAGO_MODEL}},
    ("wmaze", False): {**TRAIN, "model": MODEL},
    ("dstpp_japan", False): {**TRAIN, "preset": "paper", "epochs": 15, "batch_size": 16, "lr": 1e-3, "patience": 5,
                             "model": {}},
    ("japan", True): {**TRAIN, **QUICK, "model": {**QUICK_MODEL, **JAPAN_MODEL}},
    ("chicago", True): {**TRAIN, **QUICK, "patience": 5, "model": {**QUICK_MODEL, **CHICAGO_MODEL}},
    ("wmaze", True): {**TRAIN, **QUICK, "model": QUICK_MODEL},
    ("dstpp_japan", True): {**TRAIN, **QUICK, "preset": "paper", "lr": 1e-3, "patience": 5,
                            "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "rnn_hidden": 16,
                                      "steps": 20}},  # [quick.train.model] over `model = {}`
}
DEFAULTS = dataclasses.asdict(TrainConfig())
#: the TrainConfig of data/train_demo.toml and data/train_paper.toml before the one layout
DEMO = {**DEFAULTS, "preset": "default", "epochs": 30, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 1.0,
        "eval_every": 1, "patience": 5, "seed": 1234, "model": {**MODEL, **JAPAN_MODEL}}
PAPER = {**DEFAULTS, "preset": "paper", "data": "data/processed/dstpp_japan", "epochs": 2000, "batch_size": 64,
         "lr": 1e-3, "min_lr": 5e-5, "warmup_epochs": 5.0, "eval_every": 10, "patience": 100, "seed": 1234, "model": {}}


@pytest.mark.parametrize("name, expected", [("train_demo.toml", DEMO), ("train_paper.toml", PAPER)])
def test_demo_and_paper_train_exactly_as_before(name, expected):
    cfg = load_train_config(DATA / name)
    for f in dataclasses.fields(TrainConfig):
        assert getattr(cfg, f.name) == expected[f.name], f"{name}: {f.name}"
    assert list(cfg.model) == list(expected["model"])  # the same order as well


def test_the_demo_is_the_benchmarks_japan_model_with_its_own_few_differences():
    japan = load_train_config(base=catalog_settings(load_benchmark_config(), "japan", quick=False))
    demo = load_train_config(DATA / "train_demo.toml")
    assert dataclasses.replace(japan, epochs=30, patience=5, eval_every=1) == demo


@pytest.mark.parametrize("name, quick", sorted(BENCHMARK_TRAIN))
def test_benchmark_train_settings_per_catalog_as_before(name, quick):
    assert catalog_settings(load_benchmark_config(quick=quick), name, quick) == BENCHMARK_TRAIN[name, quick]


def test_benchmark_and_batch_settings_as_before():
    cfg, quick = load_benchmark_config(), load_benchmark_config(quick=True)
    assert (cfg["catalogs"], cfg["seed"], cfg["targets"], cfg["samples"], cfg["bound_repeats"], cfg["ode_tolerance"],
            cfg["baseline_fit_events"]) == (["japan", "chicago", "wmaze"], 0, 1000, 200, 4, 1e-4, None)
    assert (quick["targets"], quick["samples"], quick["bound_repeats"], quick["ode_tolerance"],
            quick["baseline_fit_events"]) == (40, 20, 1, 1e-2, 1500)
    assert (cfg["ablations"]["targets"], cfg["ablations"]["samples"], quick["ablations"]["targets"],
            quick["ablations"]["samples"]) == (300, 50, 10, 5)
    assert len(quick["ablations"]["variants"]) == 5 and cfg["ablations"]["catalogs"] == ["japan", "chicago", "wmaze"]
    assert quick["ablations"]["catalogs"] == ["wmaze"]  # CI's quick run: the two W-maze variants
    jobs, out = load_jobs()
    assert [(j.name, j.catalog, j.model, j.horizon, j.simulations, j.refresh) for j in jobs] == [
        ("japan-7d", "japan", "runs/demo-japan/best.pt", "7d", 200, False)] and str(out) == "reports/batch"


def test_one_merge_rule():
    base = {"a": {"b": 1, "c": [1, 2]}, "m": {"x": 1}, "k": 1}
    out = deep_merge(base, {"a": {"c": [3]}, "m": {}, "k": {"z": 2}})
    assert out == {"a": {"b": 1, "c": [3]}, "m": {}, "k": {"z": 2}}  # tables merge; lists, {} and others replace
    out["a"]["b"] = 9
    assert base["a"]["b"] == 1  # shares nothing with its inputs
    assert deep_merge({"a": {"b": 1}}, {}) == {"a": {"b": 1}}


OLD = {  # file name, text in an old layout, words the one-line error must hold
    "train_old.toml": ("epochs = 3\n[model]\nd_model = 8\n", "under [train]"),
    "model_only.toml": ("[model]\nd_model = 8\n", "rename it [train.model"),
    "bench_old.toml": ('catalogs = ["japan"]\n[train]\nepochs = 1\n', "under [benchmark]"),
    "bench_catalog.toml": ("[benchmark]\nseed = 1\n[catalog.japan.train]\nepochs = 2\n", "rename it [catalogs"),
    "bench_quick.toml": ("[benchmark]\nseed = 1\n[quick]\ntargets = 4\n", "under [quick.benchmark]"),
    "batch_out.toml": ('out = "x"\n[[jobs]]\nname = "a"\ncatalog = "b"\nmodel = "c"\n', "under [batch]"),
    "batch_job.toml": ('[batch]\nout = "x"\n[[job]]\nname = "a"\ncatalog = "b"\nmodel = "c"\n', "rename it [[jobs]]"),
    "catalogs_old.toml": ('data_root = "x"\n[catalogs.a]\nkind = "crime"\n', "under [settings]"),
}


@pytest.mark.parametrize("name", sorted(OLD))
def test_an_old_layout_is_a_one_line_error_naming_the_file_and_the_table(tmp_path, name):
    text, words = OLD[name]
    path = tmp_path / name
    path.write_text(text)
    read = {"train": load_train_config, "model": load_train_config, "bench": load_benchmark_config,
            "batch": load_jobs, "catalogs": load_settings}[name.split("_")[0]]
    with pytest.raises(ValueError) as e:
        read(path)
    assert str(path) in str(e.value) and words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_training_file_reads_train_only_and_its_base(tmp_path):
    (tmp_path / "none.toml").write_text("[benchmark]\nseed = 1\n")
    with pytest.raises(ValueError, match=r"no \[train\] table"):
        load_train_config(tmp_path / "none.toml")
    (tmp_path / "a.toml").write_text('[base]\nfile = "b.toml"\n[train]\nepochs = 2\n')
    (tmp_path / "b.toml").write_text('[base]\nfile = "a.toml"\n[train]\nepochs = 3\n')
    with pytest.raises(ValueError, match="leads back"):
        train_settings(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text("[train]\nepochs = 3\nlr = 0.5\n[catalogs.x.train]\nlr = 0.25\n")
    (tmp_path / "a.toml").write_text('[base]\nfile = "b.toml"\ncatalog = "x"\n[train]\nepochs = 2\n')
    assert train_settings(tmp_path / "a.toml") == {"epochs": 2, "lr": 0.25}
    (tmp_path / "a.toml").write_text('[base]\nfile = "b.toml"\ncatalogue = "x"\n')
    with pytest.raises(ValueError, match=r"\[base\]: unknown setting"):
        train_settings(tmp_path / "a.toml")
