"""Which simulated samples are unusable: non-finite, saturated on an ADC rail, or flat.

Kept apart from the data pipeline so the misspecification check of a served posterior can read
the same thresholds without loading Zarr.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: A trace with at least this fraction of its samples on an ADC rail is "saturated".
SATURATED_FRACTION = 0.05
#: A trace whose peak-to-peak range is at most this many codes is "flat" (readout noise alone is
#: ~3 codes rms).
FLAT_PTP_CODES = 2


def quality_flags(
    trace: NDArray[np.integer],
    theta: NDArray[np.floating],
    features: NDArray[np.floating],
    adc_max_code: int,
) -> dict[str, NDArray[np.bool_]]:
    """Per-row flags of unusable samples; a row may carry several.

    Args:
        trace: (n, T) ADC codes; codes outside [0, adc_max_code] (e.g. the store's fill -1) count
            as ``nan``.
        theta: (n, 7); features: (n, F).
        adc_max_code: top ADC code (1023 for 10 bit).

    Returns:
        ``{"nan": ..., "saturated": ..., "flat": ...}`` of (n,) bool.
    """
    t = np.asarray(trace)
    nan = (
        ~np.all(np.isfinite(theta), axis=1)
        | ~np.all(np.isfinite(features), axis=1)
        | np.any((t < 0) | (t > adc_max_code), axis=1)
    )
    rail = np.mean((t <= 0) | (t >= adc_max_code), axis=1) >= SATURATED_FRACTION
    flat = (t.max(axis=1).astype(np.int32) - t.min(axis=1).astype(np.int32)) <= FLAT_PTP_CODES
    return {"nan": nan, "saturated": rail & ~nan, "flat": flat & ~nan}


__all__ = ["FLAT_PTP_CODES", "SATURATED_FRACTION", "quality_flags"]
