"""Calibration, recovery and predictive diagnostics on plain arrays, for any sampler.

Every function here takes ground-truth parameters ``theta`` (N, D) and posterior samples
``samples`` (N, S, D) -- S draws for each of the N observations, the layout of
``AmortizedPosterior.sample_batched`` -- so the same code checks our flows, an exact conjugate
posterior in the tests, or any other sampler. sbi's diagnostics are the anchor: ranks and the
SBC uniformity test come from ``sbi.diagnostics.run_sbc`` / ``check_sbc``'s KS test, TARP from
``run_tarp`` / ``check_tarp``; they are fed our precomputed samples through ``PrecomputedSamples``.

References: Talts et al. 2018 (SBC), Lemos et al. 2023 (TARP), Deistler et al. 2022
(expected coverage from the posterior density), Schad et al. 2021 (contraction and z-scores).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

#: Credibility levels at which coverage is reported (and plotted).
DEFAULT_LEVELS: NDArray[np.float64] = np.round(np.linspace(0.05, 0.95, 19), 4)
#: A marginal fails SBC when its KS p-value is below this, after Bonferroni over parameters.
SBC_ALPHA = 0.01


def _check_pair(
    theta: NDArray[np.floating], samples: NDArray[np.floating]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t = np.asarray(theta, dtype=np.float64)
    s = np.asarray(samples, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"theta shape {t.shape} must be (N, D)")
    if s.ndim != 3 or s.shape[0] != t.shape[0] or s.shape[2] != t.shape[1]:
        raise ValueError(
            f"samples shape {s.shape} must be (N, S, D) = ({t.shape[0]}, S, {t.shape[1]}) "
            f"to match theta {t.shape}"
        )
    if s.shape[1] < 2:
        raise ValueError(f"samples per observation S={s.shape[1]} must be >= 2")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(s))):
        raise ValueError("theta or samples contain NaN or inf")
    return t, s


class PrecomputedSamples:
    """Duck-typed sbi posterior that hands out samples drawn beforehand.

    sbi's ``run_sbc`` / ``run_tarp`` only call ``sample_batched(sample_shape, x=xs)``; here ``xs``
    are observation indices, so any sampler's output goes through sbi's own diagnostic code.
    """

    def __init__(self, samples: NDArray[np.floating]) -> None:
        self._samples = torch.as_tensor(
            np.ascontiguousarray(np.swapaxes(np.asarray(samples, dtype=np.float32), 0, 1))
        )  # (S, N, D)

    @property
    def xs(self) -> torch.Tensor:
        """The stand-in observations: the index of each observation, shape (N, 1)."""
        return torch.arange(self._samples.shape[1], dtype=torch.float32)[:, None]

    def sample_batched(
        self, sample_shape: Sequence[int], x: torch.Tensor, **_: Any
    ) -> torch.Tensor:
        num = int(tuple(sample_shape)[0])
        if num > self._samples.shape[0]:
            raise ValueError(
                f"asked for {num} samples per observation, only {self._samples.shape[0]} were drawn"
            )
        idx = x[:, 0].long()
        return self._samples[:num, idx, :]


@dataclass(frozen=True)
class SBCResult:
    """Simulation-based calibration of each marginal.

    ``ranks`` (N, D): number of posterior samples below the truth, in [0, S]; uniform when
    calibrated.
    ``ks_pvals`` (D,): KS test of the ranks against uniform (sbi's
    ``check_uniformity_frequentist``).
    ``hist`` (D, B): rank histogram counts on ``bin_edges`` (B+1,).
    """

    ranks: NDArray[np.int64]
    num_posterior_samples: int
    ks_pvals: NDArray[np.float64]
    hist: NDArray[np.int64]
    bin_edges: NDArray[np.float64]

    @property
    def calibrated(self) -> NDArray[np.bool_]:
        """Per marginal: KS p-value above SBC_ALPHA / D (Bonferroni over the D marginals)."""
        return self.ks_pvals >= SBC_ALPHA / self.ranks.shape[1]


def sbc(
    theta: NDArray[np.floating], samples: NDArray[np.floating], *, num_bins: int = 20
) -> SBCResult:
    """SBC ranks and uniformity tests through sbi's ``run_sbc``.

    Args:
        theta: (N, D) ground truth drawn from the prior the posterior was trained on.
        samples: (N, S, D) posterior samples, one set per observation.
        num_bins: bins of the rank histogram (for plots and the JSON report).

    Returns:
        SBCResult with ranks, KS p-values and histograms.
    """
    from sbi.diagnostics.sbc import check_uniformity_frequentist, run_sbc

    t, s = _check_pair(theta, samples)
    if not 2 <= num_bins <= s.shape[1] + 1:
        raise ValueError(f"num_bins={num_bins} outside [2, {s.shape[1] + 1}]")
    post = PrecomputedSamples(s)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # sbi warns below 100 observations; we report N
        ranks, _ = run_sbc(
            torch.as_tensor(t, dtype=torch.float32),
            post.xs,
            post,
            num_posterior_samples=s.shape[1],
            show_progress_bar=False,
        )
    ranks_np = ranks.numpy().astype(np.int64)
    pvals = check_uniformity_frequentist(ranks, s.shape[1]).numpy().astype(np.float64)
    edges = np.linspace(0.0, s.shape[1] + 1, num_bins + 1)
    hist = np.stack([np.histogram(ranks_np[:, d], bins=edges)[0] for d in range(t.shape[1])])
    return SBCResult(
        ranks=ranks_np,
        num_posterior_samples=s.shape[1],
        ks_pvals=pvals,
        hist=hist.astype(np.int64),
        bin_edges=edges,
    )


@dataclass(frozen=True)
class TarpResult:
    """TARP expected coverage (Lemos et al. 2023) over all parameters jointly.

    ``ecp`` vs ``alpha`` lies on the diagonal for a calibrated posterior. ``atc`` (area to curve
    above alpha = 0.5) is ~0 when calibrated, < 0 when over-confident, > 0 when too wide;
    ``ks_pval`` is sbi's KS test of ecp against alpha.
    """

    ecp: NDArray[np.float64]
    alpha: NDArray[np.float64]
    atc: float
    ks_pval: float


def tarp(
    theta: NDArray[np.floating],
    samples: NDArray[np.floating],
    *,
    seed: int = 0,
    num_bins: int | None = None,
) -> TarpResult:
    """TARP coverage through sbi's ``run_tarp`` / ``check_tarp``, with seeded reference points.

    Args:
        theta: (N, D) ground truth.
        samples: (N, S, D) posterior samples.
        seed: seeds the reference points (sbi would draw them from torch's global RNG).
        num_bins: credibility bins; default N // 10 as in sbi (at least 2).

    Returns:
        TarpResult.
    """
    from sbi.diagnostics.tarp import check_tarp, run_tarp

    t, s = _check_pair(theta, samples)
    lo, hi = t.min(axis=0), t.max(axis=0)
    refs = np.random.default_rng(seed).uniform(lo, hi, size=t.shape)
    post = PrecomputedSamples(s)
    bins = max(2, t.shape[0] // 10) if num_bins is None else int(num_bins)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ecp, alpha = run_tarp(
            torch.as_tensor(t, dtype=torch.float32),
            post.xs,
            post,
            references=torch.as_tensor(refs, dtype=torch.float32),
            num_posterior_samples=s.shape[1],
            show_progress_bar=False,
            num_bins=bins,
        )
    atc, ks = check_tarp(ecp, alpha)
    return TarpResult(
        ecp=ecp.numpy().astype(np.float64),
        alpha=alpha.numpy().astype(np.float64),
        atc=float(atc),
        ks_pval=float(ks),
    )


def marginal_coverage(
    ranks: NDArray[np.integer],
    num_posterior_samples: int,
    levels: NDArray[np.floating] = DEFAULT_LEVELS,
) -> NDArray[np.float64]:
    """Empirical coverage of central credible intervals, per marginal, from SBC ranks.

    The truth lies in the central ``level`` interval of a marginal iff its normalised rank is in
    [(1 - level)/2, (1 + level)/2]. Calibrated: coverage == level; over-confident: below it.

    Returns:
        (L, D) coverage for each level and parameter.
    """
    r = (np.asarray(ranks, dtype=np.float64) + 0.5) / (num_posterior_samples + 1)
    lv = np.asarray(levels, dtype=np.float64)[:, None, None]
    inside = (r[None] >= (1 - lv) / 2) & (r[None] <= (1 + lv) / 2)
    return inside.mean(axis=1)


def hpd_coverage(
    log_prob_samples: NDArray[np.floating],
    log_prob_true: NDArray[np.floating],
    levels: NDArray[np.floating] = DEFAULT_LEVELS,
    *,
    seed: int = 0,
) -> NDArray[np.float64]:
    """Expected coverage of highest-density regions (Deistler et al. 2022), from log densities.

    The truth lies in the ``level`` HPD region iff fewer than ``1 - level`` of the posterior samples
    have a lower density than it. Equivalent to sbi's ``run_sbc(reduce_fns=posterior.log_prob)``.

    Args:
        log_prob_samples: (N, S) posterior log density of each observation's own samples.
        log_prob_true: (N,) posterior log density of the truth.
        levels: credibility levels.
        seed: breaks ties (flat densities) at random, as rank statistics must.

    Returns:
        (L,) coverage for each level.
    """
    lps = np.asarray(log_prob_samples, dtype=np.float64)
    lpt = np.asarray(log_prob_true, dtype=np.float64)
    if lps.ndim != 2 or lpt.shape != (lps.shape[0],):
        raise ValueError(
            f"log_prob_samples {lps.shape} must be (N, S) and log_prob_true {lpt.shape} (N,)"
        )
    ties = (lps == lpt[:, None]).sum(axis=1)
    u = np.random.default_rng(seed).uniform(size=lpt.shape[0])
    frac_below = ((lps < lpt[:, None]).sum(axis=1) + u * ties) / lps.shape[
        1
    ]  # 1 - (HPD level at which the truth enters)
    lv = np.asarray(levels, dtype=np.float64)
    return (frac_below[None, :] >= 1 - lv[:, None]).mean(axis=1)


def coverage_deviation(
    levels: NDArray[np.floating], coverage: NDArray[np.floating]
) -> dict[str, float]:
    """Summaries of a coverage curve: signed mean (coverage - level), mean and max |deviation|.

    Negative ``signed`` means over-confident (credible regions too small).
    """
    lv = np.asarray(levels, dtype=np.float64)
    c = np.asarray(coverage, dtype=np.float64)
    if c.ndim == 2:
        lv = lv[:, None]
    d = c - lv
    return {
        "signed": float(d.mean()),
        "mean_abs": float(np.abs(d).mean()),
        "max_abs": float(np.abs(d).max()),
    }


@dataclass(frozen=True)
class RecoveryResult:
    """Parameter recovery per parameter (arrays of length D unless noted).

    ``nrmse``: RMSE of the posterior mean over the prior std (1 = no better than guessing the prior
    mean).
    ``std_ratio``: mean posterior std / prior std (1 = learned nothing, small = well constrained).
    ``contraction``: 1 - posterior variance / prior variance (Schad et al. 2021).
    ``z_mean``/``z_std``: of z = (posterior mean - truth) / posterior std; ~0 and ~1 when
    calibrated.
    ``z_robust_std``: 1.4826 x median |z - median z|, the std read from the bulk (a posterior piled
    against a prior bound has a tiny std there, and one such z would dominate ``z_std``).
    ``z_outside_2``: fraction of |z| > 2 (about 0.05 for a calibrated, near-Gaussian posterior).
    ``r2``: squared correlation of posterior mean and truth.
    """

    post_mean: NDArray[np.float64]  # (N, D)
    post_std: NDArray[np.float64]  # (N, D)
    nrmse: NDArray[np.float64]
    std_ratio: NDArray[np.float64]
    contraction: NDArray[np.float64]
    z_mean: NDArray[np.float64]
    z_std: NDArray[np.float64]
    z_robust_std: NDArray[np.float64]
    z_outside_2: NDArray[np.float64]
    r2: NDArray[np.float64]


def recovery(
    theta: NDArray[np.floating], samples: NDArray[np.floating], prior_std: NDArray[np.floating]
) -> RecoveryResult:
    """Posterior mean vs truth, contraction and z-scores.

    Args:
        theta: (N, D) ground truth.
        samples: (N, S, D) posterior samples.
        prior_std: (D,) std of the prior the truths were drawn from (normaliser of NRMSE,
            contraction).

    Returns:
        RecoveryResult.
    """
    t, s = _check_pair(theta, samples)
    ps = np.asarray(prior_std, dtype=np.float64)
    if ps.shape != (t.shape[1],) or not np.all(ps > 0):
        raise ValueError(
            f"prior_std shape {ps.shape} must be ({t.shape[1]},) with positive entries"
        )
    mean = s.mean(axis=1)
    std = s.std(axis=1, ddof=1)
    err = mean - t
    z = err / np.maximum(std, 1e-12)
    r2 = np.array(
        [
            np.corrcoef(mean[:, d], t[:, d])[0, 1] ** 2
            if np.std(mean[:, d]) > 0 and np.std(t[:, d]) > 0
            else 0.0
            for d in range(t.shape[1])
        ]
    )
    return RecoveryResult(
        post_mean=mean,
        post_std=std,
        nrmse=np.sqrt((err**2).mean(axis=0)) / ps,
        std_ratio=std.mean(axis=0) / ps,
        contraction=1.0 - (std**2).mean(axis=0) / ps**2,
        z_mean=z.mean(axis=0),
        z_std=z.std(axis=0),
        z_robust_std=1.4826 * np.median(np.abs(z - np.median(z, axis=0)), axis=0),
        z_outside_2=(np.abs(z) > 2).mean(axis=0),
        r2=r2,
    )


@dataclass(frozen=True)
class PredictiveResult:
    """Posterior-predictive discrepancies for K observations, each with M simulated traces.

    ``trace_rmse`` (K,): mean over the M predictions of the RMS difference to the observed trace
    (same units as the traces); ``spike_count_error`` (K,): mean |predicted - observed| spike count;
    ``spike_count_coverage`` (K,): whether the observed count lies in the 5-95 % predictive range;
    ``feature_z`` (K, F): (observed - predictive mean) / predictive std for each statistic.
    """

    trace_rmse: NDArray[np.float64]
    spike_count_error: NDArray[np.float64]
    spike_count_coverage: NDArray[np.bool_]
    feature_z: NDArray[np.float64]


def predictive_discrepancy(
    obs_trace: NDArray[np.floating],
    pred_trace: NDArray[np.floating],
    obs_features: NDArray[np.floating],
    pred_features: NDArray[np.floating],
    spike_index: int = 0,
) -> PredictiveResult:
    """Compare observed traces / statistics with traces simulated from posterior samples.

    Args:
        obs_trace: (K, T) observed traces.
        pred_trace: (K, M, T) traces simulated from M posterior samples of each observation.
        obs_features: (K, F) statistics of the observations.
        pred_features: (K, M, F) statistics of the predictions.
        spike_index: column of the spike count among the statistics.

    Returns:
        PredictiveResult.
    """
    ot = np.asarray(obs_trace, dtype=np.float64)
    pt = np.asarray(pred_trace, dtype=np.float64)
    of = np.asarray(obs_features, dtype=np.float64)
    pf = np.asarray(pred_features, dtype=np.float64)
    if pt.ndim != 3 or ot.shape != (pt.shape[0], pt.shape[2]):
        raise ValueError(
            f"pred_trace {pt.shape} must be (K, M, T) with obs_trace {ot.shape} (K, T)"
        )
    if pf.ndim != 3 or of.shape != (pf.shape[0], pf.shape[2]) or pf.shape[:2] != pt.shape[:2]:
        raise ValueError(
            f"pred_features {pf.shape} must be (K, M, F) with obs_features {of.shape} (K, F)"
        )
    rmse = np.sqrt(((pt - ot[:, None, :]) ** 2).mean(axis=2)).mean(axis=1)
    sc_obs = of[:, spike_index]
    sc_pred = pf[:, :, spike_index]
    lo, hi = np.quantile(sc_pred, 0.05, axis=1), np.quantile(sc_pred, 0.95, axis=1)
    fz = (of - pf.mean(axis=1)) / np.maximum(pf.std(axis=1), 1e-6)
    return PredictiveResult(
        trace_rmse=rmse,
        spike_count_error=np.abs(sc_pred - sc_obs[:, None]).mean(axis=1),
        spike_count_coverage=(sc_obs >= lo) & (sc_obs <= hi),
        feature_z=fz,
    )


def c2st_dap(
    prior_samples: NDArray[np.floating], dap_samples: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Per-parameter C2ST accuracy between prior draws and data-averaged posterior draws (sbi).

    0.5 means the data-averaged posterior equals the prior, as it must for a calibrated posterior.
    """
    from sbi.diagnostics.sbc import check_prior_vs_dap

    a = torch.as_tensor(np.asarray(prior_samples, dtype=np.float32))
    b = torch.as_tensor(np.asarray(dap_samples, dtype=np.float32))
    if a.shape != b.shape:
        raise ValueError(
            f"prior_samples {tuple(a.shape)} and dap_samples {tuple(b.shape)} "
            "must have the same shape"
        )
    return check_prior_vs_dap(a, b).numpy().astype(np.float64)


def verdict(
    sbc_result: SBCResult, tarp_result: TarpResult, *, tol: float = 0.05, bias_tol: float = 0.1
) -> dict[str, Any]:
    """One-word calibration verdict.

    One of ``calibrated``, ``biased``, ``over-confident`` or ``under-confident``.

    A posterior is flagged when any marginal fails SBC (Bonferroni KS) or TARP's area to curve
    leaves [-tol, tol]. Then: ranks piled on one side (mean normalised rank off 0.5 by more than
    ``bias_tol``) mean ``biased``; otherwise central-interval coverage below the levels (U-shaped
    ranks) means ``over-confident``, above (hump-shaped) ``under-confident``, with TARP's sign as
    the tie-breaker.
    """
    failed = [int(d) for d in np.flatnonzero(~sbc_result.calibrated)]
    rank_bias = sbc_result.ranks.mean(axis=0) / sbc_result.num_posterior_samples - 0.5
    cov = coverage_deviation(
        DEFAULT_LEVELS, marginal_coverage(sbc_result.ranks, sbc_result.num_posterior_samples)
    )["signed"]
    if not failed and abs(tarp_result.atc) <= tol:
        word = "calibrated"
    elif failed and np.max(np.abs(rank_bias[failed])) > bias_tol:
        word = "biased"
    elif cov < -tol or (abs(cov) <= tol and tarp_result.atc < -tol):
        word = "over-confident"
    elif cov > tol or (abs(cov) <= tol and tarp_result.atc > tol):
        word = "under-confident"
    else:
        word = "biased"
    return {
        "verdict": word,
        "sbc_failed": failed,
        "atc": tarp_result.atc,
        "marginal_coverage_signed": cov,
        "rank_bias": [float(b) for b in rank_bias],
    }


__all__ = [
    "DEFAULT_LEVELS",
    "SBC_ALPHA",
    "PrecomputedSamples",
    "SBCResult",
    "TarpResult",
    "RecoveryResult",
    "PredictiveResult",
    "sbc",
    "tarp",
    "marginal_coverage",
    "hpd_coverage",
    "coverage_deviation",
    "recovery",
    "predictive_discrepancy",
    "c2st_dap",
    "verdict",
]
