"""Next-event evaluation on held-out time: DSTPP and the baselines scored on the same target events.

A target is a held-out event with at least one earlier event in its sequence. DSTPP sees the sequence up to it
(``SequenceSet.prefixes``); the baselines see the whole catalog before it (``events.parquet`` is time-sorted and
``event_index`` points into it). Every model draws ``n`` samples per target and is scored with the same
functions, and every model reports a next-event negative log-likelihood in the catalog's model units
(manifest ``schema``: e.g. days and km), nats per event:

* baselines (exact densities): ``nll_dt`` = −log p(dt) = −(log λ(t) − ∫ λ) of the waiting time, ``nll_xy`` =
  −log p(x, y | t) of the location given the time, ``nll_joint`` their sum;
* DSTPP (no tractable density): the full variational **upper bound** (all K terms, reverse variances fitted on
  the validation split), converted from the scaled diffusion space with the normaliser's Jacobian.
  ``nll_joint`` bounds −log p(dt, x, y); ``nll_dt`` / ``nll_xy`` are the waiting-time and location coordinates'
  terms of that joint bound (the denoiser sees all three coordinates at once, so they are a split of one bound,
  not a marginal and a conditional). ``nll_mc_se`` is the Monte-Carlo error of the bound alone;
  ``nll_joint_se`` (all models) is the standard error of the mean over events.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stforecast.batch import SequenceSet
from stforecast.defaults import HDR_EVENTS, SAMPLER_STEPS, SCORE_SAMPLES
from stforecast.metrics import crps_from_samples, energy_score, hdr_coverage, interval_coverage


@dataclass
class Targets:
    """``H`` held-out next events: DSTPP histories, the truth (H, 3) = (dt, x, y), and stream positions."""

    histories: SequenceSet
    truth: np.ndarray
    stream_index: np.ndarray


def load_stream(processed_dir) -> pd.DataFrame:
    return pd.read_parquet(Path(processed_dir) / "events.parquet")


def next_event_targets(processed_dir, split: str = "test", max_targets: int | None = None, seed: int = 0) -> Targets:
    frame = pd.read_parquet(Path(processed_dir) / "sequences" / f"split={split}")
    frame = frame.sort_values(["sequence", "position"], kind="stable").reset_index(drop=True)
    data = SequenceSet.from_frame(frame)
    seq_index = np.repeat(np.arange(len(data)), data.lengths)
    rows = np.flatnonzero(frame["is_target"].to_numpy() & (frame["position"].to_numpy() >= 1))
    if max_targets is not None and len(rows) > max_targets:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_targets, replace=False))
    histories, truth = data.prefixes(seq_index[rows], frame["position"].to_numpy()[rows])
    return Targets(histories, truth, frame["event_index"].to_numpy()[rows])


def sample_scores(samples: np.ndarray, truth: np.ndarray, hdr_max: int = 300, curves: dict | None = None) -> dict:
    """Scores of (H, n, ≥3) samples of (dt, x, y) against (H, 3) truth (lower is better except coverage).
    ``curves`` from :func:`reliability` on the same samples supplies the coverage instead of recomputing it."""
    dt, loc = samples[..., 0], samples[..., 1:3]
    mean, median = dt.mean(1), np.median(dt, 1)
    out = {
        "crps_dt": float(crps_from_samples(dt, truth[:, 0]).mean()),
        "energy_xy": float(energy_score(loc, truth[:, 1:3]).mean()),
        "mae_dt_mean": float(np.abs(mean - truth[:, 0]).mean()),
        "mae_dt_median": float(np.abs(median - truth[:, 0]).mean()),
        "rmse_dt_mean": float(np.sqrt(((mean - truth[:, 0]) ** 2).mean())),
        "rmse_dt_median": float(np.sqrt(((median - truth[:, 0]) ** 2).mean())),
        "dist_xy_mean": float(np.hypot(*(loc.mean(1) - truth[:, 1:3]).T).mean()),
        # the location's median is coordinate-wise
        "dist_xy_median": float(np.hypot(*(np.median(loc, 1) - truth[:, 1:3]).T).mean()),
        # the published protocol: one sample per target
        "rmse_dt_single": float(np.sqrt(((dt[:, 0] - truth[:, 0]) ** 2).mean())),
        "dist_xy_single": float(np.hypot(*(loc[:, 0] - truth[:, 1:3]).T).mean()),
    }
    curves = curves or reliability(samples, truth, (0.5, 0.8, 0.95), hdr_max)
    for key in ("dt", "xy"):
        for level in (0.5, 0.8, 0.95):
            out[f"cover_{key}_{int(level * 100)}"] = curves[key][level]
    return out


def fit_baselines(events: pd.DataFrame, fit_end: float, mc: float | None = None, max_events: int | None = None,
                  names=("poisson_kde", "hawkes", "etas")) -> dict:
    """Poisson × KDE, Hawkes and (with magnitudes) ETAS fitted by maximum likelihood on events before
    ``fit_end`` (model time: the validation start, so neither validation nor test data is used).
    ``max_events`` fits on only the latest events before ``fit_end`` (quick runs)."""
    from stforecast.baselines import ETAS, HawkesST, PoissonKDE

    past = events[events["t"] < fit_end]
    if max_events is not None:
        past = past.iloc[-max_events:]
    t, xy = past["t"].to_numpy(), past[["x", "y"]].to_numpy()
    models = {}
    if "poisson_kde" in names:
        models["poisson_kde"] = PoissonKDE().fit(t, xy, fit_end)
    if "hawkes" in names:
        models["hawkes"] = HawkesST().fit(t, xy, fit_end)
    if "etas" in names and "magnitude" in past and mc is not None:
        models["etas"] = ETAS(mc).fit(t, xy, past["magnitude"].to_numpy(), fit_end)
    return models


RELIABILITY_LEVELS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))


def dstpp_nll(model, histories, truth: np.ndarray, calibration: Targets | None, repeats: int = 4,
              seed: int = 0) -> dict:
    """The DSTPP rows' likelihood columns: the fitted-variance bound in model units (see the module docstring)
    and, for comparison with the published numbers, the paper's own protocol: the fixed-variance bound in the
    scaled space, temporal = the waiting-time coordinate, spatial = the **mean** over x and y."""
    gen = torch.Generator().manual_seed(seed)
    truth = torch.as_tensor(truth)
    mse = None
    if calibration is not None:
        mse = model.reverse_variance_fit(collate_all(calibration.histories), torch.as_tensor(calibration.truth),
                                         generator=gen)
    bound = model.nll_bound(histories, truth, repeats=repeats, x0_mse=mse, generator=gen)
    per_event = bound.per_event.cpu().numpy()
    joint = per_event.sum(1)
    paper = model.nll_bound(histories, truth, repeats=1, generator=gen).scaled[0].cpu().numpy()
    return {"nll_dt": float(per_event[:, 0].mean()), "nll_xy": float(per_event[:, 1:].sum(1).mean()),
            "nll_joint": float(joint.mean()), "nll_joint_se": float(joint.std(ddof=1) / np.sqrt(len(joint))),
            "nll_mc_se": bound.mc_se, "nll_kind": "bound" if mse is not None else "bound (fixed variances)",
            "paper_nll_dt_scaled": float(paper[:, 0].mean()), "paper_nll_xy_scaled": float(paper[:, 1:].mean())}


def collate_all(histories: SequenceSet):
    return histories.collate(np.arange(len(histories)))


def evaluate_next_event(targets: Targets, events: pd.DataFrame | None, models: dict, n: int = SCORE_SAMPLES,
                        seed: int = 0, dstpp_sampler: str = "ddim", dstpp_steps: int = SAMPLER_STEPS,
                        calibration: Targets | None = None, bound_repeats: int = 4,
                        hdr_events: int = HDR_EVENTS) -> tuple[pd.DataFrame, dict]:
    """One row per model (sample scores and the NLL columns of the module docstring), and per model its
    reliability curves ``{"dt": {level: coverage}, "xy": {...}}``. ``calibration`` (validation targets) fits
    DSTPP's reverse variances; ``events`` (the whole stream) is only needed by the baselines."""
    rows, curves = [], {}
    histories = collate_all(targets.histories)
    if events is not None:
        t, xy = events["t"].to_numpy(), events[["x", "y"]].to_numpy()
        mags = events["magnitude"].to_numpy() if "magnitude" in events else None
    for name, model in models.items():
        rng = np.random.default_rng(seed)
        row = {"model": name}
        if hasattr(model, "sample_from_condition"):  # DSTPP
            gen = torch.Generator().manual_seed(seed)
            samples = model.sample_next(histories, n, sampler=dstpp_sampler, steps=dstpp_steps,
                                        generator=gen).double().cpu().numpy()
            row.update(dstpp_nll(model, histories, targets.truth, calibration, bound_repeats, seed))
        else:
            idx = targets.stream_index
            args = (t, xy, mags) if getattr(model, "uses_magnitudes", False) else (t, xy)
            samples = model.sample_next(*args, idx, n, rng)
            lt, ls = model.next_event_logpdf(*args, idx)
            joint = -(lt + ls)
            row.update(nll_dt=float(-lt.mean()), nll_xy=float(-ls.mean()), nll_joint=float(joint.mean()),
                       nll_joint_se=float(joint.std(ddof=1) / np.sqrt(len(joint))), nll_kind="exact")
        curves[name] = reliability(samples, targets.truth, hdr_max=hdr_events)
        row.update(sample_scores(samples, targets.truth, curves=curves[name]))
        rows.append(row)
    return pd.DataFrame(rows), curves


def reliability(samples: np.ndarray, truth: np.ndarray, levels=RELIABILITY_LEVELS, hdr_max: int = HDR_EVENTS) -> dict:
    """Empirical coverage at each nominal level: central waiting-time intervals and location HDRs."""
    k = min(len(truth), hdr_max)
    return {"dt": interval_coverage(samples[..., 0], truth[:, 0], levels),
            "xy": hdr_coverage(samples[:k, :, 1:3], truth[:k, 1:3], levels)}


def plot_reliability(curves: dict, path, title: str = "") -> None:
    """Reliability diagram (nominal vs empirical coverage; the diagonal is perfect calibration) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, key, label in zip(axes, ("dt", "xy"), ("waiting time: central intervals", "location: highest-density regions")):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for name, curve in curves.items():
            levels = sorted(curve[key])
            ax.plot(levels, [curve[key][lv] for lv in levels], marker="o", ms=3, label=name)
        ax.set(title=label, xlabel="nominal coverage", xlim=(0, 1), ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("empirical coverage")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
