"""Report figures (matplotlib, Agg): readable as they are, axes labelled with names and units.

Each function draws one figure from diagnostic arrays and writes one PNG; none computes a metric,
so what a figure shows is what ``metrics.json`` holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from scipy import stats  # noqa: E402

DPI = 110


def param_label(name: str, physics: dict[str, str] | None = None, unit: str = "LSB") -> str:
    """``leak_i_bias [LSB] (tau_mem)``: the CapMem name, its unit and what it sets physically."""
    extra = f" ({physics[name]})" if physics and name in physics else ""
    return f"{name} [{unit}]{extra}"


def _grid(
    n: int, ncols: int = 4, size: tuple[float, float] = (3.4, 2.8)
) -> tuple[plt.Figure, list[plt.Axes]]:
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=DPI)
    plt.close(fig)
    return p


def plot_sbc_ranks(
    hist: NDArray[np.integer],
    bin_edges: NDArray[np.floating],
    ks_pvals: NDArray[np.floating],
    names: Sequence[str],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Rank histograms per parameter with the 99 % band of a uniform histogram (grey)."""
    h = np.asarray(hist)
    n_obs = int(h[0].sum())
    nb = h.shape[1]
    lo, hi = stats.binom.ppf([0.005, 0.995], n_obs, 1.0 / nb)
    fig, axes = _grid(len(names))
    for d, ax in enumerate(axes):
        ax.axhspan(lo, hi, color="0.85", label="99 % uniform band")
        ax.axhline(n_obs / nb, color="0.5", lw=0.8)
        ax.stairs(h[d], bin_edges, fill=True, color="C0", alpha=0.8)
        ax.set_title(f"{names[d]}\nKS p = {ks_pvals[d]:.3g}", fontsize=9)
        ax.set_xlabel("rank of truth among posterior samples")
        ax.set_ylabel("observations")
    axes[0].legend(fontsize=7, loc="lower center")
    fig.suptitle(title)
    return _save(fig, path)


def plot_coverage(
    levels: NDArray[np.floating],
    marginal: NDArray[np.floating],
    names: Sequence[str],
    tarp_alpha: NDArray[np.floating],
    tarp_ecp: NDArray[np.floating],
    path: str | Path,
    *,
    hpd: NDArray[np.floating] | None = None,
    title: str,
) -> Path:
    """Left: TARP/HPD expected coverage (joint); right: central-interval coverage per parameter."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax in (a, b):
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        ax.fill_between([0, 1], [0, 1], [0, 0], color="C3", alpha=0.06)
        ax.text(0.62, 0.08, "over-confident\n(below diagonal)", fontsize=8, color="C3")
        ax.text(0.05, 0.85, "under-confident\n(above diagonal)", fontsize=8, color="C2")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("credibility level")
        ax.set_ylabel("empirical coverage (fraction of truths inside)")
    a.plot(tarp_alpha, tarp_ecp, "C0", lw=2, label="TARP (all 7 parameters)")
    if hpd is not None:
        a.plot(levels, hpd, "C1o-", ms=3, label="HPD region (posterior density)")
    a.set_title("joint expected coverage")
    a.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.75))
    for d, name in enumerate(names):
        b.plot(levels, marginal[:, d], "-o", ms=2.5, lw=1.2, label=name)
    b.set_title("central credible interval, per parameter")
    b.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, 0.75))
    fig.suptitle(title)
    return _save(fig, path)


def plot_recovery(
    theta: NDArray[np.floating],
    post_mean: NDArray[np.floating],
    post_std: NDArray[np.floating],
    names: Sequence[str],
    low: NDArray[np.floating],
    high: NDArray[np.floating],
    nrmse: NDArray[np.floating],
    contraction: NDArray[np.floating],
    path: str | Path,
    *,
    physics: dict[str, str] | None = None,
    title: str,
) -> Path:
    """Posterior mean (±1 std) against the true value, one panel per parameter."""
    fig, axes = _grid(len(names), size=(3.5, 3.3))
    for d, ax in enumerate(axes):
        ax.plot([low[d], high[d]], [low[d], high[d]], "k--", lw=0.8)
        ax.errorbar(
            theta[:, d],
            post_mean[:, d],
            yerr=post_std[:, d],
            fmt="o",
            ms=2,
            lw=0.4,
            alpha=0.5,
            color="C0",
            ecolor="C0",
        )
        ax.set_xlim(low[d], high[d])
        ax.set_ylim(low[d], high[d])
        ax.set_title(
            f"{names[d]}\nNRMSE {nrmse[d]:.2f}, contraction {contraction[d]:.2f}", fontsize=9
        )
        ax.set_xlabel("true " + param_label(names[d], physics), fontsize=8)
        ax.set_ylabel("posterior mean ±1 std [LSB]", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_contraction_z(
    contraction: NDArray[np.floating],
    z: NDArray[np.floating],
    names: Sequence[str],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Schad et al.'s diagnostic: per observation, contraction (x) vs z-score (y) of each parameter.

    Good: points right (contraction near 1) and within |z| < 2. Over-confident: |z| spread wide.
    """
    fig, axes = _grid(len(names), size=(3.3, 2.9))
    for d, ax in enumerate(axes):
        ax.axhspan(-2, 2, color="0.9")
        ax.scatter(contraction[:, d], z[:, d], s=4, alpha=0.5)
        ax.set_xlim(max(-1.0, min(-0.1, float(np.nanmin(contraction[:, d])) - 0.05)), 1.05)
        lim = max(4.0, float(np.nanquantile(np.abs(z[:, d]), 0.99)) * 1.1)
        ax.set_ylim(-lim, lim)
        ax.set_title(names[d], fontsize=9)
        ax.set_xlabel("contraction 1 - var_post / var_prior", fontsize=8)
        ax.set_ylabel("z = (mean - truth) / std", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_ppc(
    time_us: NDArray[np.floating],
    obs_mv: NDArray[np.floating],
    pred_mv: NDArray[np.floating],
    obs_counts: NDArray[np.floating],
    pred_counts: NDArray[np.floating],
    stim: tuple[float, float],
    path: str | Path,
    *,
    title: str,
    labels: Sequence[str] | None = None,
) -> Path:
    """Observed membrane trace (black) over traces simulated from posterior samples (blue).

    One row per observation.
    """
    k = obs_mv.shape[0]
    fig, axes = plt.subplots(
        k, 2, figsize=(12, 2.6 * k), squeeze=False, gridspec_kw={"width_ratios": [4, 1]}
    )
    for i in range(k):
        a, b = axes[i]
        a.axvspan(stim[0], stim[1], color="C1", alpha=0.07, label="step current")
        for j in range(min(pred_mv.shape[1], 10)):
            a.plot(
                time_us,
                pred_mv[i, j],
                color="C0",
                lw=0.6,
                alpha=0.35,
                label="posterior predictive" if j == 0 else None,
            )
        a.plot(time_us, obs_mv[i], color="k", lw=0.9, label="observed")
        a.set_xlabel("time [µs, hardware]")
        a.set_ylabel("membrane [mV]")
        a.set_title(labels[i] if labels else f"observation {i}", fontsize=9)
        bins = np.arange(
            min(pred_counts[i].min(), obs_counts[i]) - 0.5,
            max(pred_counts[i].max(), obs_counts[i]) + 1.5,
        )
        b.hist(pred_counts[i], bins=bins, color="C0", alpha=0.7, label="predicted")
        b.axvline(obs_counts[i], color="k", lw=2, label="observed")
        b.set_xlabel("spike count during step")
        b.set_ylabel("predictions")
    axes[0][0].legend(fontsize=7, loc="upper right")
    axes[0][1].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_feature_z(
    feature_z: NDArray[np.floating], feature_names: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """Standardised discrepancy of each statistic between observation and posterior predictive."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    k = feature_z.shape[0]
    x = np.arange(len(feature_names))
    width = 0.8 / k
    for i in range(k):
        ax.bar(
            x + (i - (k - 1) / 2) * width,
            np.clip(feature_z[i], -6, 6),
            width,
            label=f"observation {i}",
        )
    ax.axhspan(-2, 2, color="0.9", zorder=0)
    ax.set_xticks(x, feature_names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("(observed - predictive mean) / predictive std")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=min(k, 4))
    return _save(fig, path)


def plot_pair(
    samples: NDArray[np.floating],
    truth: NDArray[np.floating],
    names: Sequence[str],
    low: NDArray[np.floating],
    high: NDArray[np.floating],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """Pair plot of one posterior over the prior box, the true parameters marked in red."""
    d = samples.shape[1]
    fig, axes = plt.subplots(d, d, figsize=(1.9 * d, 1.9 * d))
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                ax.hist(samples[:, i], bins=30, range=(low[i], high[i]), color="C0", alpha=0.8)
                ax.axvline(truth[i], color="C3", lw=1.5)
                ax.set_yticks([])
            else:
                ax.scatter(
                    samples[:, j], samples[:, i], s=1, alpha=0.25, color="C0", rasterized=True
                )
                ax.plot(truth[j], truth[i], "*", color="C3", ms=9)
                ax.set_ylim(low[i], high[i])
            ax.set_xlim(low[j], high[j])
            ax.tick_params(labelsize=6)
            if i == d - 1:
                ax.set_xlabel(f"{names[j]} [LSB]", fontsize=7)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(f"{names[i]} [LSB]", fontsize=7)
            elif j > 0:
                ax.set_yticklabels([])
    fig.suptitle(title + "  (red: true parameters)")
    return _save(fig, path)
