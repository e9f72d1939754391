"""Small untrained posteriors for tests whose contract holds for any flow (no training needed)."""

from __future__ import annotations

import numpy as np
import torch

from farm.defaults import PARAMETER_NAMES, ChipModel, PriorBox, Protocol
from farm.features import FEATURE_NAMES
from farm.prior import AnyPrior, RestrictedPrior
from inference.nets.nsf import FlowConfig, NPEModel
from inference.posteriors.amortized import AmortizedPosterior


def half_box(threshold: float = 0.0) -> RestrictedPrior:
    """A restricted prior accepting theta with leak_i_bias < ``centre - threshold * half-width``."""
    box = PriorBox()
    low, high = np.asarray(box.low, dtype=np.float64), np.asarray(box.high, dtype=np.float64)
    w = np.zeros((7, 1))
    w[0, 0] = -1.0
    return RestrictedPrior(
        box,
        [w],
        [np.array([-threshold])],
        (low + high) / 2,
        (high - low) / 2,
        threshold_logit=0.0,
        acceptance_rate=0.5,
    )


def untrained_posterior(
    config: FlowConfig,
    prior: AnyPrior,
    *,
    feature_std: float = 1.0,
    trace_mean: float = 0.0,
    trace_std: float = 1.0,
    seed: int = 0,
) -> AmortizedPosterior:
    """A random flow of ``config`` over ``prior``, standardisation as given (feature means 0)."""
    torch.manual_seed(seed)
    box = PriorBox()
    stats = {
        "low": list(box.low),
        "high": list(box.high),
        "feature_mean": [0.0] * len(FEATURE_NAMES),
        "feature_std": [feature_std] * len(FEATURE_NAMES),
        "theta_mean": [0.0] * 7,
        "theta_std": [1.0] * 7,
        "trace_mean": trace_mean,
        "trace_std": trace_std,
    }
    manifest = {
        "architecture": config.to_dict(),
        "parameter_names": list(PARAMETER_NAMES),
        "feature_names": list(FEATURE_NAMES),
        "protocol": Protocol().to_dict(),
        "chip_model": ChipModel().to_dict(),
        "trace_length": Protocol().num_samples,
        "fingerprint": "test",
    }
    return AmortizedPosterior(NPEModel(config, stats), manifest, prior)
