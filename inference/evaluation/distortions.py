"""Observations the training never saw: distorted traces and other chip models, to evaluate the misspecification check.

Why a module: the detector's tests, ``bench/misspecification.py`` and reports must distort traces
the same way, so the detection rates in docs/evaluation.md are the ones the tests guard.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from farm.defaults import ChipModel

#: Distortions of a recorded trace, each a plausible lab failure.
DISTORTIONS = ("flat", "clipped", "shifted", "scaled")
#: Chip models the training never saw: 3x temporal and readout noise, 1.5x membrane capacitance.
OTHER_CHIPS = ("noise_3x", "c_mem_1.5x")


def distort(traces: NDArray[np.integer], kind: str, adc_max_code: int = 1023) -> NDArray[np.int16]:
    """A distorted copy of (n, T) ADC codes.

    Args:
        kind: ``flat`` (a dead neuron / disconnected readout: each trace's median, constant),
            ``clipped`` (the amplifier saturates half-way from the resting level to the spike peak), ``shifted``
            (baseline offset of +60 codes, ~53 mV), ``scaled`` (gain 0.7 about the resting level).

    Raises:
        ValueError: an unknown kind.
    """
    t = np.asarray(traces).astype(np.float64)
    if kind == "flat":
        out = np.repeat(np.median(t, axis=1, keepdims=True), t.shape[1], axis=1)
    elif kind == "clipped":
        rest, hi = np.median(t[:, :100], axis=1, keepdims=True), t.max(axis=1, keepdims=True)
        out = np.minimum(t, rest + 0.5 * (hi - rest))
    elif kind == "shifted":
        out = t + 60.0
    elif kind == "scaled":
        rest = np.median(t[:, :100], axis=1, keepdims=True)
        out = rest + 0.7 * (t - rest)
    else:
        raise ValueError(f"distortion={kind!r} must be one of {', '.join(DISTORTIONS)}")
    return np.clip(np.rint(out), 0, adc_max_code).astype(np.int16)


def other_chip(kind: str, base: ChipModel | None = None) -> ChipModel:
    """A chip model unlike the training one (``noise_3x`` or ``c_mem_1.5x``)."""
    base = base or ChipModel()
    if kind == "noise_3x":
        return replace(
            base,
            noise_mv_per_sqrt_us=3 * base.noise_mv_per_sqrt_us,
            adc_noise_lsb=3 * base.adc_noise_lsb,
        )
    if kind == "c_mem_1.5x":
        return replace(base, c_mem_pf=1.5 * base.c_mem_pf)
    raise ValueError(f"chip={kind!r} must be one of {', '.join(OTHER_CHIPS)}")


__all__ = ["DISTORTIONS", "OTHER_CHIPS", "distort", "other_chip"]
