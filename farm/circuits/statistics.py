"""A fingerprint as a vector: statistics of each reference recording that the mismatch moves.

Why statistics and not the raw (reference, time) codes: 2,400 codes per circuit would need their
own summary network, while each reference was chosen to expose a few mismatch terms through
quantities the handcrafted trace statistics already measure (resting level, step height, spike
count and timing, after-spike depth). Beside them, the mean of a few time bins keeps the shape
of the rise and fall (C / g_leak) and of the adaptation sag, the lowest code during the step the
reset level, and the highest codes the threshold. Pure numpy on int16 codes; the same function
runs at training and inference.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from farm.circuits.references import ReferenceSet
from farm.defaults import ChipModel
from farm.errors import FarmInputError
from farm.features import feature_names, summarize

#: Names the statistics' version in messages; statistic_names() is what a posterior checks.
FINGERPRINT_STATISTICS_VERSION = "fingerprint statistics v1"
#: Time bins per reference whose mean code is kept (50 µs each for the default 400 µs recordings).
NUM_BINS = 8
#: The highest codes of a step averaged into one statistic: the spike threshold (v_threshold)
#: and the exponential upswing's height, less noisy than the single maximum.
TOP = 10


def statistic_names(references: ReferenceSet) -> tuple[str, ...]:
    """``<reference>:<statistic>`` for every reference, in the order of the returned columns."""
    names: list[str] = []
    for k, ref in enumerate(references.references):
        per = [
            *feature_names(references.reference_protocol(k)),
            *(f"bin{b}_mean_code" for b in range(NUM_BINS)),
            "stim_min_code",
            "stim_max_code",
            f"stim_top{TOP}_mean_code",
        ]
        names += [f"{ref.name}:{s}" for s in per]
    return tuple(names)


def fingerprint_statistics(
    codes: NDArray[np.integer], references: ReferenceSet, chip_model: ChipModel | None = None
) -> NDArray[np.float32]:
    """(n, references, time) or (references, time) codes -> (n, S) or (S,) float32 statistics.

    Raises:
        FarmInputError: a shape other than the reference set's (references, samples).
    """
    model = chip_model or ChipModel()
    c = np.asarray(codes)
    single = c.ndim == 2
    if single:
        c = c[None]
    want = (len(references.references), references.samples_per_reference)
    if c.ndim != 3 or c.shape[1:] != want:
        raise FarmInputError(
            f"fingerprint shape {np.shape(codes)} must be {want} (reference, time) or "
            f"(n, {want[0]}, {want[1]}): the circuits store's references "
            f"{', '.join(references.names)}"
        )
    c16 = np.ascontiguousarray(np.rint(c), dtype=np.int16) if c.dtype != np.int16 else c
    blocks = []
    for k, ref in enumerate(references.references):
        rec = np.ascontiguousarray(c16[:, k, :])
        feats = summarize(rec, references.reference_protocol(k), model)
        t = rec.shape[1]
        edges = np.linspace(0, t, NUM_BINS + 1).astype(int)
        bins = np.stack([rec[:, a:b].mean(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
        period = references.sample_period_us
        on, off = int(ref.sweep.t_on_us / period), int(ref.sweep.t_off_us / period)
        stim = rec[:, on:off]
        top = np.sort(stim, axis=1)[:, -TOP:].mean(axis=1, keepdims=True)
        blocks += [
            feats,
            bins,
            stim.min(axis=1, keepdims=True),
            stim.max(axis=1, keepdims=True),
            top,
        ]
    out = np.concatenate([np.asarray(b, dtype=np.float32) for b in blocks], axis=1)
    return out[0] if single else out


__all__ = [
    "FINGERPRINT_STATISTICS_VERSION",
    "NUM_BINS",
    "fingerprint_statistics",
    "statistic_names",
]
