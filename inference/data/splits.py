"""Train / validation / test split of sample indices: a hash of the index alone.

Why a hash and not positions: a store extended or re-chunked keeps every row's split, every
worker agrees on it without talking, and stores of other seeds split the same way. Default
fractions 80 / 10 / 10 (``TrainConfig.val_fraction``, ``test_fraction``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from farm.kernel import rng

#: The splits, by hash of the sample index: u < val_fraction is val, then test_fraction is test.
SPLITS = ("train", "val", "test")


def _unit(indices: NDArray[np.integer]) -> NDArray[np.float64]:
    """A uniform [0, 1) number per sample index: farm's splitmix64 hash, top 53 bits."""
    z = rng.splitmix64_np(np.asarray(indices, dtype=np.uint64))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def is_validation(indices: NDArray[np.integer], val_fraction: float) -> NDArray[np.bool_]:
    """Whether each sample index belongs to the validation split (a hash of the index alone).

    Args:
        indices: sample indices in their store.
        val_fraction: expected share of validation rows, in [0, 1).

    Returns:
        (n,) bool, the same for a given index whatever the chunking or worker count.
    """
    return _unit(indices) < val_fraction


def split_of(
    indices: NDArray[np.integer], val_fraction: float, test_fraction: float
) -> NDArray[np.int8]:
    """The split of each sample index: 0 train, 1 val, 2 test (indices into ``SPLITS``).

    Why by hash and not by position: a store extended or re-chunked keeps every row's split, and
    the validation rows stay those of ``is_validation`` whatever ``test_fraction`` is.

    Args:
        indices: sample indices in their store.
        val_fraction, test_fraction: expected shares of validation and test rows (sum < 1).
    """
    u = _unit(indices)
    return np.where(u < val_fraction, 1, np.where(u < val_fraction + test_fraction, 2, 0)).astype(
        np.int8
    )


__all__ = ["SPLITS", "is_validation", "split_of"]
