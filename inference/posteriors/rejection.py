"""Posterior draws kept inside a restricted prior's region: rejection sized per observation.

Why a module of its own: the flow knows nothing of the classifier's region, so the posterior draws
candidates and keeps those inside it (sbi's ``DirectPosterior`` does the same). How many to draw,
and how to redraw for observations still short, decides what a restricted posterior costs per
request (bench/serve.py prints the share), so that policy lives here, apart from the flow calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from inference.errors import RejectionBudgetExceeded

MAX_ROUNDS = 200  # a row gets at most this many times num_samples draws
ROUND_ROWS = 1 << 20  # most flow rows drawn at once in a rejection round (bounds memory)

#: (rows,) observation of each candidate -> candidates (rows, 7) and their log-densities (rows,) or
#: None
Redraw = Callable[[NDArray[np.int64]], tuple[NDArray[np.float64], NDArray[np.float64] | None]]


def first_round(num_samples: int) -> int:
    """Candidates per observation in the first round: ~10 % more than asked.

    So an observation well inside the region needs no second round (a flow call has a fixed cost
    of several ms before its first row). The count depends on num_samples only, so a seed gives
    the same draws whatever else is cached.
    """
    return num_samples + num_samples // 10 + 16


def keep_inside(
    prior: Any,
    theta: NDArray[np.float64],
    lp: NDArray[np.float64] | None,
    num_samples: int,
    redraw: Redraw,
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """The first ``num_samples`` candidates of each observation that lie inside ``prior.support``.

    Args:
        prior: the restricted prior (``support(theta) -> bool``: one classifier pass a round).
        theta: (B, first, 7) first-round candidates; lp: (B, first) their log-densities or None.
        num_samples: draws each observation needs.
        redraw: fresh candidates for the observations named by each row of its argument.

    A row still short after a round is redrawn with a count sized from its own acceptance so
    far (one flow pass over all short rows, each context repeated as often as that row needs),
    so a batch does not draw for every row what its least accepted row needs.

    Raises:
        RejectionBudgetExceeded: an observation got ``MAX_ROUNDS * num_samples`` candidates and
            is still short.
    """
    b, first, dim = theta.shape
    out = np.empty((b, num_samples, dim), dtype=theta.dtype)
    out_lp = None if lp is None else np.empty((b, num_samples))
    filled = np.zeros(b, dtype=np.int64)
    drawn = np.zeros(b, dtype=np.int64)
    accepted = np.zeros(b, dtype=np.int64)
    budget = MAX_ROUNDS * num_samples
    rows = np.repeat(np.arange(b), first)  # observation of each candidate
    cand_theta, cand_lp = theta.reshape(-1, dim), None if lp is None else lp.reshape(-1)
    while True:
        ok = prior.support(cand_theta)  # one classifier pass for every candidate of the round
        drawn += np.bincount(rows, minlength=b)
        accepted += np.bincount(rows[ok], minlength=b)
        present = np.unique(rows)  # rows is sorted: each observation's candidates are contiguous
        for i, lo, hi in zip(
            present, np.searchsorted(rows, present, "left"), np.searchsorted(rows, present, "right")
        ):
            cand = lo + np.flatnonzero(ok[lo:hi])[: num_samples - filled[i]]
            out[i, filled[i] : filled[i] + cand.size] = cand_theta[cand]
            if out_lp is not None:
                out_lp[i, filled[i] : filled[i] + cand.size] = cand_lp[cand]
            filled[i] += cand.size
        pending = np.flatnonzero(filled < num_samples)
        if pending.size == 0:
            return out, out_lp
        if np.any(drawn[pending] >= budget):
            out_of_budget = pending[drawn[pending] >= budget]
            raise RejectionBudgetExceeded(
                budget,
                MAX_ROUNDS,
                float(np.max(accepted[out_of_budget] / drawn[out_of_budget])),
                out_of_budget.size,
            )
        rate = np.maximum(accepted[pending], 1) / drawn[pending]
        need = np.ceil(1.2 * (num_samples - filled[pending]) / rate).astype(np.int64) + 8
        need = np.minimum(need, budget - drawn[pending])
        if need.sum() > ROUND_ROWS:  # bound memory; the next round draws the rest
            need = np.maximum(need * ROUND_ROWS // need.sum(), 1)
        rows = np.repeat(pending, need)
        cand_theta, cand_lp = redraw(rows)
