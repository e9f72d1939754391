"""Observations the training never saw, to evaluate the misspecification check.

They are distorted traces and traces from other chip models.

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
            ``clipped`` (the amplifier saturates half-way from the resting level to the spike
            peak), ``shifted`` (baseline offset of +60 codes, ~53 mV), ``scaled`` (gain 0.7 about
            the resting level).

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


# ------------------------------------------------------------ trace-space distortions
#: Lab failures the handcrafted summary can be blind to; each is drawn at random per trace.
TRACE_DISTORTIONS = (
    "interference",
    "drift",
    "adc_gain_offset",
    "stimulus_time",
    "clipping",
    "dropped_repeated",
)
#: A trace from another neuron model: a leaky integrate-and-fire cell (no exponential upstroke,
#: a 10 µs refractory clamp), simulated at the same parameters (``other_model_chip``).
OTHER_MODEL = "lif"
#: Slowest interference drawn: five periods in a 1 ms trace; anything slower is a drift.
INTERFERENCE_MIN_HZ = 5e3


def other_model_chip(base: ChipModel | None = None) -> ChipModel:
    """The chip model of ``OTHER_MODEL``: AdEx made leaky integrate-and-fire (delta_t 0.05 mV)."""
    base = base or ChipModel()
    return replace(base, delta_t_mv_per_lsb=0.0, delta_t_offset_mv=0.05, t_ref_us=10.0)


def distort_randomly(
    traces: NDArray[np.integer],
    kind: str,
    seed: int = 0,
    adc_max_code: int = 1023,
    sample_rate_hz: float = 1e6,
) -> NDArray[np.int16]:
    """A copy of (n, T) ADC codes with one random instance of ``kind`` per trace.

    Args:
        kind: ``interference`` (a sinusoid of 6-12 codes at a log-uniform frequency between
            ``INTERFERENCE_MIN_HZ`` and Nyquist, random phase), ``drift`` (a linear baseline ramp
            of 15-50 codes either way over the trace), ``adc_gain_offset`` (gain 0.85-0.93 or
            1.07-1.15 about code 0 plus an offset of 10-30 codes either way), ``stimulus_time``
            (the response 15-60 samples early or late; the edge repeats the first or last
            code), ``clipping`` (flat top at 50-80 % of the way from rest to the spike peak),
            ``dropped_repeated`` (2-5 % of the samples dropped, as many others repeated).
        seed: the draws of every trace (same seed, same distortion).

    Raises:
        ValueError: an unknown kind.
    """
    t = np.asarray(traces).astype(np.float64)
    n, length = t.shape
    rng = np.random.default_rng(seed)
    sign = rng.choice([-1.0, 1.0], size=(n, 1))
    if kind == "interference":
        nyquist = sample_rate_hz / 2
        f = np.exp(rng.uniform(np.log(INTERFERENCE_MIN_HZ), np.log(nyquist), size=(n, 1)))
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
        amp = rng.uniform(6.0, 12.0, size=(n, 1))
        k = np.arange(length)[None, :]
        out = t + amp * np.cos(2 * np.pi * f / sample_rate_hz * k + phase)
    elif kind == "drift":
        ramp = np.linspace(0.0, 1.0, length)[None, :]
        out = t + sign * rng.uniform(15.0, 50.0, size=(n, 1)) * ramp
    elif kind == "adc_gain_offset":
        gain = 1.0 + sign * rng.uniform(0.07, 0.15, size=(n, 1))
        offset = rng.choice([-1.0, 1.0], size=(n, 1)) * rng.uniform(10.0, 30.0, size=(n, 1))
        out = gain * t + offset
    elif kind == "stimulus_time":
        out = np.empty_like(t)
        shifts = (sign[:, 0] * rng.integers(15, 61, size=n)).astype(int)
        for i, s in enumerate(shifts):
            out[i] = np.roll(t[i], s)
            if s > 0:
                out[i, :s] = t[i, 0]
            else:
                out[i, s:] = t[i, -1]
    elif kind == "clipping":
        rest, hi = np.median(t[:, :100], axis=1, keepdims=True), t.max(axis=1, keepdims=True)
        out = np.minimum(t, rest + rng.uniform(0.5, 0.8, size=(n, 1)) * (hi - rest))
    elif kind == "dropped_repeated":
        out = np.empty_like(t)
        for i in range(n):
            m = int(rng.integers(length // 50, length // 20 + 1))
            keep = np.sort(rng.choice(length, size=length - m, replace=False))
            again = np.sort(rng.choice(length - m, size=m, replace=False))
            out[i] = np.insert(t[i, keep], again, t[i, keep][again])
    else:
        raise ValueError(f"distortion={kind!r} must be one of {', '.join(TRACE_DISTORTIONS)}")
    return np.clip(np.rint(out), 0, adc_max_code).astype(np.int16)


__all__ += [
    "INTERFERENCE_MIN_HZ",
    "OTHER_MODEL",
    "TRACE_DISTORTIONS",
    "distort_randomly",
    "other_model_chip",
]
