"""DSTPP on a CUDA device: loss parity with the CPU under bf16 autocast + ``torch.compile``, then training and
sampling throughput.

    python -m benchmarks.gpu                                  # on a CUDA machine: the benchmark's Japan model
    python -m benchmarks.gpu --full-train                     # also train it to its validation optimum (long)
    python -m benchmarks.gpu --device cpu --quick --no-compile   # a dry run of the same code path on the CPU

What it measures, with the benchmark's Japan training settings (``data/benchmark.toml``: ``[train]`` merged with
``[catalogs.japan.train]``; ``--quick`` adds ``[quick.train]``, a tiny model) on the ingested ``japan`` catalog
(ingested first when missing):

1. **Loss parity**: the same weights (eval mode: no dropout), the same ``--parity-batches`` training batches and
   the same diffusion steps and noise (drawn on the CPU from a seeded generator per batch, then copied to the
   device) give the training loss once on the CPU in float32 and once on the device under bf16 autocast
   (compiled unless ``--no-compile``). Passes when every batch's denoising loss differs by at most ``--rtol``
   relative (default 2e-2: bf16 keeps 8 bits of mantissa, 4e-3 per rounding), and so does the magnitude NLL term
   of a model with a magnitude head (relative to max(|NLL|, 1)); the exit status is 1 when it fails. The
   weights are those after the training steps of 2. (or ``--checkpoint``'s): an untrained network's loss is
   ≈ E[noise²] = 1 whatever it outputs, so its error would hardly show. The relative RMS difference of the
   noise estimates themselves is reported beside it.
2. **Training throughput**: target events/s of :func:`stforecast.train.train_step` (the training loop's own step:
   forward + backward + clip + AdamW) after ``--warmup`` untimed steps (compilation happens there), on the
   ``torch.compile``-d model under bf16 autocast, length-bucketed shuffled batches as training draws them.
   ``--full-train`` also runs :func:`stforecast.train.train` itself (device, bf16, compile) to its validation
   optimum (early stopping as configured) and reports its wall time and best validation loss.
3. **Sampling throughput**: next-event samples/s, encoder included (``last_states`` → reference locations →
   sampler), for ``--sizes`` (histories × samples per history; default 256x1 and 1000x100, prefixes of the test
   windows) with DDIM-50 and the probability-flow ODE (``model.with_sampling(Sampling(sampler=...))``, the benchmark's ODE
   tolerance), under bf16 autocast, encoder and denoiser compiled, and the ODE once more in float32
   (``ode:fp32``: its adaptive step control sees bf16 rounding as error and takes more steps); each timed call
   follows an untimed one of the same size, and CUDA is synchronised before and after timing.
4. Device name, torch/CUDA versions and every setting, in ``--out`` (JSON, written atomically).

Where ``torch.compile`` fails in a section, the error is recorded, that section is measured again without it, and
the exit status is 1 (a failed check), so one compile problem does not cost the other numbers of a GPU session.

Without CUDA (and no ``--device``) it says so in one line on stderr and exits with status 2. ``--device cpu``
runs every step on the CPU (bf16 autocast is supported there; ``--no-compile`` skips ``torch.compile``, slow or
unsupported on some CPU set-ups), so the code path is exercised where there is no GPU: the numbers then say
nothing about a GPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stforecast.sampling import Sampling

#: exit statuses: a check failed (loss parity, or torch.compile of a measured path); no CUDA device
EXIT_CHECK, EXIT_NO_DEVICE = 1, 2

#: what --quick changes (besides the benchmark's own [quick.train] model and batch sizes)
QUICK = {"parity_batches": 4, "steps": 20, "warmup": 2, "sizes": "8x1,16x4"}
FULL = {"parity_batches": 20, "steps": 50, "warmup": 5, "sizes": "256x1,1000x100"}


# ------------------------------------------------------------------------------------------------ settings
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda; exits with status 2 where there is none)")
    ap.add_argument("--data", default="japan", help="catalog name (under the processed directory) or folder")
    ap.add_argument("--settings-of", default="japan",
                    help="whose training settings of the benchmark config to use ([catalogs.NAME.train])")
    ap.add_argument("--config", help="benchmark settings (default data/benchmark.toml)")
    ap.add_argument("--checkpoint", help="a trained best.pt to measure instead of freshly initialised weights")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes (the config's [quick.train]; " + ", ".join(f"{k} {v}" for k, v in QUICK.items())
                    + "): proves the code path runs")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="float32 on the device (no bf16 autocast)")
    ap.add_argument("--parity-batches", type=int, help=f"batches compared (default {FULL['parity_batches']})")
    ap.add_argument("--rtol", type=float, default=2e-2, help="largest relative loss difference allowed (bf16)")
    ap.add_argument("--steps", type=int, help=f"timed training steps (default {FULL['steps']})")
    ap.add_argument("--warmup", type=int, help=f"untimed training steps first (default {FULL['warmup']})")
    ap.add_argument("--sizes", help=f"histories x samples for sampling (default {FULL['sizes']})")
    ap.add_argument("--samplers", default="ddim50,ode,ode:fp32",
                    help="comma-separated: ddimN (N steps) or ode; a :fp32 suffix runs that one without autocast")
    ap.add_argument("--full-train", action="store_true",
                    help="also train with stforecast.train to the validation optimum and report its wall time")
    ap.add_argument("--run-dir", default="runs/benchmark-gpu", help="where --full-train writes its checkpoints")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/benchmarks/gpu.json", help="the JSON record (written atomically)")
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.size_list = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s.strip()]
        assert all(len(s) == 2 and min(s) > 0 for s in args.size_list)
    except (ValueError, AssertionError):
        ap.error(f"--sizes {args.sizes!r}: expected HISTORIESxSAMPLES[,...], e.g. 256x1,1000x100")
    args.sampler_list = [s.strip() for s in args.samplers.split(",") if s.strip()]
    for s in args.sampler_list:
        kind = s.removesuffix(":fp32")
        if kind != "ode" and not (kind.startswith("ddim") and kind[4:].isdigit() and int(kind[4:]) > 0):
            ap.error(f"--samplers: {s!r} is neither ode nor ddimN (e.g. ddim50), optionally with :fp32")
    if min(args.parity_batches, args.steps) < 1 or args.warmup < 0:
        ap.error("--parity-batches and --steps must be at least 1, --warmup at least 0")
    return args


def no_cuda_message() -> str:
    build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
    return (f"benchmarks.gpu: needs a CUDA GPU and torch.cuda.is_available() is False ({build}; torch "
            f"{torch.__version__}): run it on a machine with an NVIDIA GPU, or add --device cpu (with --quick "
            "--no-compile) for a dry run of the same code path on the CPU")


def resolve_device(name: str | None) -> torch.device | None:
    """The device to measure on, or None when CUDA is asked for (explicitly or by default) and there is none."""
    device = torch.device(name or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        return None
    return device


def train_settings(args, folder: Path, device: torch.device):
    """The benchmark's training settings for ``--settings-of`` as a checked :class:`~stforecast.train.TrainConfig`
    (``[train]``, then ``[catalogs.NAME.train]``, then with ``--quick`` ``[quick.train]``), and its ODE tolerance."""
    from pipelines.benchmark import catalog_settings, load_benchmark_config
    from stforecast.train import load_train_config

    cfg = load_benchmark_config(args.config, quick=args.quick)
    values = catalog_settings(cfg, args.settings_of, args.quick)
    # the network measured is the single-reference DSTPP: the parity copy of the loss (NoisyLoss) and the sampling
    # measurement cover the encoder, denoiser and magnitude head; a parent mixture (issue 22) adds a teacher whose
    # component draws they do not replicate
    values["model"] = {**values.get("model", {}), "parents": 0}
    values.update(data=str(folder), device=str(device), amp=args.amp, compile=args.compile, progress=False,
                  out_dir=str(Path(args.run_dir) / f"{args.settings_of}{'-quick' if args.quick else ''}"))
    return load_train_config(base=values), float(cfg["ode_tolerance"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_bf16_lstm() -> bool:
    """Whether an LSTM (the encoder's recurrent heads) runs under bf16 autocast on this CPU."""
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(4, 4, batch_first=True)(torch.zeros(1, 2, 4))
        return True
    except RuntimeError:
        return False


def autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process peak so far (Linux: KiB)


# ------------------------------------------------------------------------------------------------ 1. parity
class NoisyLoss(torch.nn.Module):
    """``DSTPP.loss`` with its diffusion steps ``k`` (N,) and noise (N, 3) given instead of drawn, so the CPU and
    the device see the same ones (a CUDA generator draws other numbers than a CPU one from the same seed).
    Returns its two terms, the denoising MSE and (a model with a magnitude head; else 0) the mean magnitude NLL,
    and the noise estimate (N, 3); the loss is ``mse + cfg.mark_weight * mark_nll``. :func:`check_noisy_loss`
    proves that equals ``model.loss``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, k: torch.Tensor, noise: torch.Tensor):
        m = self.model
        cond, x0 = m.targets(batch)
        noise = noise.to(x0.dtype)
        eps = m.denoiser(m.schedule.add_noise(x0, noise, k), k, m.denoiser.prepare(cond))
        mse = F.mse_loss(eps.float(), noise.float())
        mark_nll = torch.zeros((), device=mse.device)
        head = m.magnitude_head
        if head is not None:
            b, j = batch.target.nonzero(as_tuple=True)
            fit = m.scaler.statistics
            mark_nll = -head.log_prob(cond, batch.mark[b, j], fit.mark_mc, fit.mark_b).float().mean()
        return mse, mark_nll, eps.float()


def total_loss(model, mse, mark_nll) -> float:
    return float(mse) + model.cfg.mark_weight * float(mark_nll)


def draw_noise(model, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The steps and noise ``model.loss`` draws for ``n`` targets from a CPU generator seeded ``seed`` (same calls,
    same order)."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(0, model.schedule.steps, (n,), generator=gen)
    noise = torch.randn((n, 3), generator=gen)
    return k, noise


@torch.no_grad()
def check_noisy_loss(model, batch, seed: int) -> None:
    """Refuse to report a parity that is not the training loss: on the CPU in float32, :class:`NoisyLoss` with
    :func:`draw_noise` must give exactly ``model.loss`` with a generator of the same seed."""
    k, noise = draw_noise(model, batch.num_targets, seed)
    ours = total_loss(model, *NoisyLoss(model)(batch, k, noise)[:2])
    theirs = float(model.loss(batch, generator=torch.Generator().manual_seed(seed)))
    if not math.isclose(ours, theirs, rel_tol=1e-5, abs_tol=1e-6):
        raise RuntimeError(f"benchmarks.gpu's copy of DSTPP.loss gives {ours} where DSTPP.loss gives {theirs} with "
                           "the same noise: DSTPP.loss changed; update NoisyLoss / draw_noise to match it")


def fixed_batches(train_set, batch_size: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` length-bucketed shuffled batches of the train split (more epochs' worth where one is too few)."""
    out, epoch = [], 0
    while len(out) < count:
        out += train_set.batches(batch_size, shuffle=True, seed=seed, epoch=epoch)
        epoch += 1
    return out[:count]


def loss_parity(model, train_set, device: torch.device, batch_size: int, n_batches: int, amp: bool,
                compile_: bool, rtol: float, seed: int) -> dict:
    """Per-batch training losses on the CPU (float32) and on ``device`` (bf16 autocast when ``amp``, compiled when
    ``compile_``) for the same weights, batches, steps and noise; eval mode, so no dropout draws differ. Passes
    when every batch's denoising MSE agrees within ``rtol`` relative, and so does its magnitude NLL (a model with a
    magnitude head) relative to max(|NLL|, 1) nat, since that term can sit near 0."""
    ref = copy.deepcopy(model).cpu().float().eval()
    dev = copy.deepcopy(model).to(device).eval()
    ref_loss, dev_loss = NoisyLoss(ref), NoisyLoss(dev)
    if compile_:
        dev_loss = torch.compile(dev_loss)
    index = fixed_batches(train_set, batch_size, n_batches, seed)
    check_noisy_loss(ref, train_set.collate(index[0]), seed)
    values = {"cpu_mse": [], "device_mse": [], "cpu_mark_nll": [], "device_mark_nll": [], "cpu_loss": [],
              "device_loss": [], "eps_rel_rms_diff": []}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, idx in enumerate(index):
            batch = train_set.collate(idx)
            k, noise = draw_noise(ref, batch.num_targets, seed + i)
            mse, mark, eps = ref_loss(batch, k, noise)
            with autocast(device, amp):
                dev_mse, dev_mark, dev_eps = dev_loss(batch.to(device), k.to(device), noise.to(device))
            for key, value in (("mse", mse), ("mark_nll", mark)):
                values[f"cpu_{key}"].append(float(value))
            for key, value in (("mse", dev_mse), ("mark_nll", dev_mark)):
                values[f"device_{key}"].append(float(value))
            values["cpu_loss"].append(total_loss(ref, mse, mark))
            values["device_loss"].append(total_loss(ref, dev_mse, dev_mark))
            values["eps_rel_rms_diff"].append(float((dev_eps.cpu() - eps).norm() / eps.norm().clamp(min=1e-12)))
    seconds = time.perf_counter() - t0
    a = {key: np.array(v) for key, v in values.items()}
    diff = np.abs(a["device_mse"] - a["cpu_mse"])
    rel = diff / np.maximum(np.abs(a["cpu_mse"]), 1e-12)
    mark_rel = np.abs(a["device_mark_nll"] - a["cpu_mark_nll"]) / np.maximum(np.abs(a["cpu_mark_nll"]), 1.0)
    loss_diff = np.abs(a["device_loss"] - a["cpu_loss"])
    has_head = ref.magnitude_head is not None
    finite = all(bool(np.isfinite(v).all()) for v in a.values())
    passed = finite and float(rel.max()) <= rtol and float(mark_rel.max()) <= rtol
    return {"batches": len(index), "batch_size": batch_size, **values, "magnitude_head": has_head,
            "device_dtype": "bfloat16 autocast" if amp else "float32", "compiled": compile_,
            "max_abs_diff": float(diff.max()), "max_rel_diff": float(rel.max()), "mean_rel_diff": float(rel.mean()),
            "max_mark_rel_diff": float(mark_rel.max()) if has_head else None,
            "max_loss_abs_diff": float(loss_diff.max()), "mean_loss_cpu": float(a["cpu_mse"].mean()),
            "max_eps_rel_rms_diff": float(a["eps_rel_rms_diff"].max()), "rtol": rtol, "passed": passed,
            "seconds": seconds, "mode": "eval (no dropout); steps and noise drawn on the CPU, seed + batch number; "
            "max_rel_diff and mean_loss_cpu are of the denoising MSE"}


# ------------------------------------------------------------------------------------------------ 2. training
def train_throughput(model, train_set, tc, device: torch.device, steps: int, warmup: int, amp: bool,
                     compile_: bool, seed: int):
    """Target events/s of ``steps`` calls of :func:`stforecast.train.train_step` after ``warmup`` untimed ones, on a
    copy of ``model`` (AdamW with the config's settings, constant learning rate ``tc.lr``), each step with its
    batch's collation and copy to the device, as the training loop times it → (record, the trained copy)."""
    from stforecast import train as training

    model = copy.deepcopy(model).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    net = torch.compile(model) if compile_ else model  # as stforecast.train.train wraps it
    index = fixed_batches(train_set, tc.batch_size, warmup + steps, seed)
    losses: list[float] = []

    def step(idx) -> int:
        batch = train_set.collate(idx).to(device, non_blocking=True)
        losses.append(training.train_step(net, model, batch, opt, tc.lr, tc.grad_clip, amp))
        return batch.num_targets

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for idx in index[:warmup]:
        step(idx)
    sync(device)
    warm_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    events = sum(step(idx) for idx in index[warmup:])
    sync(device)
    seconds = time.perf_counter() - t0
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"training on {device} gave a non-finite loss ({losses}): bf16/compile trouble")
    return {"steps": steps, "warmup_steps": warmup, "warmup_seconds": warm_seconds, "events": events,
            "seconds": seconds, "events_per_s": events / seconds, "steps_per_s": steps / seconds,
            "batch_size": tc.batch_size, "lr": tc.lr, "first_loss": losses[0], "last_loss": losses[-1],
            "params": model.num_parameters(), "peak_mb": peak_mb(device), "amp": amp, "compiled": compile_}, model


def full_train(tc, device: torch.device) -> dict:
    """:func:`stforecast.train.train` itself with these settings on ``device`` (a fresh run in ``tc.out_dir``):
    wall time to its validation optimum (early stopping) and the best validation loss."""
    from stforecast.train import train

    t0 = time.perf_counter()
    result = train(tc)
    sync(device)
    wall = time.perf_counter() - t0
    return {"wall_seconds": wall, "best_val_loss": result.best_val, "best_step": result.best_step,
            "steps": result.steps, "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
            "events_per_s": result.events_per_second, "out_dir": str(result.out_dir),
            "amp": tc.amp and device.type == "cuda", "compiled": tc.compile and device.type == "cuda",
            "epochs": tc.epochs, "patience": tc.patience, "max_steps": tc.max_steps}


# ------------------------------------------------------------------------------------------------ 3. sampling
def histories(data, count: int, seed: int):
    """A padded batch of ``count`` histories: random prefixes (≥ 1 row) of random windows of ``data``."""
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, len(data), count)
    cut = 1 + (rng.random(count) * (data.lengths[seq] - 1)).astype(int)
    hist, _ = data.prefixes(seq, cut)
    return hist.collate(np.arange(len(hist)))


@torch.no_grad()
def next_event_samples(model, batch, n: int, generator: torch.Generator) -> torch.Tensor:
    """(B, n, 3) next-event draws as :meth:`DiffusionNextEvent.sample` makes them (encoder, reference location,
    ``model.sampling``), with a generator on the model's device (that method's own generator is a CPU one)."""
    cond = model.last_states(batch)
    return model.sample_from_condition_with(cond, n, model.sampler_object(), generator,
                                            model.reference_location(batch))


def sampling_throughput(model, data, device: torch.device, sizes: list[tuple[int, int]], samplers: list[str],
                        amp: bool, compile_: bool, ode_tolerance: float, seed: int) -> list[dict]:
    """samples/s for every (histories, samples) size and sampler, each timed call after an untimed one of the same
    size (compilation for those shapes, CUDA kernels and memory pool), CUDA synchronised around the timed call."""
    model = copy.deepcopy(model).to(device).eval()
    if compile_:
        model.encoder.compile()
        model.denoiser.compile()
    calls = [0]  # network evaluations of the ODE: counted in eager code around the (compiled) denoiser
    continuous = model.continuous_denoiser

    def counting(ctx):
        denoise = continuous(ctx)

        def counted(x, s):
            calls[0] += 1
            return denoise(x, s)

        return counted

    model.continuous_denoiser = counting
    rows = []
    for name in samplers:
        kind, bf16 = name.removesuffix(":fp32"), amp and not name.endswith(":fp32")
        if kind == "ode":
            model = model.with_sampling(Sampling(sampler="ode", tolerance=ode_tolerance))
            label = f"ODE (tol {ode_tolerance:g})"
        else:
            model = model.with_sampling(Sampling(sampler="ddim", steps=int(kind[4:])))
            label = f"DDIM-{min(int(kind[4:]), model.cfg.steps)}"
        label += "" if bf16 == amp else ", float32"
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        for count, n in sizes:
            batch = histories(data, count, seed).to(device)
            with autocast(device, bf16):
                next_event_samples(model, batch, n, gen)
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            calls[0] = 0
            t0 = time.perf_counter()
            with autocast(device, bf16):
                draws = next_event_samples(model, batch, n, gen)
            sync(device)
            seconds = time.perf_counter() - t0
            finite = float(torch.isfinite(draws).all(-1).float().mean())
            rows.append({"sampler": name, "label": label, "histories": count, "samples_per_history": n,
                         "samples": count * n, "seconds": seconds, "samples_per_s": count * n / seconds,
                         "network_evaluations": calls[0] if kind == "ode" else len(model.sampler_object().timesteps),
                         "finite_fraction": finite, "peak_mb": peak_mb(device), "amp": bf16, "compiled": compile_})
    return rows


# ------------------------------------------------------------------------------------------------ the run
def device_record(device: torch.device) -> dict:
    rec = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "cpu_threads": torch.get_num_threads(), "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec.update(name=torch.cuda.get_device_name(device), memory_gb=props.total_memory / 2**30,
                   capability=f"{props.major}.{props.minor}", bf16_supported=torch.cuda.is_bf16_supported(),
                   cudnn=torch.backends.cudnn.version())
    else:
        rec.update(name=platform.processor() or platform.machine())
    return rec


def table(record: dict) -> str:
    d, p, t = record["device"], record["parity"], record["training"]
    s = record["settings"]
    lines = [f"device {d['device']} ({d['name']}), torch {d['torch']}, CUDA {d['cuda'] or '-'}; "
             f"bf16 autocast {'on' if s['amp'] else 'off'}, torch.compile {'on' if s['compile'] else 'off'}",
             f"model: {s['settings_of']} benchmark settings{' (--quick)' if s['quick'] else ''}, "
             f"{t['params']:,} parameters, K = {s['model']['steps']}; data {s['data']}", ""]
    mark = (f"; magnitude NLL max rel {p['max_mark_rel_diff']:.2e}" if p["magnitude_head"] else "")
    rows = [("loss parity", f"{p['batches']} batches of {p['batch_size']}",
             f"denoising loss max |diff| {p['max_abs_diff']:.2e}, max rel {p['max_rel_diff']:.2e} (mean "
             f"{p['mean_loss_cpu']:.4f}){mark}; tolerance rel {p['rtol']:g}: {'PASS' if p['passed'] else 'FAIL'}; "
             f"noise estimates {p['max_eps_rel_rms_diff']:.2e} apart"),
            ("training", f"{t['steps']} steps of {t['batch_size']} (+{t['warmup_steps']} warm-up)",
             f"{t['events_per_s']:,.0f} target events/s ({t['events']:,} in {t['seconds']:.2f} s; warm-up "
             f"{t['warmup_seconds']:.1f} s; peak {t['peak_mb']:,.0f} MB)")]
    for r in record["sampling"]:
        rows.append((f"sampling {r['label']}", f"{r['histories']:,} x {r['samples_per_history']:,}",
                     f"{r['samples_per_s']:,.0f} samples/s ({r['seconds']:.2f} s, {r['network_evaluations']} network "
                     f"evaluations, peak {r['peak_mb']:,.0f} MB)"))
    f = record.get("full_train")
    if f:
        rows.append(("full training", f"{f['steps']} steps, {f['epochs_run']} epoch(s)",
                     f"{f['wall_seconds']:.1f} s wall, best validation loss {f['best_val_loss']:.4f} at step "
                     f"{f['best_step']} ({f['events_per_s']:,.0f} events/s)"))
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    for f in record.get("compile_failures", []):
        lines.append(f"torch.compile FAILED in {f['section']} (measured without it above): {f['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device is None:
        print(no_cuda_message(), file=sys.stderr)
        return EXIT_NO_DEVICE
    if device.type == "cuda" and args.amp and not torch.cuda.is_bf16_supported():
        print(f"benchmarks.gpu: {torch.cuda.get_device_name(device)} has no bf16 support: add --no-amp",
              file=sys.stderr)
        return EXIT_NO_DEVICE
    if device.type == "cpu" and args.amp and not cpu_bf16_lstm():
        # a CPU dry run checks the script, not bf16: oneDNN has no bf16 LSTM on CPUs without AVX-512 (BF16)
        print("benchmarks.gpu: this CPU's oneDNN cannot run the LSTM heads in bf16; the CPU dry run uses float32 "
              "(as --no-amp)", file=sys.stderr, flush=True)
        args.amp = False

    from benchmarks.prepare import ensure_ingested
    from stforecast.ingested import as_catalog
    from stforecast.checkpoints import load_model
    from stforecast.train import build_model

    folder = ensure_ingested(args.data)
    tc, ode_tolerance = train_settings(args, folder, device)
    catalog = as_catalog(folder)  # tc.data: the same folder
    train_set, test_set = catalog.sequences("train"), catalog.sequences("test")
    torch.manual_seed(tc.seed)
    if args.checkpoint:
        model = load_model(args.checkpoint)
    else:
        model = build_model(tc.model_config(), catalog, train_set)
    compile_ = args.compile
    print(f"benchmarks.gpu on {device}: {'untrained' if not args.checkpoint else args.checkpoint} DSTPP with the "
          f"{args.settings_of} benchmark settings on {folder}", flush=True)

    record = {"what": "benchmarks.gpu: DSTPP loss parity (CPU float32 vs device), training and sampling throughput",
              "device": device_record(device),
              "settings": {"argv": sys.argv[1:] if argv is None else list(argv), "data": str(folder),
                           "settings_of": args.settings_of, "quick": args.quick, "amp": args.amp,
                           "compile": compile_, "seed": args.seed, "checkpoint": args.checkpoint,
                           "ode_tolerance": ode_tolerance, "train": tc.to_dict(),
                           "model": dataclasses.asdict(model.cfg)}}
    failures: list[dict] = []
    record["compile_failures"] = failures

    def run(section: str, measure):
        """``measure(compile_)`` compiled when asked; where torch.compile fails, that failure is recorded (a failed
        check) and the section measured again without it, so one compile problem does not cost the other numbers."""
        if compile_:
            try:
                return measure(True)
            except torch._dynamo.exc.TorchDynamoException as e:  # tracing, fake-tensor and backend failures
                failures.append({"section": section, "error": type(e).__name__, "message": str(e)[:4000]})
                print(f"benchmarks.gpu: {section} failed under torch.compile ({describe_error(e)}); measuring it "
                      "again without compile", file=sys.stderr, flush=True)
                torch._dynamo.reset()
        return measure(False)

    print("1/3 training throughput ...", flush=True)
    record["training"], trained = run("training", lambda c: train_throughput(
        model, train_set, tc, device, args.steps, args.warmup, args.amp, c, args.seed))
    # parity and sampling on weights that have learnt something: an untrained network's loss is ≈ E[noise²] = 1
    # whatever it outputs, so its bf16 error would hardly show in the loss
    if not args.checkpoint:
        model = trained.cpu().float()
    record["settings"]["weights"] = (f"checkpoint {args.checkpoint}" if args.checkpoint else
                                     f"seeded initialisation (seed {tc.seed}) after the {args.warmup + args.steps} "
                                     "training steps of the throughput measurement")
    print("2/3 loss parity ...", flush=True)
    record["parity"] = run("loss parity", lambda c: loss_parity(
        model, train_set, device, tc.batch_size, args.parity_batches, args.amp, c, args.rtol, args.seed))
    print("3/3 sampling throughput ...", flush=True)
    record["sampling"] = run("sampling", lambda c: sampling_throughput(
        model, test_set, device, args.size_list, args.sampler_list, args.amp, c, ode_tolerance, args.seed))
    record["full_train"] = None
    if args.full_train:
        print(f"full training ({tc.epochs} epochs at most, patience {tc.patience}) into {tc.out_dir} ...", flush=True)
        record["full_train"] = run("full training", lambda c: full_train(dataclasses.replace(tc, compile=c), device))
    from stforecast.io.atomic import atomic_write_text

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=2, default=str) + "\n")
    print("\n" + table(record) + f"\n\nwritten {out}")
    status = 0
    if not record["parity"]["passed"]:
        p = record["parity"]
        mark = f", magnitude NLL {p['max_mark_rel_diff']:.3g}" if p["magnitude_head"] else ""
        print(f"benchmarks.gpu: loss parity FAILED: max relative difference of the denoising loss "
              f"{p['max_rel_diff']:.3g}{mark} (tolerance {p['rtol']:g}) between the CPU (float32) and {device} "
              f"({p['device_dtype']})", file=sys.stderr)
        status = EXIT_CHECK
    if failures:
        print(f"benchmarks.gpu: torch.compile FAILED in {', '.join(f['section'] for f in failures)} (those rows were "
              f"measured without it; the errors are in {out})", file=sys.stderr)
        status = EXIT_CHECK
    return status


def describe_error(e: BaseException) -> str:
    """One line for a (often many-line) torch.compile error: its first line, and the user code it points at."""
    text = str(e).strip().splitlines() or [type(e).__name__]
    where = [line.strip() for line in text if line.strip().startswith("File ")]
    return f"{type(e).__name__}: {text[0][:200]}" + (f"; at {where[-1][:200]}" if where else "")


if __name__ == "__main__":
    raise SystemExit(main())
