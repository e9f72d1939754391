"""The trace-space check inside a posterior artifact: calibrated at training, read at load.

Why the raw traces are stored beside the detector: the detector's own file holds statistics of
the traces (``TRACE_STATISTICS``), a list that grows as the check improves, and
``TraceDetector.load`` refuses a block computed over another list. The reference and calibration
traces themselves (int16, compressed) let a newer package refit the check at load, at the
artifact's own quantile, so an artifact keeps its trace check across changes of statistics; an
artifact without them (or with an edited one) answers without the check, and the answer's note
says why.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from inference.diagnostics.trace_check import TRACE_METHOD, TRACE_STATISTICS, TraceDetector

log = logging.getLogger(__name__)

#: Manifest key of the trace check's block.
BLOCK = "trace_misspecification"
#: The reference and calibration traces the check was fitted on (int16, ``np.savez_compressed``).
TRACES_FILE = "trace_misspecification_traces.npz"
#: Reference traces kept at most: the kernel densities cost O(reference) per statistic and trace.
MAX_REFERENCE = 2000
#: Samples each rest window needs (before the stimulus, after it ends) for the statistics to mean
#: anything: noise, slope and spectrum of a shorter window are dominated by a few samples.
MIN_WINDOW = 50


def trace_windows(protocol: Any) -> tuple[int, int] | None:
    """(pre, stim_end) in samples, or None where ``trace_statistics`` has no meaning.

    Why None for multi-sweep and ramp protocols: the statistics read one rest window before one
    step and one after it; a concatenation of sweeps has several of each, and its "end" window
    would lie in the last sweep only. Those posteriors keep the summary and regime checks.
    """
    if getattr(protocol, "num_sweeps", 1) != 1 or getattr(protocol, "sweeps", ()):
        return None
    period = protocol.sample_period_us
    pre = int(round(protocol.t_pre_us / period))
    stim_end = pre + int(round(protocol.t_stim_us / period))
    if pre < MIN_WINDOW or protocol.num_samples - (stim_end + 100) < MIN_WINDOW:
        return None
    return pre, stim_end


def joint_quantile(
    summary_scores: NDArray[np.floating] | None,
    own: NDArray[np.bool_],
    trace_scores: NDArray[np.floating],
    target: float = 0.05,
) -> float:
    """The smallest quantile q, thresholding both checks at q of their own calibration scores,
    whose union with the regime/flat/rail reasons (``own``) flags at most ``target`` of the
    calibration traces (as ``bench/misspecification.py`` calibrates them); 0.999 if none does.

    Args:
        summary_scores: (m,) kNN scores of the calibration rows (None: no summary check).
        own: (m,) whether a regime, flat or rail reason fired on the row.
        trace_scores: (m,) trace-space scores of the same rows.
    """
    grid = np.linspace(0.95, 0.999, 99)
    for q in grid:
        fired = own | (trace_scores > np.quantile(trace_scores, q))
        if summary_scores is not None:
            fired = fired | (summary_scores > np.quantile(summary_scores, q))
        if np.mean(fired) <= target:
            return float(q)
    return float(grid[-1])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_trace_check(
    detector: TraceDetector,
    reference: NDArray[np.integer],
    calibration: NDArray[np.integer],
    directory: str | Path,
) -> dict[str, Any]:
    """Write the detector's file and its traces; return the manifest block (JSON).

    Args:
        reference, calibration: the (n, T) and (m, T) ADC codes ``detector`` was fitted on.
    """
    path = Path(directory) / TRACES_FILE
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        reference=np.asarray(reference, dtype=np.int16),
        calibration=np.asarray(calibration, dtype=np.int16),
    )
    tmp.replace(path)
    return detector.save(directory) | {"traces": {"file": TRACES_FILE, "sha256": _sha256(path)}}


def load_trace_check(
    directory: str | Path, block: dict[str, Any]
) -> tuple[TraceDetector | None, str | None]:
    """The artifact's trace check, or None and why it is skipped.

    Statistics of this package: the detector's own file (checksum verified). Other statistics
    (an artifact written before or after a change of ``TRACE_STATISTICS``): refitted from the
    stored traces at the block's quantile, or skipped when the artifact has none.

    Raises:
        ValueError: a missing or edited file (one line), as for the summary check.
    """
    if block.get("method") == TRACE_METHOD and block.get("statistics") == list(TRACE_STATISTICS):
        return TraceDetector.load(directory, block), None
    traces = block.get("traces") or {}
    if not traces:
        return None, (
            f"trace-space check skipped: the artifact's ({block.get('method')!r} over "
            f"{len(block.get('statistics') or [])} statistics) is not this package's and it "
            "stores no traces to refit it (retrain to get it)"
        )
    path = Path(directory) / traces.get("file", TRACES_FILE)
    if not path.is_file():
        raise ValueError(f"artifact={str(directory)!r} names {path.name} but has no such file")
    if _sha256(path) != traces.get("sha256"):
        raise ValueError(f"{path}: checksum differs from the manifest; corrupt or edited")
    with np.load(path, allow_pickle=False) as a:
        reference, calibration = a["reference"], a["calibration"]
    log.info("refitting the trace-space check of %s: its statistics differ", directory)
    detector = TraceDetector.fit(
        reference, calibration, int(block["pre"]), int(block["stim_end"])
    ).with_quantile(float(block["quantile"]))
    return detector, None


__all__ = [
    "BLOCK",
    "MAX_REFERENCE",
    "TRACES_FILE",
    "joint_quantile",
    "load_trace_check",
    "save_trace_check",
    "trace_windows",
]
