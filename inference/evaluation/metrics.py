"""The numbers of an evaluation report: held-out data, calibration, recovery, predictive checks.

Like sbi's ``run_sbc`` / ``check_sbc``, computing the numbers is kept apart from drawing them
(``inference.evaluation.figures``) and from the report file (``inference.evaluation.report``).
Every function is deterministic given its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.defaults import ChipModel
from farm.features import feature_names, spike_count_column
from farm.simulate import simulate_theta
from inference.data.quality import quality_flags
from inference.diagnostics import calibration as dg
from inference.threads import torch_threads_kept

_BATCH = 100  # observations per sample_batched call: bounds memory at 100 x num_samples x 7


@dataclass(frozen=True)
class HeldOut:
    """The observations an evaluation runs on, read from a store."""

    theta: NDArray[np.float32]  # (N, 7)
    trace: NDArray[np.int16]  # (N, T)
    features: NDArray[np.float32]  # (N, F)
    spike_count: NDArray[np.int32]  # (N,)
    index: NDArray[np.int64]  # sample index in the store
    attrs: dict[str, Any]
    path: str
    num_excluded: int = 0  # rows skipped by the training quality filter (NaN, saturated, flat)
    chip: NDArray[np.int16] | None = None  # (N,) the circuit each row ran on; None: not recorded
    neuron: NDArray[np.int16] | None = None  # (N,)
    #: (N, references, time) each row's circuit fingerprint, for circuit-aware posteriors
    fingerprints: NDArray[np.int16] | None = None


def load_held_out(store: str | Path, num_obs: int, seed: int = 0) -> HeldOut:
    """Read ``num_obs`` completed samples (a seeded random subset, sorted) from a store.

    Rows the trainer excludes (``inference.data.datasets.quality_flags``: NaN, saturated, flat
    traces) are skipped here too, so the held-out set follows the distribution the posterior was
    fit to.

    Raises:
        ValueError: the store is missing, unreadable or has fewer than 10 completed samples.
    """
    from farm.store.sim_store import StoreMismatch, open_dataset

    try:
        ds = open_dataset(str(store))
    except (StoreMismatch, FileNotFoundError, KeyError) as e:
        raise ValueError(
            f"store={str(store)!r} is not a readable store from `farm simulate`: {e}"
        ) from None
    n = int(ds.sizes["sample"])
    if n < 10:
        raise ValueError(
            f"store={str(store)!r} has {n} completed samples; evaluation needs at least 10"
        )
    order = np.random.default_rng(seed).permutation(n)
    chip = (
        ChipModel.from_dict(ds.attrs["chip_model"])
        if isinstance(ds.attrs.get("chip_model"), dict)
        else ChipModel()
    )
    keep: list[NDArray[np.int64]] = []
    excluded = 0
    for start in range(
        0, n, 4 * max(num_obs, 256)
    ):  # read in slices until num_obs usable rows are found
        cand = order[start : start + 4 * max(num_obs, 256)]
        sub = ds.isel(sample=np.sort(cand))
        flags = quality_flags(
            np.asarray(sub["trace"].values),
            np.asarray(sub["theta"].values),
            np.asarray(sub["features"].values),
            chip.adc_max_code,
        )
        bad = np.logical_or.reduce(list(flags.values()))
        excluded += int(bad.sum())
        keep.append(
            cand[~np.isin(cand, np.sort(cand)[bad])]
        )  # random order kept: the first num_obs are a random subset
        if sum(k.size for k in keep) >= num_obs:
            break
    take = np.sort(np.concatenate(keep)[:num_obs]) if keep else np.empty(0, dtype=np.int64)
    if take.size < 10:
        raise ValueError(
            f"store={str(store)!r} has {take.size} usable samples "
            f"({excluded} excluded as NaN/saturated/flat); evaluation needs at least 10"
        )
    sub = ds.isel(sample=take)
    index = (
        np.asarray(sub["sample"].values, dtype=np.int64)
        if "sample" in sub.coords
        else take.astype(np.int64)
    )
    return HeldOut(
        theta=np.asarray(sub["theta"].values, dtype=np.float32),
        trace=np.asarray(sub["trace"].values, dtype=np.int16),
        features=np.asarray(sub["features"].values, dtype=np.float32),
        spike_count=np.asarray(sub["spike_count"].values, dtype=np.int32),
        index=index,
        attrs=dict(ds.attrs),
        path=str(store),
        num_excluded=excluded,
        chip=_ids(sub, "chip"),
        neuron=_ids(sub, "neuron"),
    )


def _ids(ds: Any, name: str) -> NDArray[np.int16] | None:
    """Per-row circuit ids, or None for a store that does not record them."""
    return np.asarray(ds[name].values, dtype=np.int16) if name in ds.variables else None


def codes_to_mv(codes: NDArray[np.integer], chip: ChipModel) -> NDArray[np.float64]:
    return (
        chip.adc_v_min_mv
        + np.asarray(codes, dtype=np.float64)
        * (chip.adc_v_max_mv - chip.adc_v_min_mv)
        / chip.adc_max_code
    )


def named(names: tuple[str, ...], values: NDArray[np.floating]) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, np.asarray(values).ravel())}


def sample_all(
    posterior: Any,
    trace: NDArray[np.int16],
    num_samples: int,
    seed: int,
    log: Callable[[str], None],
    fingerprints: NDArray[np.int16] | None = None,
) -> NDArray[np.float32]:
    """(N, num_samples, 7) draws; ``fingerprints`` (N, R, T) go with the traces when given."""
    out = np.empty((trace.shape[0], num_samples, len(posterior.parameter_names)), dtype=np.float32)
    for b, start in enumerate(range(0, trace.shape[0], _BATCH)):
        stop = min(start + _BATCH, trace.shape[0])
        extra = {} if fingerprints is None else {"fingerprints": fingerprints[start:stop]}
        out[start:stop] = posterior.sample_batched(
            num_samples, traces=trace[start:stop], seed=seed + b, **extra
        )
        log(f"sampled {stop}/{trace.shape[0]} observations")
    return out


def hpd_log_probs(
    posterior: Any,
    trace: NDArray[np.int16],
    theta: NDArray[np.float32],
    samples: NDArray[np.float32],
    fingerprints: NDArray[np.int16] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """log q of each sample and of the truth; ``fingerprints`` (N, R, T) when given."""
    lps = np.empty(samples.shape[:2], dtype=np.float64)
    lpt = np.empty(theta.shape[0], dtype=np.float64)
    for i in range(theta.shape[0]):
        extra = {} if fingerprints is None else {"fingerprint": fingerprints[i]}
        lp = posterior.log_prob(
            np.concatenate([theta[i : i + 1], samples[i]]), trace=trace[i], **extra
        )
        lpt[i], lps[i] = lp[0], lp[1:]
    return lps, lpt


def prior_fingerprint(prior_attr: Any) -> str | None:
    if not isinstance(prior_attr, dict):
        return None
    if prior_attr.get("type") == "restricted":
        return prior_attr.get("fingerprint")
    from farm.defaults import PriorBox
    from farm.prior import BoxPrior

    try:
        return BoxPrior(PriorBox.from_dict(prior_attr)).fingerprint
    except (KeyError, ValueError, TypeError):
        return None


def ppc_choice(spike_count: NDArray[np.integer], k: int) -> NDArray[np.int64]:
    """k observations spread over the spike counts seen (spiking ones first), deterministic."""
    if k == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(spike_count, kind="stable")
    spiking = order[spike_count[order] > 0]
    pool = spiking if spiking.size >= k else order
    pick = pool[
        np.unique(np.linspace(0, pool.size - 1, min(k, pool.size)).round().astype(np.int64))
    ]
    # interleave so that the first few (the plotted ones) already span low to high counts
    if pick.size > 2:
        step = max(1, pick.size // 4)
        first = pick[::step][:4]
        pick = np.concatenate([first, np.setdiff1d(pick, first, assume_unique=True)])
    return pick.astype(np.int64)


@dataclass(frozen=True)
class Calibration:
    """SBC, TARP, marginal and (optionally) HPD coverage, C2ST, and the verdict drawn from them."""

    sbc: dg.SBCResult
    tarp: dg.TarpResult
    levels: NDArray[np.float64]
    marginal: NDArray[np.float64]  # (levels, 7)
    hpd: NDArray[np.float64] | None
    prior_std: NDArray[np.float64]  # (7,)
    c2st: NDArray[np.float64] | None
    verdict: dict[str, Any]


def calibration(
    posterior: Any,
    held: HeldOut,
    samples: NDArray[np.float32],
    num_samples: int,
    *,
    hpd: bool,
    num_hpd: int,
    c2st: bool,
    seed: int,
) -> Calibration:
    """Calibration of ``samples`` (N, num_samples, 7) against the held-out truths."""
    n = held.theta.shape[0]
    sbc_res = dg.sbc(held.theta, samples)
    tarp_res = dg.tarp(held.theta, samples, seed=seed)
    levels = dg.DEFAULT_LEVELS
    marg = dg.marginal_coverage(sbc_res.ranks, num_samples, levels)
    hpd_cov = None
    if hpd:
        k = min(num_hpd, n)
        fps = None if held.fingerprints is None else held.fingerprints[:k]
        lps, lpt = hpd_log_probs(posterior, held.trace[:k], held.theta[:k], samples[:k], fps)
        hpd_cov = dg.hpd_coverage(lps, lpt, levels, seed=seed)
    prior_draws = posterior.prior.sample(max(20_000, n), seed=seed + 7).astype(np.float64)
    prior_std = prior_draws.std(axis=0)
    c2st_res = dg.c2st_dap(prior_draws[:n], samples[:, 0, :]) if c2st else None
    return Calibration(
        sbc_res, tarp_res, levels, marg, hpd_cov, prior_std, c2st_res, dg.verdict(sbc_res, tarp_res)
    )


def store_chip_model(held: HeldOut, posterior: Any) -> ChipModel:
    """The chips the observations came from (a leave-chips-out store records its own).

    Predictive simulations run on them, not on the training chips.
    """
    recorded = held.attrs.get("chip_model")
    return ChipModel.from_dict(recorded) if isinstance(recorded, dict) else posterior.chip_model


@dataclass(frozen=True)
class PredictiveCheck:
    """Posterior- and prior-predictive simulations of a few observations, and discrepancies."""

    index: NDArray[np.int64]  # rows of the held-out set
    num_samples: int
    obs_mv: NDArray[np.float64]  # (k, T)
    pred_mv: NDArray[np.float64]  # (k, m, T)
    obs_features: NDArray[np.float32]  # (k, F)
    pred_features: NDArray[np.float32]  # (k, m, F)
    posterior: dg.PredictiveResult
    prior: dg.PredictiveResult
    metrics: dict[str, Any]


def predictive_check(
    posterior: Any,
    held: HeldOut,
    samples: NDArray[np.float32],
    num_ppc: int,
    num_ppc_samples: int,
    seed: int,
) -> PredictiveCheck | None:
    """Simulate ``num_ppc_samples`` posterior and prior draws for ``num_ppc`` observations.

    The draws run through the farm simulator.
    """
    ppc_idx = ppc_choice(held.spike_count, num_ppc)
    if not ppc_idx.size:
        return None
    chip = store_chip_model(held, posterior)
    protocol = posterior.protocol
    m = num_ppc_samples
    theta_pred = samples[ppc_idx, :m, :].reshape(-1, samples.shape[-1])
    theta_prior = posterior.prior.sample(ppc_idx.size * m, seed=seed + 11)
    with torch_threads_kept():
        pred = simulate_theta(theta_pred, seed=seed + 1_000_003, protocol=protocol, chip_model=chip)
        prior_pred = simulate_theta(
            theta_prior, seed=seed + 2_000_003, protocol=protocol, chip_model=chip
        )
    k = ppc_idx.size
    obs_mv = codes_to_mv(held.trace[ppc_idx], chip)
    pred_mv = codes_to_mv(pred.trace, chip).reshape(k, m, -1)
    prior_mv = codes_to_mv(prior_pred.trace, chip).reshape(k, m, -1)
    obs_feat = held.features[ppc_idx]
    sc = spike_count_column(protocol)
    pr = dg.predictive_discrepancy(
        obs_mv, pred_mv, obs_feat, pred.features.reshape(k, m, -1), spike_index=sc
    )
    base = dg.predictive_discrepancy(
        obs_mv, prior_mv, obs_feat, prior_pred.features.reshape(k, m, -1), spike_index=sc
    )
    metrics = {
        "num_obs": int(k),
        "num_samples": int(m),
        "store_index": held.index[ppc_idx].tolist(),
        "chip_ids": [int(c) for c in chip.pool],
        "trace_rmse_mv": float(pr.trace_rmse.mean()),
        "prior_trace_rmse_mv": float(base.trace_rmse.mean()),
        "trace_rmse_ratio": float(pr.trace_rmse.mean() / base.trace_rmse.mean()),
        "spike_count_error": float(pr.spike_count_error.mean()),
        "prior_spike_count_error": float(base.spike_count_error.mean()),
        "spike_count_coverage_90": float(pr.spike_count_coverage.mean()),
        "feature_abs_z_median": named(
            feature_names(protocol), np.median(np.abs(pr.feature_z), axis=0)
        ),
        "per_obs_trace_rmse_mv": pr.trace_rmse.tolist(),
    }
    return PredictiveCheck(
        ppc_idx, m, obs_mv, pred_mv, obs_feat, pred.features.reshape(k, m, -1), pr, base, metrics
    )


__all__ = [
    "Calibration",
    "HeldOut",
    "PredictiveCheck",
    "calibration",
    "load_held_out",
    "predictive_check",
    "prior_fingerprint",
    "sample_all",
    "store_chip_model",
]
