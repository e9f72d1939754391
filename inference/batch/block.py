"""One work item of `farm infer`: posterior draws, summaries and checks for a block of traces.

Pure: a posterior, traces (with their circuits' fingerprints, for a circuit-aware posterior) and
a seed in, arrays out; no Ray, no Zarr. The block's draws come from batched flow calls seeded by
keys hashed from (run seed, block index), so a block recomputed after a kill, or by another
actor, gives the same bytes (farm.kernel.rng's counter-based keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.kernel.rng import splitmix64_np
from inference.diagnostics.misspecification import refused
from inference.errors import RejectionBudgetExceeded

#: Stream of the block keys (farm.kernel.rng keeps one stream per kind of randomness).
STREAM_INFER = 0x1AF3
QUANTILES = (0.05, 0.5, 0.95)
SUMMARIES = ("mean", "std", "q05", "q50", "q95", "map")
#: Flow rows (observations x draws) per posterior call: a row holds ~11 kB of the flow's
#: intermediates, and the rate per row is flat from ~8k rows on, so larger calls only cost memory.
ROWS_PER_CALL = 16_384


@dataclass(frozen=True, slots=True)
class BlockResult:
    """What one block of B observations writes (P parameters, n draws).

    Args:
        draws: (B, n, P) float32 LSB; NaN for rows that could not be answered.
        summaries: name -> (B, P) float32: mean, std, q05, q50, q95, map (highest-density draw).
        score: (B,) float32 misspecification score (NaN where the artifact has no detector).
        flagged: (B,) bool, the trace is unlike the training data or unusable.
        reasons: (B,) str, why, ``; ``-joined (empty when not flagged).
    """

    draws: NDArray[np.float32]
    summaries: dict[str, NDArray[np.float32]]
    score: NDArray[np.float32]
    flagged: NDArray[np.bool_]
    reasons: NDArray[np.object_]


def block_seed(seed: int, block: int) -> int:
    """Torch seed of block ``block``: H(H(seed, stream), block), as farm.kernel.rng derives keys."""

    def derive(key: int, counter: int) -> int:
        mixed = splitmix64_np(np.array([key], dtype=np.uint64))
        return int(splitmix64_np(mixed ^ np.uint64(counter))[0])

    return derive(derive(seed, STREAM_INFER), block)


def infer_block(
    posterior: Any,
    traces: NDArray[Any],
    num_draws: int,
    seed: int,
    fingerprints: NDArray[Any] | None = None,
) -> BlockResult:
    """Draw, summarise and check B traces with batched posterior calls.

    The usable rows go to the posterior in groups of ``ROWS_PER_CALL // num_draws`` observations,
    group k seeded with ``block_seed(seed, k)``: the grouping depends only on the block's rows and
    the draw count, so a block's bytes do too.

    Rows with NaN / inf samples or codes outside the ADC range are flagged and left NaN; the
    others are answered (a bad row never fails its block).

    Args:
        posterior: from ``inference.load_posterior``.
        traces: (B, T) ADC codes, any numeric dtype.
        num_draws: draws per observation; seed: the block's seed (``block_seed``).
        fingerprints: (B, references, time) codes of each trace's circuit, for a circuit-aware
            posterior (``posterior.circuit_aware``); None for a circuit-marginal one.
    """
    x = np.asarray(traces, dtype=np.float64)
    fps = None if fingerprints is None else np.asarray(fingerprints)
    if fps is not None and fps.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} traces but {fps.shape[0]} fingerprints")
    b, p = x.shape[0], len(posterior.parameter_names)
    draws = np.full((b, num_draws, p), np.nan, dtype=np.float32)
    lp = np.full((b, num_draws), -np.inf)
    score = np.full(b, np.nan, dtype=np.float32)
    flagged = np.zeros(b, dtype=bool)
    reasons = np.full(b, "", dtype=object)
    ok = _usable(x, int(posterior.chip_model.adc_max_code), flagged, reasons)
    valid = np.flatnonzero(ok)
    per_call = max(1, ROWS_PER_CALL // num_draws)
    for k, start in enumerate(range(0, valid.size, per_call)):
        rows, call_seed = valid[start : start + per_call], block_seed(seed, k)
        try:
            got = posterior.sample_and_assess(
                num_draws, traces=x[rows], seed=call_seed, normalized=False, **_circuits(fps, rows)
            )
            parts = [(rows, got)]
        except RejectionBudgetExceeded:  # one far-out row: answer the others one by one
            parts = _one_by_one(posterior, x, fps, rows, num_draws, call_seed)
        for where, (theta, logp, checks) in parts:
            if logp is not None:  # a refused row keeps its NaN draws
                draws[where], lp[where] = theta, logp
            for i, check in zip(where, checks):
                score[i] = np.nan if check["score"] is None else check["score"]
                flagged[i] = bool(check["flagged"])
                reasons[i] = "; ".join(check["reasons"])
    return BlockResult(draws, _summaries(draws, lp), score, flagged, reasons)


def _usable(
    x: NDArray[np.float64], adc_max: int, flagged: NDArray[np.bool_], reasons: NDArray[np.object_]
) -> NDArray[np.bool_]:
    """Rows the posterior can take; flags the others with their reason."""
    bad = ~np.isfinite(x)
    nonfinite = bad.any(axis=1)
    with np.errstate(invalid="ignore"):
        outside = ((x < 0) | (x > adc_max)).any(axis=1) & ~nonfinite
    for i in np.flatnonzero(nonfinite):
        reasons[i] = f"trace has {int(bad[i].sum())} NaN or inf samples"
    for i in np.flatnonzero(outside):
        lo, hi = float(x[i].min()), float(x[i].max())
        reasons[i] = f"trace values span [{lo:g}, {hi:g}]; ADC codes lie in [0, {adc_max}]"
    flagged |= nonfinite | outside
    return ~(nonfinite | outside)


def _circuits(fps: NDArray[Any] | None, rows: Any) -> dict[str, NDArray[Any]]:
    """The ``fingerprints=`` keyword of these rows; none for a circuit-marginal posterior (an
    ensemble's ``sample_and_assess`` has no such keyword)."""
    return {} if fps is None else {"fingerprints": fps[rows]}


def _one_by_one(
    posterior: Any,
    x: NDArray[np.float64],
    fps: NDArray[Any] | None,
    rows: NDArray[np.int64],
    num_draws: int,
    seed: int,
) -> list[tuple[NDArray[np.int64], Any]]:
    """Each row alone (seeded by (call seed, row)).

    A row whose mass lies outside the restricted prior gets no draws (its parts' draws are None)
    and its check in the shape of a served refusal: flagged, the spent budget as its last reason
    (``inference.diagnostics.misspecification.refused``), beside whatever else the check found.
    """
    parts = []
    for i in rows:
        try:
            got = posterior.sample_and_assess(
                num_draws,
                traces=x[i : i + 1],
                seed=block_seed(seed, int(i)),
                normalized=False,
                **_circuits(fps, slice(i, i + 1)),
            )
            parts.append((np.array([i]), got))
        except RejectionBudgetExceeded as e:  # refused: the row's check, as HTTP's 422 carries it
            check = refused(
                posterior.misspecification_batched(
                    traces=x[i : i + 1], **_circuits(fps, slice(i, i + 1))
                )[0],
                e,
            )
            parts.append((np.array([i]), (None, None, [check])))
    return parts


def _summaries(draws: NDArray[np.float32], lp: NDArray[np.float64]) -> dict[str, NDArray[Any]]:
    """Per-row mean, std, 5/50/95 % quantiles and the highest-density draw (float32, (B, P))."""
    d = draws.astype(np.float64)  # NaN rows (unanswered) stay NaN in every summary
    q = np.quantile(d, QUANTILES, axis=1)
    out = {"mean": d.mean(axis=1), "std": d.std(axis=1), "q05": q[0], "q50": q[1], "q95": q[2]}
    out["map"] = d[np.arange(d.shape[0]), np.argmax(lp, axis=1)]
    return {k: v.astype(np.float32) for k, v in out.items()}
