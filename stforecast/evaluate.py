"""Next-event evaluation on held-out time: DSTPP and the baselines scored on the same target events.

A target is a held-out event with at least one earlier event in its sequence. DSTPP sees the sequence up to it
(``SequenceSet.prefixes``); the baselines see the whole catalog before it (``events.parquet`` is time-sorted and
``event_index`` points into it). Every model draws ``n`` samples per target and is scored with the same
functions, and every model reports a next-event negative log-likelihood in the catalog's model units
(manifest ``schema``: e.g. days and km), nats per event:

* baselines (exact densities): ``nll_dt`` = −log p(dt) = −(log λ(t) − ∫ λ) of the waiting time, ``nll_xy`` =
  −log p(x, y | t) of the location given the time, ``nll_joint`` their sum;
* DSTPP: the **exact** joint density of its probability-flow ODE (``nll_kind`` "exact-ode"; the density of the
  ODE sampler its forecasts draw from), converted from the scaled diffusion space with the normaliser's Jacobian;
  ``nll_dt`` / ``nll_xy`` are empty (the ODE gives the joint only). Beside it ``nll_bound`` is the full
  variational upper bound (all K terms, reverse variances fitted on the validation split) and ``nll_bound_dt`` /
  ``nll_bound_xy`` its coordinates' terms; ``nll_mc_se`` is the Monte-Carlo error of the bound alone;
  ``nll_ode_solver_error`` the change when the ODE tolerance is halved. ``nll_joint_se`` (all models) is the
  standard error of the mean over events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stforecast.batch import SequenceSet
from stforecast.defaults import HDR_EVENTS, SCORE_SAMPLES
from stforecast.ingested import as_catalog
from stforecast.metrics import crps_from_samples, energy_score, hdr_coverage, interval_coverage
from stforecast.models.base import MARK_COLUMNS, Histories


@dataclass
class Targets:
    """``H`` held-out next events: their sequence prefixes (``histories``, a SequenceSet), the truth (H, 3) =
    (dt, x, y), and their positions in the catalog stream."""

    histories: SequenceSet
    truth: np.ndarray
    stream_index: np.ndarray
    truth_marks: dict = field(default_factory=dict)  # {name: (H,)} the true events' marks (magnitudes)

    def histories_for(self, events: pd.DataFrame | None, length: int) -> Histories:
        """What every model conditions on: the ``length`` events before each target in the whole catalog (with
        marks), carrying the sequence prefixes as the sequence view; for the source's own windows (no continuous
        stream), the sequence prefixes alone."""
        if events is None:
            return Histories.from_sequences(self.histories)
        marks = {c: events[c].to_numpy() for c in MARK_COLUMNS if c in events}
        return Histories.from_stream(events["t"].to_numpy(), events[["x", "y"]].to_numpy(), self.stream_index,
                                     length, marks, sequences=self.histories)


def next_event_targets(catalog, split: str = "test", max_targets: int | None = None, seed: int = 0) -> Targets:
    """Every target of ``split`` with ≥ 1 event before it in its sequence (or a seeded subset of
    ``max_targets``) of ``catalog`` (an :class:`~stforecast.ingested.IngestedCatalog`, or its folder or name)."""
    frame = as_catalog(catalog).sequence_frame(split)
    frame = frame.sort_values(["sequence", "position"], kind="stable").reset_index(drop=True)
    data = SequenceSet.from_frame(frame)
    seq_index = np.repeat(np.arange(len(data)), data.lengths)
    rows = np.flatnonzero(frame["is_target"].to_numpy() & (frame["position"].to_numpy() >= 1))
    if max_targets is not None and len(rows) > max_targets:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_targets, replace=False))
    histories, truth = data.prefixes(seq_index[rows], frame["position"].to_numpy()[rows])
    marks = {c: frame[c].to_numpy(float)[rows] for c in MARK_COLUMNS if c in frame}
    return Targets(histories, truth, frame["event_index"].to_numpy()[rows], marks)


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


RELIABILITY_LEVELS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))


def collate_all(histories: SequenceSet):
    return histories.collate(np.arange(len(histories)))


def evaluate_next_event(targets: Targets, events: pd.DataFrame | None, models: dict, n: int = SCORE_SAMPLES,
                        seed: int = 0, calibration: Targets | None = None,
                        hdr_events: int = HDR_EVENTS, progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """One row per model (sample scores and the NLL columns of the module docstring), and per model its
    reliability curves ``{"dt": {level: coverage}, "xy": {...}}``. Every model is a
    :class:`~stforecast.models.base.Forecaster`: each forecasts the same histories, is sampled ``n`` times per
    target and scored by the same functions. ``calibration`` (validation targets) is offered to every model
    (DSTPP fits its bound's reverse variances on it); ``events`` (the whole stream) gives the histories their
    whole past (None for the source's own windows). ``progress``: a bar over the models' stages (calibrate,
    sample, likelihood, coverage), with counts and an ETA."""
    rows, curves = [], {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(models) * (4 if calibration is not None else 3), desc="scoring", unit="stage")

    def done(stage: str, name: str) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{name}: {stage}")
            bar.update(1)

    context = max((m.context for m in models.values()), default=1)
    histories = targets.histories_for(events, context)
    if calibration is not None:
        val_histories = calibration.histories_for(events, context)
        for name, model in models.items():
            model.calibrate(val_histories, calibration.truth)
            done("calibrated", name)
    for name, model in models.items():
        dist = model.forecast(histories)
        samples = dist.sample(n, np.random.default_rng(seed)).events
        done("sampled", name)
        nll = dist.nll(targets.truth)
        done("likelihood", name)
        row = {"model": name, **nll.row(), "nll_magnitude": float("nan"), "nll_magnitude_gr": float("nan")}
        # the magnitude's NLL where the model forecasts magnitudes (DSTPP's head, ETAS's Gutenberg-Richter law)
        for mark, values in dist.mark_nll(targets.truth_marks).items():
            row[f"nll_{mark}"] = float(np.mean(values))
        curves[name] = reliability(samples, targets.truth, hdr_max=hdr_events)
        # per-event joint NLL: paired differences between models (the gap's standard error) need them
        curves[name]["nll_joint"] = [float(v) for v in nll.joint_per_event]
        row.update(sample_scores(samples, targets.truth, curves=curves[name]))
        rows.append(row)
        done("scored", name)
    if bar is not None:
        bar.close()
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
    from stforecast.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
