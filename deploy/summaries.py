"""Posterior summaries from draws: mean, std, central intervals, highest-density draw.

Kept apart from the service so the CLI client (``farm query``) and the server agree on what
"mean", "std" and the "90 % interval" mean, and so they can be tested without Serve.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def summarize_draws(
    samples: NDArray[np.floating], log_prob: NDArray[np.floating] | None = None
) -> dict[str, NDArray[np.float64]]:
    """Per-parameter mean and std of posterior draws, plus the highest-density draw.

    Args:
        samples: (n, 7) posterior draws.
        log_prob: (n,) log p(theta | x) of the draws; without it no MAP is returned.

    Returns:
        ``{"mean": (7,), "std": (7,), "map": (7,)}`` (``map`` only with ``log_prob``). The MAP is
        the draw with the highest density, the estimate sbi's ``map()`` starts its ascent from.
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 1:
        raise ValueError(f"samples shape {s.shape} must be (n >= 1, d)")
    out = {
        "mean": s.mean(axis=0),
        "std": s.std(axis=0, ddof=1) if s.shape[0] > 1 else np.zeros(s.shape[1]),
    }
    if log_prob is not None:
        lp = np.asarray(log_prob, dtype=np.float64)
        if lp.shape != (s.shape[0],):
            raise ValueError(f"log_prob shape {lp.shape} must be ({s.shape[0]},)")
        out["map"] = s[int(np.argmax(np.where(np.isfinite(lp), lp, -np.inf)))]
    return out


def central_interval(
    samples: NDArray[np.floating], level: float = 0.9
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Equal-tailed credible interval per parameter.

    Args:
        samples: (n, d) posterior draws.
        level: probability mass inside, in (0, 1).

    Returns:
        (lower, upper), each (d,).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} outside (0, 1)")
    s = np.asarray(samples, dtype=np.float64)
    tail = (1.0 - level) / 2.0
    return np.quantile(s, tail, axis=0), np.quantile(s, 1.0 - tail, axis=0)


def significant_digits(values: np.ndarray, digits: int = 7) -> np.ndarray:
    """float64 values rounded to ``digits`` significant digits, so JSON carries ~8 characters each.

    The draws are float32 (~7.2 significant digits); written as float64 they take 17 digits and
    doubled the /sample body (130 kB for 1000 draws) for digits that are not there. The relative
    change is below 5e-7: a thousandth of an LSB at most.
    """
    a = np.asarray(values, dtype=np.float64)
    magnitude = np.floor(np.log10(np.abs(np.where(a == 0.0, 1.0, a))))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.rint(a * scale) / scale
