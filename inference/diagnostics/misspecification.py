"""Is an observation like the data the posterior was trained on? A per-observation check.

Why not sbi's MMD test alone (``sbi.diagnostics.misspecification``): it compares two *sets* of
observations and gets its null distribution by reshuffling; a lab sends one trace at a time. So
the score here is per observation, in the same summary space the flow is conditioned on (the
z-scored handcrafted statistics, or the learned CNN embedding): the distance from the
observation's standardised summary to its k-th nearest training summary (kNN novelty score).
The threshold is the ``quantile`` (95 %) of the scores of held-out test rows, which are not
in the reference set, so fresh in-distribution observations exceed it ~5 % of the time.

Independently of the score, a trace is flagged when its own spike count (``farm.features``,
from the ADC codes alone) lies outside the regime the posterior was trained for, or when it is
flat or stuck on an ADC rail (rows the training excluded,
``inference.data.datasets.quality_flags``), or when the trace-space check
(``inference.diagnostics.trace_check``, stored by ``trace_artifact``) finds a statistic of the raw
trace unlike the training traces': a distortion the summary is blind to. Where an artifact has
both, the two checks share one quantile, chosen so their union keeps 5 % false alarms.

Reference: Schmitt et al. 2023, "Detecting model misspecification in amortized Bayesian
inference with neural networks" (summary-space distances); Breunig et al. 2000 (kNN outliers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from farm.defaults import Regime
from inference.data.quality import FLAT_PTP_CODES, SATURATED_FRACTION

FILE = "misspecification.npz"
METHOD = "knn"
#: Why a score is missing: the artifact was written before calibration existed.
UNAVAILABLE = (
    "summary-space score unavailable: the artifact predates misspecification calibration"
    " (retrain to get it); regime checks only"
)
_BLOCK_ROWS = 4096  # observations scored per distance matrix (bounds memory at ~4096 x reference)


@dataclass(frozen=True, eq=False)
class KNNDetector:
    """Distance to the k-th nearest training summary, calibrated on held-out rows.

    Args:
        reference: (n, D) float32 standardised summaries of training rows.
        mean, std: (D,) standardisation fitted on the reference (training) rows only.
        k: neighbour rank whose distance is the score.
        quantile: share of held-out scores below the threshold (1 - false-alarm rate).
        threshold: the ``quantile`` of the calibration scores.
        calibration_scores: (m,) scores of the held-out calibration rows (kept for reports).
    """

    reference: NDArray[np.float32]
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    k: int
    quantile: float
    threshold: float
    calibration_scores: NDArray[np.float64]

    @classmethod
    def fit(
        cls,
        reference: NDArray[np.floating],
        calibration: NDArray[np.floating],
        k: int = 10,
        quantile: float = 0.95,
    ) -> KNNDetector:
        """Standardise on ``reference`` and set the threshold from ``calibration`` (disjoint rows).

        Args:
            reference: (n, D) summaries of training rows; calibration: (m, D) of held-out rows.
            k: neighbour rank, in [1, n]; quantile: in (0, 1).

        Raises:
            ValueError: shapes that disagree, too few rows, non-finite summaries.
        """
        ref = np.asarray(reference, dtype=np.float64)
        cal = np.asarray(calibration, dtype=np.float64)
        if ref.ndim != 2 or cal.ndim != 2 or ref.shape[1] != cal.shape[1]:
            raise ValueError(
                f"reference {ref.shape} and calibration {cal.shape} must be (n, D) with the same D"
            )
        if not 1 <= k <= ref.shape[0]:
            raise ValueError(f"k={k} outside [1, {ref.shape[0]}] (the reference rows)")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile={quantile} outside (0, 1)")
        if cal.shape[0] < 20:
            raise ValueError(
                f"calibration has {cal.shape[0]} rows; at least 20 are needed"
                f" for a {quantile:.0%} threshold"
            )
        if not (np.isfinite(ref).all() and np.isfinite(cal).all()):
            raise ValueError("reference or calibration summaries contain NaN or inf")
        mean = ref.mean(axis=0)
        std = ref.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)  # a constant summary carries no distance
        z = ((ref - mean) / std).astype(np.float32)
        draft = cls(z, mean, std, int(k), float(quantile), float("inf"), np.empty(0))
        scores = draft.score(cal)
        return cls(
            z, mean, std, int(k), float(quantile), float(np.quantile(scores, quantile)), scores
        )

    def with_quantile(self, quantile: float) -> KNNDetector:
        """The same detector thresholded at another quantile of its calibration scores (the
        summary and trace checks share one, chosen so that their union keeps the false-alarm
        target: ``inference.diagnostics.trace_artifact.joint_quantile``)."""
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile={quantile} outside (0, 1)")
        return replace(
            self,
            quantile=float(quantile),
            threshold=float(np.quantile(self.calibration_scores, quantile)),
        )

    def score(self, summaries: NDArray[np.floating] | torch.Tensor) -> NDArray[np.float64]:
        """(B, D) summaries -> (B,) distance to the k-th nearest reference row (standardised)."""
        s = (
            summaries.detach().double().numpy()
            if isinstance(summaries, torch.Tensor)
            else np.asarray(summaries, dtype=np.float64)
        )
        if s.ndim != 2 or s.shape[1] != self.reference.shape[1]:
            raise ValueError(f"summaries shape {s.shape} must be (B, {self.reference.shape[1]})")
        ref = torch.from_numpy(self.reference)
        out = np.empty(s.shape[0])
        for lo in range(0, s.shape[0], _BLOCK_ROWS):
            q = torch.from_numpy(
                ((s[lo : lo + _BLOCK_ROWS] - self.mean) / self.std).astype(np.float32)
            )
            d = torch.cdist(q, ref)
            out[lo : lo + q.shape[0]] = (
                torch.topk(d, self.k, dim=1, largest=False).values[:, -1].double().numpy()
            )
        return out

    def meta(self) -> dict[str, Any]:
        """What the manifest records (JSON): method, k, quantile, threshold, sizes."""
        return {
            "method": METHOD,
            "k": self.k,
            "quantile": self.quantile,
            "threshold": self.threshold,
            "num_reference": int(self.reference.shape[0]),
            "num_calibration": int(self.calibration_scores.size),
            "summary_dim": int(self.reference.shape[1]),
        }

    def save(self, directory: str | Path, file: str = FILE) -> dict[str, Any]:
        """Write ``file`` (plain arrays, no pickle); return its manifest block."""
        path = Path(directory) / file
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            reference=self.reference,
            mean=self.mean,
            std=self.std,
            calibration_scores=self.calibration_scores,
        )
        tmp.replace(path)
        return self.meta() | {"file": file, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    @classmethod
    def load(cls, directory: str | Path, block: dict[str, Any]) -> KNNDetector:
        """Rebuild from ``save``'s file and manifest block (``np.load(allow_pickle=False)``).

        Raises:
            ValueError: a missing or edited file, another method.
        """
        if block.get("method") != METHOD:
            raise ValueError(
                f"misspecification method={block.get('method')!r}; this package reads {METHOD!r}"
            )
        path = Path(directory) / block.get("file", FILE)
        if not path.is_file():
            raise ValueError(
                f"artifact={str(directory)!r} names {path.name} in its manifest"
                " but has no such file"
            )
        if block.get("sha256") and hashlib.sha256(path.read_bytes()).hexdigest() != block["sha256"]:
            raise ValueError(
                f"{path}: checksum differs from the manifest; the artifact is corrupt or was edited"
            )
        with np.load(path, allow_pickle=False) as a:
            return cls(
                a["reference"],
                a["mean"],
                a["std"],
                int(block["k"]),
                float(block["quantile"]),
                float(block["threshold"]),
                a["calibration_scores"],
            )


def trace_reasons(
    traces: NDArray[np.integer] | None,
    spike_counts: NDArray[np.floating],
    regime: Regime,
    adc_max_code: int,
) -> list[list[str]]:
    """Per observation, the reasons its trace is outside what the posterior was trained for.

    Args:
        traces: (B, T) ADC codes, or None when only statistics were given.
        spike_counts: (B,) spike counts detected in the trace (``farm.features``, ``spike_count``).
        regime: the artifact's regime of interest.
        adc_max_code: top ADC code (1023 for 10 bit).

    Returns:
        B lists of one-line reasons (empty: nothing wrong found).
    """
    counts = np.asarray(spike_counts, dtype=np.float64).reshape(-1)
    out: list[list[str]] = [[] for _ in range(counts.size)]
    for i in np.flatnonzero(~regime.contains(counts)):
        out[i].append(
            f"spike_count={int(counts[i])} outside the training regime"
            f" [{regime.min_spikes}, {regime.max_spikes}]"
        )
    if traces is not None:
        t = np.asarray(traces)
        ptp = t.max(axis=1).astype(np.int64) - t.min(axis=1).astype(np.int64)
        rail = np.mean((t <= 0) | (t >= adc_max_code), axis=1)
        for i in np.flatnonzero(ptp <= FLAT_PTP_CODES):
            out[i].append(
                f"flat trace (peak-to-peak {int(ptp[i])} codes <= {FLAT_PTP_CODES}):"
                " no membrane dynamics"
            )
        for i in np.flatnonzero(rail >= SATURATED_FRACTION):
            out[i].append(
                f"saturated trace ({rail[i]:.0%} of samples on an ADC rail"
                f" >= {SATURATED_FRACTION:.0%})"
            )
    return out


def assess(
    scores: NDArray[np.floating] | None,
    detector: KNNDetector | None,
    reasons: list[list[str]],
    trace: TraceAnswers | None = None,
) -> list[dict[str, Any]]:
    """Combine the summary-space scores, the trace-space check and the trace reasons into one
    answer per observation.

    Args:
        scores: (B,) kNN scores, or None (artifact without calibration).
        reasons: B lists of the regime, flat, rail and circuit reasons.
        trace: the trace-space check of the same B observations, or None where it did not run.

    Returns:
        B dicts ``{score, threshold, trace_score, trace_threshold, flagged, reasons, note}``;
        score and threshold are None (and ``note`` says why) for an artifact without
        calibration, trace_score and trace_threshold where the trace check did not run.
    """
    out = []
    trace = trace or TraceAnswers.absent(len(reasons))
    for i, r in enumerate(reasons):
        r = list(r)
        notes = [] if trace.note is None else [trace.note]
        s = threshold = None
        if detector is None or scores is None:
            notes.insert(0, UNAVAILABLE)
        else:
            s, threshold = float(scores[i]), detector.threshold
            if s > detector.threshold:
                r.append(
                    f"summary unlike the training data: kNN score {s:.3g}"
                    f" > threshold {detector.threshold:.3g}"
                    f" ({1 - detector.quantile:.1%} false-alarm level)"
                )
        r.extend(trace.reasons[i])
        out.append(
            {
                "score": s,
                "threshold": threshold,
                "trace_score": None if trace.scores is None else float(trace.scores[i]),
                "trace_threshold": trace.threshold,
                "flagged": bool(r),
                "reasons": r,
                "note": "; ".join(notes) or None,
            }
        )
    return out


def refused(check: dict[str, Any], error: Any) -> dict[str, Any]:
    """The check of an observation the posterior could give no draws for: flagged, with the spent
    rejection budget as its last reason.

    Why one function: an HTTP 422 refusal (``deploy.serve.model_calls``), ``farm query`` and a
    `farm infer` row all carry this same object, so a client reads one shape everywhere.

    Args:
        check: the observation's answer from ``misspecification``.
        error: the ``inference.errors.RejectionBudgetExceeded`` its draws raised.
    """
    reason = (
        f"posterior outside the restricted prior: acceptance {error.acceptance:.2g} "
        f"< 1/{error.max_rounds} after {error.budget} proposals, no draws"
    )
    return dict(check) | {"flagged": True, "reasons": [*check["reasons"], reason]}


@dataclass(frozen=True)
class TraceAnswers:
    """The trace-space check's part of B answers (``inference.diagnostics.trace_check``).

    Args:
        scores: (B,) trace-space scores, or None where the check did not run.
        threshold: the check's threshold (None with scores).
        reasons: B lists holding the check's one line where it fired.
        note: why the artifact's check is skipped, when it is (an answer's ``note``).
    """

    scores: NDArray[np.float64] | None
    threshold: float | None
    reasons: list[list[str]]
    note: str | None = None

    @classmethod
    def absent(cls, num: int, note: str | None = None) -> TraceAnswers:
        return cls(None, None, [[] for _ in range(num)], note)

    @classmethod
    def of(cls, detector: Any, codes: NDArray[np.integer]) -> TraceAnswers:
        """Score B traces (B, T) with a ``TraceDetector``, one pass over their statistics for
        both the scores and the reason lines."""
        surprise, stats = detector.surprises(codes)
        return cls(
            surprise.max(axis=1), float(detector.threshold), detector.reasons_of(surprise, stats)
        )


__all__ = [
    "FILE",
    "METHOD",
    "UNAVAILABLE",
    "KNNDetector",
    "TraceAnswers",
    "assess",
    "refused",
    "trace_reasons",
]
