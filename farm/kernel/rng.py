"""Counter-based random numbers: every draw is a pure function of (seed, index, stream, counter).

Why not ``numpy.random.Generator``: a generator's output depends on how many draws came before,
so the values of sample i would depend on how work was chunked. Hashing the coordinates instead
(splitmix64's finaliser, Steele et al. 2014) gives the same number for the same coordinates in any
process, any order, any chunking. That is what makes stores bit-identical across actor counts,
retries and resumes.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

# Independent streams: one per kind of randomness, so adding draws to one never shifts another.
STREAM_THETA = 0x7E7A
STREAM_PLACEMENT = 0x91AC
STREAM_NOISE = 0x5E1F
STREAM_MISMATCH = 0x3A7C
STREAM_SWEEP = 0x5EE9

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_S16 = np.uint64(16)
_S32 = np.uint64(32)
_S48 = np.uint64(48)
_MASK16 = np.uint64(0xFFFF)
INV65536 = 1.0 / 65536.0  # a power of two: x * 2^-16 == x / 65536 exactly
_INV53 = 1.0 / 9007199254740992.0


@numba.njit(cache=True, inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64 finaliser of ``x + golden``: a bijective, avalanche-complete 64-bit hash."""
    z = x + GOLDEN
    z = (z ^ (z >> _S30)) * M1
    z = (z ^ (z >> _S27)) * M2
    return z ^ (z >> _S31)


def splitmix64_np(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """``mix64`` elementwise in plain numpy (no compilation): hash-based splits of index arrays.

    Args:
        x: uint64 array (any shape); other integer dtypes are converted.

    Returns:
        uint64 array of the same shape, equal to ``mix64`` applied to each element.
    """
    z = np.asarray(x, dtype=np.uint64) + GOLDEN
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64 by design
        z = (z ^ (z >> _S30)) * M1
        z = (z ^ (z >> _S27)) * M2
    return z ^ (z >> _S31)


def sweep_keys(keys: NDArray[np.uint64], sweep: int) -> NDArray[np.uint64]:
    """Noise keys of sweep ``sweep`` of the samples whose (sweep 0) keys are ``keys``.

    Sweep 0 keeps the key itself, so a one-sweep protocol's noise is exactly that of the ``step``
    protocol before sweeps existed; later sweeps get independent keys hashed from (key, sweep).
    """
    k = np.asarray(keys, dtype=np.uint64)
    if sweep == 0:
        return k
    salt = splitmix64_np(np.array([STREAM_SWEEP * 1_000_003 + int(sweep)], dtype=np.uint64))[0]
    return splitmix64_np(k ^ salt)


@numba.njit(cache=True, inline="always")
def derive(key: np.uint64, counter: np.uint64) -> np.uint64:
    """Child key of ``key`` at ``counter``."""
    return mix64(mix64(key) ^ counter)


@numba.njit(cache=True, inline="always")
def to_uniform(h: np.uint64) -> float:
    """Top 53 bits of a hash as a float in [0, 1)."""
    return float(h >> _S11) * _INV53


@numba.njit(cache=True, inline="always")
def to_normal_fast(h: np.uint64) -> float:
    """Approximately standard normal from one hash: Irwin-Hall sum of four 16-bit uniforms.

    Variance exactly 1, tails cut at ±3.46 sigma. Used for per-step temporal and readout noise,
    where one hash per draw keeps the kernel above 1e8 neuron-steps/s.
    """
    # The four 16-bit parts sum exactly in integers (< 2^18) and convert exactly through int64,
    # so this equals the float sum of four float(uint64) conversions at a quarter of their cost.
    s = np.int64((h & _MASK16) + ((h >> _S16) & _MASK16) + ((h >> _S32) & _MASK16) + (h >> _S48))
    return (float(s) * INV65536 - 2.0) * 1.7320508075688772


@numba.njit(cache=True)
def stream_keys(seed: int, indices: NDArray[np.int64], stream: int) -> NDArray[np.uint64]:
    """Per-sample keys of one stream: key_i = H(H(seed, stream), i)."""
    base = derive(np.uint64(seed), np.uint64(stream))
    out = np.empty(indices.shape[0], dtype=np.uint64)
    for k in range(indices.shape[0]):
        out[k] = derive(base, np.uint64(indices[k]))
    return out


@numba.njit(cache=True)
def uniforms(keys: NDArray[np.uint64], attempt: int, num_cols: int) -> NDArray[np.float64]:
    """(n, num_cols) uniforms in [0, 1): column j of row k is U(H(H(keys[k], attempt), j))."""
    out = np.empty((keys.shape[0], num_cols), dtype=np.float64)
    for k in range(keys.shape[0]):
        sub = derive(keys[k], np.uint64(attempt))
        for j in range(num_cols):
            out[k, j] = to_uniform(derive(sub, np.uint64(j)))
    return out


@numba.njit(cache=True)
def normals(keys: NDArray[np.uint64], num_cols: int) -> NDArray[np.float64]:
    """(n, num_cols) exact standard normals by Box-Muller, column j from counters 2j, 2j+1."""
    out = np.empty((keys.shape[0], num_cols), dtype=np.float64)
    for k in range(keys.shape[0]):
        for j in range(num_cols):
            u1 = 1.0 - to_uniform(derive(keys[k], np.uint64(2 * j)))
            u2 = to_uniform(derive(keys[k], np.uint64(2 * j + 1)))
            out[k, j] = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return out


def as_indices(indices: NDArray[np.integer] | range | list[int]) -> NDArray[np.int64]:
    """Validated int64 index array (sample indices are non-negative)."""
    idx = np.ascontiguousarray(np.asarray(indices, dtype=np.int64).reshape(-1))
    if idx.size and idx.min() < 0:
        raise ValueError(f"sample index {int(idx.min())} must be >= 0")
    return idx
