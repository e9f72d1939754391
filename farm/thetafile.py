"""Reading user-given parameter sets (`farm simulate --theta`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from farm.defaults import PARAMETER_NAMES
from farm.prior import AnyPrior


def read_theta(path: str | Path, prior: AnyPrior) -> NDArray[np.float32]:
    """(n, 7) float32 LSB from .npy or .csv, checked against the prior box.

    A CSV may have a header row naming the parameters (any order); otherwise columns are in
    ``PARAMETER_NAMES`` order.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"theta file {str(p)!r} does not exist")
    if p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    elif p.suffix in (".csv", ".txt"):
        with p.open() as f:
            first = f.readline().strip()
        names = [c.strip() for c in first.split(",")]
        if set(names) == set(PARAMETER_NAMES):
            raw = np.loadtxt(p, delimiter=",", skiprows=1, ndmin=2)
            arr = raw[:, [names.index(n) for n in PARAMETER_NAMES]]
        else:
            arr = np.loadtxt(p, delimiter=",", ndmin=2)
    else:
        raise ValueError(f"theta file {str(p)!r} must be .npy or .csv")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1 and arr.size == len(PARAMETER_NAMES):
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != len(PARAMETER_NAMES) or arr.shape[0] == 0:
        raise ValueError(f"theta shape {arr.shape} must be (n, {len(PARAMETER_NAMES)}) with columns {', '.join(PARAMETER_NAMES)}")
    prior.check(arr)
    return arr.astype(np.float32)


def theta_fingerprint(theta: NDArray[np.float32]) -> str:
    return "file:" + hashlib.sha256(np.ascontiguousarray(theta, dtype=np.float32).tobytes()).hexdigest()[:16]
