"""Local calibration (sbi's L-C2ST) and chip generalisation.

These are the parts of `farm evaluate` that look per observation and per chip.

SBC and TARP average over observations, so a posterior can pass them while being wrong for
particular traces. L-C2ST (Linhart et al. 2023, "L-C2ST: Local Diagnostics for Posterior
Approximations in Simulation-Based Inference") trains one classifier on (theta, x) pairs from the
joint vs. from q and tests calibration at chosen observations x_o. The classifier conditions on
the 11 handcrafted statistics of x (for both variants): a valid, cheap function of the trace.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from farm.defaults import ChipModel
from farm.substrates.circuits import format_chip_ids

#: Observations L-C2ST is evaluated at (the first held-out ones; the classifier trains on the rest).
NUM_LC2ST_OBS = 3
#: Classifiers trained under the null; p-values resolve 1 / NUM_NULL_TRIALS.
NUM_NULL_TRIALS = 20
LC2ST_ALPHA = 0.05


def local_calibration(
    theta: NDArray[np.floating],
    features: NDArray[np.floating],
    samples: NDArray[np.floating],
    seed: int = 0,
) -> dict[str, Any]:
    """L-C2ST statistic and p-value at ``NUM_LC2ST_OBS`` held-out observations.

    Args:
        theta: (N, 7) true parameters; features: (N, F) statistics of their traces;
        samples: (N, S, 7) posterior draws per observation.

    Returns:
        ``{"num_train", "num_null_trials", "alpha",
        "observations": [{index, statistic, p_value, rejected}], "num_rejected", "min_p_value"}``.
    """
    from sbi.diagnostics.lc2st import LC2ST

    k = NUM_LC2ST_OBS
    t = torch.as_tensor(np.asarray(theta[k:], dtype=np.float32))
    x = torch.as_tensor(np.asarray(features[k:], dtype=np.float32))
    q = torch.as_tensor(
        np.asarray(samples[k:, 0, :], dtype=np.float32)
    )  # one draw of q(theta | x_i) per x_i
    lc2st = LC2ST(
        prior_samples=t,
        xs=x,
        posterior_samples=q,
        seed=seed,
        z_score=True,
        num_trials_null=NUM_NULL_TRIALS,
    )
    lc2st.train_under_null_hypothesis(verbosity=0)
    lc2st.train_on_observed_data()
    obs = []
    for i in range(k):
        theta_o = torch.as_tensor(np.asarray(samples[i], dtype=np.float32))
        x_o = torch.as_tensor(np.asarray(features[i], dtype=np.float32))
        stat = float(lc2st.get_statistic_on_observed_data(theta_o=theta_o, x_o=x_o))
        p = float(lc2st.p_value(theta_o=theta_o, x_o=x_o))
        obs.append({"index": i, "statistic": stat, "p_value": p, "rejected": bool(p < LC2ST_ALPHA)})
    return {
        "num_train": int(t.shape[0]),
        "num_null_trials": NUM_NULL_TRIALS,
        "alpha": LC2ST_ALPHA,
        "observations": obs,
        "num_rejected": sum(o["rejected"] for o in obs),
        "min_p_value": min(o["p_value"] for o in obs),
    }


def training_chip_ids(manifest: dict[str, Any]) -> list[int] | None:
    """Chips the posterior's training stores drew from, or None when the artifact does not say.

    New artifacts record ``training_chip_ids``; a chip model with explicit ``chip_ids`` says it
    too. Older artifacts record neither: unknown (most likely the default pool).
    """
    if isinstance(manifest.get("training_chip_ids"), list):
        return [int(c) for c in manifest["training_chip_ids"]]
    chip = manifest.get("chip_model")
    if isinstance(chip, dict) and chip.get("chip_ids") is not None:
        return [int(c) for c in chip["chip_ids"]]
    return None


def chip_overlap(manifest: dict[str, Any], store_attrs: dict[str, Any]) -> dict[str, Any]:
    """How the held-out store's chips relate to the training chips: none, partial, full, unknown."""
    chip = store_attrs.get("chip_model")
    test = (
        list(ChipModel.from_dict(chip).pool) if isinstance(chip, dict) else list(ChipModel().pool)
    )
    train = training_chip_ids(manifest)
    if train is None:
        overlap, note = (
            "unknown",
            f"the artifact does not record its training chips; test chips {format_chip_ids(test)}",
        )
    else:
        shared = sorted(set(test) & set(train))
        overlap = "none" if not shared else ("full" if set(test) <= set(train) else "partial")
        note = {
            "none": f"test chips {format_chip_ids(test)} were never seen in training "
            f"(chips {format_chip_ids(train)}): this measures generalisation to new chips",
            "full": f"test chips {format_chip_ids(test)} were all seen in training "
            f"(chips {format_chip_ids(train)})",
            "partial": f"test chips {format_chip_ids(test)} overlap the training chips "
            f"{format_chip_ids(train)} on {format_chip_ids(shared)}",
        }[overlap]
    return {
        "test_chip_ids": format_chip_ids(test),
        "training_chip_ids": format_chip_ids(train) if train is not None else None,
        "overlap": overlap,
        "note": note,
    }


__all__ = [
    "LC2ST_ALPHA",
    "NUM_LC2ST_OBS",
    "NUM_NULL_TRIALS",
    "chip_overlap",
    "local_calibration",
    "training_chip_ids",
]
