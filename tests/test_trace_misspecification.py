"""The trace-space misspecification check (issue 28): calibrated false alarms, named reasons.

Fresh emulator traces in the regime are the reference and the calibration; the same kind of
traces are flagged at about the calibration rate, and a distorted copy is flagged with a reason
naming the statistic that fired. Small (a few hundred traces): the detection rates themselves
are measured by ``bench/misspecification.py`` (docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from farm.defaults import Regime
from farm.prior import BoxPrior
from farm.simulate import simulate_theta
from inference.diagnostics.trace_check import (
    TRACE_STATISTICS,
    TraceDetector,
    trace_statistics,
)
from inference.evaluation.distortions import TRACE_DISTORTIONS, distort_randomly


def _in_regime(seed: int, n: int) -> np.ndarray:
    b = simulate_theta(BoxPrior().sample(n, seed=seed), seed=seed)
    return b.trace[Regime().contains(b.spike_count.astype(np.float64))]


@pytest.fixture(scope="module")
def detector_and_fresh() -> tuple[TraceDetector, np.ndarray]:
    ref, cal, fresh = _in_regime(1, 1500), _in_regime(2, 1000), _in_regime(3, 1000)
    return TraceDetector.fit(ref, cal, pre=100, stim_end=700), fresh


def test_statistics_have_one_column_each_and_only_spike_shape_may_be_missing():
    traces = _in_regime(4, 200)
    stats = trace_statistics(traces, 100, 700)
    shape = TRACE_STATISTICS.index("spike shape")
    assert stats.shape == (len(traces), len(TRACE_STATISTICS))
    assert np.isfinite(np.delete(stats, shape, axis=1)).all()
    # NaN only where the trace holds no complete spike: no evidence, never a reason.
    held = stats[:, TRACE_STATISTICS.index("samples held at reset")]
    assert np.array_equal(np.isnan(stats[:, shape]), held == 0)


def test_fresh_traces_are_flagged_near_the_calibration_rate(detector_and_fresh):
    detector, fresh = detector_and_fresh
    rate = float(np.mean(detector.score(fresh) > detector.threshold))
    assert rate <= 0.12, rate  # 5 % calibrated; ~180 traces leave a few percent of noise


@pytest.mark.parametrize("kind", ["interference", "stimulus_time"])
def test_a_distortion_is_flagged_with_the_statistic_named(detector_and_fresh, kind):
    detector, fresh = detector_and_fresh
    reasons = detector.reasons(distort_randomly(fresh, kind, seed=1))
    flagged = [r for r in reasons if r]
    assert len(flagged) >= 0.8 * len(reasons), (kind, len(flagged), len(reasons))
    assert all(
        r[0].startswith("trace unlike the training traces: ")
        and any(name in r[0] for name in TRACE_STATISTICS)
        for r in flagged
    )


def test_distortions_are_seeded_and_stay_adc_codes():
    traces = _in_regime(5, 100)
    for kind in TRACE_DISTORTIONS:
        a, b = distort_randomly(traces, kind, seed=3), distort_randomly(traces, kind, seed=3)
        assert np.array_equal(a, b) and a.dtype == np.int16 and a.shape == traces.shape
        assert a.min() >= 0 and a.max() <= 1023 and not np.array_equal(a, traces), kind
    with pytest.raises(ValueError, match="must be one of"):
        distort_randomly(traces, "gamma rays")


def test_save_and_load_round_trip(detector_and_fresh, tmp_path):
    detector, fresh = detector_and_fresh
    block = detector.save(tmp_path)
    again = TraceDetector.load(tmp_path, block)
    np.testing.assert_array_equal(again.score(fresh[:20]), detector.score(fresh[:20]))
    (tmp_path / block["file"]).write_bytes(b"edited")
    with pytest.raises(ValueError, match="checksum"):
        TraceDetector.load(tmp_path, block)
