"""Diagnostics on a conjugate Gaussian toy, where the exact posterior is known.

theta ~ N(0, 1) in D dimensions, x = theta + N(0, 0.5^2): the posterior is N(m, v) with
v = 1 / (1 + 4) = 0.2 and m = 4 v x. Exact samples must pass SBC/TARP/coverage; scaled or shifted
ones (over-confident, under-confident, biased) must be flagged, through the same code that
evaluates the AdEx posteriors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.diagnostics import calibration as dg

N, S, D = 400, 400, 3
SIGMA_X = 0.5
POST_VAR = 1.0 / (1.0 + 1.0 / SIGMA_X**2)


def toy(
    scale: float = 1.0, shift: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(theta (N,D), samples (N,S,D), posterior mean (N,D)).

    The samples have std scale * exact std, and mean + shift * exact std.
    """
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(N, D))
    x = theta + SIGMA_X * rng.normal(size=(N, D))
    mean = POST_VAR * x / SIGMA_X**2
    sd = np.sqrt(POST_VAR)
    samples = mean[:, None, :] + shift * sd + scale * sd * rng.normal(size=(N, S, D))
    return theta, samples, mean


def test_exact_posterior_is_calibrated() -> None:
    theta, samples, _ = toy()
    sbc = dg.sbc(theta, samples)
    tarp = dg.tarp(theta, samples, seed=1)
    assert sbc.ranks.shape == (N, D) and sbc.ranks.min() >= 0 and sbc.ranks.max() <= S
    assert sbc.calibrated.all(), sbc.ks_pvals
    assert abs(tarp.atc) < 0.05
    assert tarp.ecp[0] == 0.0 and tarp.ecp[-1] == pytest.approx(1.0)
    cov = dg.marginal_coverage(sbc.ranks, S)
    assert cov.shape == (len(dg.DEFAULT_LEVELS), D)
    assert dg.coverage_deviation(dg.DEFAULT_LEVELS, cov)["max_abs"] < 0.08
    assert dg.verdict(sbc, tarp)["verdict"] == "calibrated"


@pytest.mark.parametrize(
    ("scale", "shift", "expected"),
    [(0.4, 0.0, "over-confident"), (2.5, 0.0, "under-confident"), (1.0, 1.0, "biased")],
)
def test_miscalibrated_posteriors_are_flagged(scale: float, shift: float, expected: str) -> None:
    theta, samples, _ = toy(scale=scale, shift=shift)
    sbc = dg.sbc(theta, samples)
    tarp = dg.tarp(theta, samples, seed=1)
    v = dg.verdict(sbc, tarp)
    assert v["verdict"] == expected, v
    assert len(v["sbc_failed"]) == D
    cov = dg.coverage_deviation(dg.DEFAULT_LEVELS, dg.marginal_coverage(sbc.ranks, S))
    if expected == "over-confident":
        assert tarp.atc < -0.05 and cov["signed"] < -0.2
    if expected == "under-confident":
        assert tarp.atc > 0.05 and cov["signed"] > 0.2


def test_ranks_match_direct_count_through_sbi() -> None:
    """sbi's run_sbc via PrecomputedSamples ranks exactly like counting samples below the truth."""
    theta, samples, _ = toy()
    direct = (samples < theta[:, None, :]).sum(axis=1)
    np.testing.assert_array_equal(dg.sbc(theta, samples).ranks, direct)
    post = dg.PrecomputedSamples(samples)
    out = post.sample_batched((5,), x=post.xs[[3, 1]])
    assert out.shape == (5, 2, D)
    torch.testing.assert_close(out[:, 0, :], torch.as_tensor(samples[3, :5], dtype=torch.float32))


def test_hpd_coverage_from_exact_density() -> None:
    theta, samples, mean = toy()

    def log_prob(t: np.ndarray, m: np.ndarray, var: float) -> np.ndarray:
        return -0.5 * (((t - m) ** 2) / var).sum(-1)

    lps = log_prob(samples, mean[:, None, :], POST_VAR)
    lpt = log_prob(theta, mean, POST_VAR)
    good = dg.hpd_coverage(lps, lpt)
    assert dg.coverage_deviation(dg.DEFAULT_LEVELS, good)["max_abs"] < 0.08
    narrow = toy(scale=0.4)[1]
    bad = dg.hpd_coverage(
        log_prob(narrow, mean[:, None, :], 0.16 * POST_VAR), log_prob(theta, mean, 0.16 * POST_VAR)
    )
    assert dg.coverage_deviation(dg.DEFAULT_LEVELS, bad)["signed"] < -0.2


def test_hpd_coverage_breaks_ties_of_flat_densities() -> None:
    """posterior = uniform prior: every density ties; randomised ranks keep it calibrated."""
    cov = dg.hpd_coverage(np.zeros((2000, 50)), np.zeros(2000), seed=3)
    assert dg.coverage_deviation(dg.DEFAULT_LEVELS, cov)["max_abs"] < 0.05


def test_recovery_matches_analytic_values() -> None:
    theta, samples, _ = toy()
    rec = dg.recovery(theta, samples, prior_std=np.ones(D))
    # exact posterior: contraction 1 - v/1 = 0.8, posterior std ratio sqrt(v), NRMSE ~ sqrt(v),
    # z ~ N(0, 1)
    np.testing.assert_allclose(rec.contraction, 1 - POST_VAR, atol=0.03)
    np.testing.assert_allclose(rec.std_ratio, np.sqrt(POST_VAR), atol=0.03)
    np.testing.assert_allclose(rec.nrmse, np.sqrt(POST_VAR), atol=0.05)
    np.testing.assert_allclose(rec.z_std, 1.0, atol=0.12)
    np.testing.assert_allclose(rec.z_robust_std, 1.0, atol=0.12)
    np.testing.assert_allclose(rec.z_outside_2, 0.05, atol=0.03)
    np.testing.assert_allclose(rec.z_mean, 0.0, atol=0.15)
    over = dg.recovery(theta, toy(scale=0.4)[1], prior_std=np.ones(D))
    assert (
        np.all(over.z_std > 2.0)
        and np.all(over.z_outside_2 > 0.3)
        and np.all(over.contraction > rec.contraction)
    )


def test_predictive_discrepancy_known_offset() -> None:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3, 50))
    feats = rng.uniform(1, 5, size=(3, 4))
    same = dg.predictive_discrepancy(
        obs, np.repeat(obs[:, None], 6, axis=1), feats, np.repeat(feats[:, None], 6, axis=1)
    )
    np.testing.assert_allclose(same.trace_rmse, 0.0)
    np.testing.assert_allclose(same.spike_count_error, 0.0)
    assert same.spike_count_coverage.all()
    shifted = dg.predictive_discrepancy(
        obs,
        obs[:, None] + np.array([1.0, 3.0])[None, :, None],
        feats,
        feats[:, None] + np.array([2.0, 4.0])[None, :, None],
    )
    np.testing.assert_allclose(shifted.trace_rmse, 2.0)
    np.testing.assert_allclose(shifted.spike_count_error, 3.0)
    np.testing.assert_allclose(shifted.feature_z, -3.0)


@pytest.mark.parametrize(
    ("theta_shape", "samples_shape", "match"),
    [
        ((10, 3), (10, 5, 2), r"samples shape \(10, 5, 2\)"),
        ((10, 3), (9, 5, 3), "must be"),
        ((10,), (10, 5, 1), r"theta shape \(10,\)"),
        ((10, 3), (10, 1, 3), "S=1"),
    ],
)
def test_bad_shapes_raise_one_line(
    theta_shape: tuple[int, ...], samples_shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as e:
        dg.sbc(np.zeros(theta_shape), np.zeros(samples_shape))
    assert "\n" not in str(e.value)


def test_nan_samples_rejected() -> None:
    theta, samples, _ = toy()
    samples[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dg.tarp(theta, samples)
