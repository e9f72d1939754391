"""Own-circuit predictive check: do posterior draws reproduce the spike count on that circuit?

A lab sets the inferred parameters on the circuit it recorded, so the draws must fit *that*
circuit. Rerun on random circuits (``metrics.predictive_check``), a posterior that averages over
circuits' mismatch looks fine (issue 25). The oracle, the true parameters rerun the same way with
fresh noise, is the noise floor each error is divided by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.simulate import simulate_theta
from inference.evaluation.metrics import HeldOut, store_chip_model
from inference.threads import torch_threads_kept

#: A rerun "reproduces" the observation when its spike count is within this many spikes.
TOLERANCE_SPIKES = 2
#: Salts of the two noise seeds, so own-circuit and random-circuit reruns share no noise.
_OWN_SALT, _RANDOM_SALT = 25, 26


@dataclass(frozen=True)
class SpikeCountAgreement:
    """How closely reruns hit the observed spike counts."""

    error: float  # mean |rerun count - observed count| over all reruns
    within: float  # share of reruns within +-TOLERANCE_SPIKES
    per_obs_error: NDArray[np.float64]  # (N,) mean |error| per observation


def spike_count_agreement(
    observed: NDArray[np.integer], reruns: NDArray[np.integer], tolerance: int = TOLERANCE_SPIKES
) -> SpikeCountAgreement:
    """Spike-count error of reruns against the observations they should reproduce.

    Args:
        observed: (N,) observed spike counts.
        reruns: (N, K) spike counts of K reruns per observation.
        tolerance: spikes a rerun may miss by and still count as within.
    """
    obs = np.asarray(observed, dtype=np.float64)
    runs = np.asarray(reruns, dtype=np.float64)
    if runs.ndim != 2 or runs.shape[0] != obs.shape[0]:
        raise ValueError(f"reruns of shape {runs.shape} do not match {obs.shape[0]} observations")
    err = np.abs(runs - obs[:, None])
    return SpikeCountAgreement(float(err.mean()), float((err <= tolerance).mean()), err.mean(1))


def error_ratio(posterior_error: float, oracle_error: float) -> float:
    """Posterior error in units of the oracle's (1: at the noise floor); inf over a zero floor."""
    if oracle_error > 0:
        return float(posterior_error / oracle_error)
    return 1.0 if posterior_error == 0 else float("inf")


def agreement_metrics(
    observed: NDArray[np.integer],
    posterior_counts: NDArray[np.integer],
    oracle_counts: NDArray[np.integer],
) -> dict[str, float]:
    """Posterior and oracle reruns, (N, K) each, scored against the same observations."""
    return _scores(
        spike_count_agreement(observed, posterior_counts),
        spike_count_agreement(observed, oracle_counts),
    )


def _scores(post: SpikeCountAgreement, oracle: SpikeCountAgreement) -> dict[str, float]:
    return {
        "posterior_error": post.error,
        "oracle_error": oracle.error,
        "error_ratio": error_ratio(post.error, oracle.error),
        "posterior_within": post.within,  # share within +-TOLERANCE_SPIKES
        "oracle_within": oracle.within,
    }


def noise_seed(seed: int, salt: int, avoid: Any = None) -> int:
    """A noise seed derived from the evaluation ``seed``, never the store's own (``avoid``)."""
    state = np.random.SeedSequence([int(seed), salt]).generate_state(2, np.uint32)
    derived = (int(state[0]) << 30) ^ int(state[1])  # < 2**62: farm seeds fit an int64
    return derived + 1 if avoid is not None and derived == int(avoid) else derived


def own_circuit_check(
    posterior: Any,
    held: HeldOut,
    samples: NDArray[np.float32],
    num_obs: int,
    num_draws: int,
    seed: int,
) -> dict[str, Any]:
    """Rerun draws and truths on each observation's own circuit and on random ones.

    Args:
        posterior: gives the protocol (and the chip model when the store records none).
        held: the held-out rows; the first ``num_obs`` are checked.
        samples: (N, S, 7) posterior draws (drawn with fingerprints for circuit-aware
            posteriors); the first ``num_draws`` of each are rerun.
        seed: the evaluation seed; both noise seeds derive from it.

    Returns:
        The ``own_circuit`` section of ``metrics.json``: ``own`` and ``random`` metrics
        (``agreement_metrics``), sizes, seeds and per-observation errors; ``{"num_obs": 0, ...}``
        with a ``note`` when the check does not run.
    """
    k, m = min(num_obs, held.theta.shape[0]), min(num_draws, samples.shape[1])
    skip = _skip_reason(held, k)
    if skip:
        return {"num_obs": 0, "note": skip}
    store_seed = held.attrs.get("seed")
    seeds = {
        s: noise_seed(seed, salt, store_seed)
        for s, salt in (("own", _OWN_SALT), ("random", _RANDOM_SALT))
    }
    theta = np.concatenate(
        [samples[:k, :m].reshape(-1, samples.shape[-1]), np.repeat(held.theta[:k], m, axis=0)]
    )
    assert held.chip is not None and held.neuron is not None  # _skip_reason checked
    ids = {"chip": np.tile(np.repeat(held.chip[:k], m), 2)}
    ids["neuron"] = np.tile(np.repeat(held.neuron[:k], m), 2)
    common = {"protocol": posterior.protocol, "chip_model": store_chip_model(held, posterior)}
    with torch_threads_kept():
        own = simulate_theta(theta, seed=seeds["own"], **common, **ids).spike_count
        rand = simulate_theta(theta, seed=seeds["random"], **common).spike_count
    observed = held.spike_count[:k]
    out: dict[str, Any] = {
        "num_obs": int(k),
        "num_draws": int(m),
        "tolerance_spikes": TOLERANCE_SPIKES,
        "noise_seed": seeds["own"],
        "random_noise_seed": seeds["random"],
        "store_index": held.index[:k].tolist(),
    }
    per_obs: dict[str, list[float]] = {"observed": observed.tolist()}
    for name, counts in (("own", own), ("random", rand)):
        post, oracle = (spike_count_agreement(observed, c) for c in counts.reshape(2, k, m))
        out[name] = _scores(post, oracle)
        per_obs[f"{name}_posterior_error"] = post.per_obs_error.tolist()
        per_obs[f"{name}_oracle_error"] = oracle.per_obs_error.tolist()
    out["per_obs"] = per_obs
    return out


def _skip_reason(held: HeldOut, k: int) -> str:
    """Why the check cannot run on these rows, or '' when it can."""
    if k == 0:
        return "off (num_own_circuit=0)"
    if held.chip is None or held.neuron is None:
        return f"store={held.path!r} records no chip and neuron per row"
    substrate = held.attrs.get("substrate", "emulator")
    if substrate != "emulator":
        return f"store was recorded on substrate {substrate!r}; reruns use the emulator's circuits"
    return ""


__all__ = [
    "TOLERANCE_SPIKES",
    "SpikeCountAgreement",
    "agreement_metrics",
    "error_ratio",
    "noise_seed",
    "own_circuit_check",
    "spike_count_agreement",
]
