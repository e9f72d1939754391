"""Reading user-given arrays: parameter sets (`farm simulate --theta`), traces (`farm query`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from farm.defaults import PARAMETER_NAMES
from farm.errors import FarmInputError
from farm.prior import AnyPrior


def read_numbers(path: str | Path, what: str, header: tuple[str, ...] = ()) -> NDArray[np.float64]:
    """Numbers from ``.npy`` (never unpickled) or ``.csv`` / ``.txt``.

    One-line errors name ``what``.

    Args:
        header: column names a CSV may carry in its first row (in any order); such columns come
            back reordered to this order. Without a header row, columns are taken as they are.
    """
    p = Path(path)
    if not p.is_file():
        raise FarmInputError(f"{what} file {str(p)!r} does not exist; give a .npy or .csv file")
    if p.suffix == ".npy":
        try:
            return np.asarray(np.load(p, allow_pickle=False))
        except ValueError as e:  # object arrays (would need pickle) or a corrupt header
            raise FarmInputError(
                f"{what} file {p.name}: {str(e).splitlines()[0]}; save a plain numeric array"
            ) from None
    if p.suffix not in (".csv", ".txt"):
        raise FarmInputError(
            f"{what} file {p.name}: unknown format {p.suffix!r}; use .npy, .csv or .txt"
        )
    delimiter = "," if p.suffix == ".csv" else None
    try:
        if header:
            with p.open() as f:
                names = [c.strip() for c in f.readline().strip().split(delimiter)]
            if set(names) == set(header):
                raw = np.loadtxt(p, delimiter=delimiter, skiprows=1, ndmin=2)
                return raw[:, [names.index(n) for n in header]]
        return np.loadtxt(p, delimiter=delimiter, ndmin=2 if header else 0)
    except ValueError as e:  # ragged rows or text where numbers belong
        raise FarmInputError(
            f"{what} file {p.name}: {str(e).splitlines()[0]}; give one row of numbers per line"
        ) from None


def read_theta(path: str | Path, prior: AnyPrior) -> NDArray[np.float32]:
    """(n, 7) float32 LSB from .npy or .csv, checked against the prior box.

    A CSV may have a header row naming the parameters (any order); otherwise columns are in
    ``PARAMETER_NAMES`` order.
    """
    try:
        arr = np.asarray(read_numbers(path, "theta", header=PARAMETER_NAMES), dtype=np.float64)
    except TypeError:  # a structured array does not cast to numbers
        raise FarmInputError(
            f"{path}: theta must be a plain numeric (n, {len(PARAMETER_NAMES)}) array, "
            "not a structured one"
        ) from None
    if arr.ndim == 1 and arr.size == len(PARAMETER_NAMES):
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != len(PARAMETER_NAMES) or arr.shape[0] == 0:
        raise FarmInputError(
            f"theta shape {arr.shape} must be (n, {len(PARAMETER_NAMES)}) "
            f"with columns {', '.join(PARAMETER_NAMES)}"
        )
    prior.check(arr)
    return arr.astype(np.float32)


def theta_fingerprint(theta: NDArray[np.float32]) -> str:
    return (
        "file:"
        + hashlib.sha256(np.ascontiguousarray(theta, dtype=np.float32).tobytes()).hexdigest()[:16]
    )
