"""Held-out rows of training stores: the rows a training run never fitted on, for calibration.

A misspecification detector, a coverage check or a threshold calibrated on these rows sees data
as new as an observation. The split is the one training used (``inference.data.splits.split_of``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from inference.data.datasets import StoreSet, prefetch_chunks
from inference.data.quality import quality_flags
from inference.data.splits import SPLITS, split_of


def split_rows(
    stores: Sequence[str] | StoreSet,
    split: str = "test",
    fields: Sequence[str] = ("theta", "features", "trace"),
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    limit: int | None = None,
) -> dict[str, NDArray[Any]]:
    """The good rows of one split of the stores, in store and chunk order (held-out calibration).

    The training never fits on ``test`` rows, so a detector or check calibrated on them sees data
    as new as an observation. Pass the fractions recorded in the artifact
    (``manifest["metrics"]["splits"]``) to get the rows that training held out.

    Args:
        stores: store paths/URLs or a :class:`StoreSet`.
        split: ``train``, ``val`` or ``test``; fields: arrays to read (``FIELDS``).
        val_fraction, test_fraction: the split's fractions; limit: at most this many rows.

    Example:
        ``sp = manifest["metrics"]["splits"]``, then
        ``split_rows(["runs/train.zarr"], "test", ("features",),
        val_fraction=sp["val_fraction"], test_fraction=sp["test_fraction"])``

    Returns:
        ``{field: (n, ...) array}`` plus ``index`` (sample index) and ``store`` (position in
        ``stores``).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
    s = stores if isinstance(stores, StoreSet) else StoreSet(list(stores))
    want = tuple(dict.fromkeys([*fields, "theta", "features", "trace"]))
    out: dict[str, list[NDArray[Any]]] = {}
    count = 0
    for ref, rows in prefetch_chunks(s, s.chunks, want):
        flags = quality_flags(
            rows["trace"], rows["theta"], rows["features"], s.chip_model.adc_max_code
        )
        keep = ~(flags["nan"] | flags["saturated"] | flags["flat"]) & (
            split_of(rows["index"], val_fraction, test_fraction) == SPLITS.index(split)
        )
        for k in (*fields, "index"):
            out.setdefault(k, []).append(rows[k][keep])
        out.setdefault("store", []).append(np.full(int(keep.sum()), ref.store, dtype=np.int16))
        count += int(keep.sum())
        if limit is not None and count >= limit:
            break
    return {k: np.concatenate(v)[:limit] for k, v in out.items()}


__all__ = ["split_rows"]
