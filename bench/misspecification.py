"""Which misspecification score works: false alarms on fresh traces, detection of distorted ones.

Handcrafted summary space (what the handcrafted posterior's embedding z-scores). Reference =
in-regime rows of a training set, threshold = 95 % of in-regime held-out calibration rows, then
fresh in-regime traces (false-alarm rate), the same traces distorted, and the same parameters
simulated on chips the training never saw. Every method is calibrated the same way in the same run.

    python bench/misspecification.py [--n 20000]

Trace space (issue 28): the summary check of a trained posterior beside the trace-space check
(``inference.diagnostics.trace_check.TraceDetector``), both calibrated together on held-out
traces to a 5 % false-alarm rate, on the distortion classes of ``TRACE_DISTORTIONS`` and a trace
from another neuron model:

    python bench/misspecification.py --posterior /tmp/base/pre/npe-hc \
        --train /tmp/base/pre/s.zarr --test /tmp/e/test.zarr
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from farm.defaults import PriorBox, Regime
from farm.features import summarize
from farm.prior import BoxPrior
from farm.simulate import simulate_theta
from inference.diagnostics.misspecification import KNNDetector, trace_reasons
from inference.evaluation.distortions import DISTORTIONS, OTHER_CHIPS, distort, other_chip


def in_regime(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    theta = BoxPrior(PriorBox()).sample_indexed(seed, np.arange(n))
    b = simulate_theta(theta, seed=seed)
    keep = Regime().contains(b.features[:, 0])
    return theta[keep], b.trace[keep], b.features[keep]


class Gaussian:
    """Mahalanobis distance to one Gaussian fitted on the reference (the simplest density test)."""

    def __init__(self, ref: np.ndarray, cal: np.ndarray, q: float = 0.95) -> None:
        self.mean = ref.mean(0)
        self.prec = np.linalg.pinv(np.cov(ref.T.astype(np.float64)))
        self.threshold = float(np.quantile(self.score(cal), q))

    def score(self, x: np.ndarray) -> np.ndarray:
        d = x - self.mean
        return np.einsum("ij,jk,ik->i", d, self.prec, d)


class Mixture:
    """Negative log-density of a sklearn 8-component Gaussian mixture on standardised summaries."""

    def __init__(self, ref: np.ndarray, cal: np.ndarray, q: float = 0.95) -> None:
        from sklearn.mixture import GaussianMixture

        self.mean, self.std = ref.mean(0), ref.std(0) + 1e-9
        self.gmm = GaussianMixture(8, covariance_type="full", reg_covar=1e-3, random_state=0).fit(
            (ref - self.mean) / self.std
        )
        self.threshold = float(np.quantile(self.score(cal), q))

    def score(self, x: np.ndarray) -> np.ndarray:
        return -self.gmm.score_samples((x - self.mean) / self.std)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--n",
        type=int,
        default=20000,
        help="box-prior simulations for the reference set (about 19 %% in regime)",
    )
    ap.add_argument("--posterior", help="trained artifact: run the trace-space comparison")
    ap.add_argument("--train", help="its training store (reference traces)")
    ap.add_argument("--test", help="held-out store: calibration and test traces")
    args = ap.parse_args()
    if args.posterior:
        trace_space(args.posterior, args.train, args.test)
        return
    _, _, f_ref = in_regime(1, args.n)
    _, _, f_cal = in_regime(2, args.n // 2)
    theta, trace, f_test = in_regime(3, args.n // 2)
    methods = {f"knn k={k}": KNNDetector.fit(f_ref, f_cal, k=k) for k in (1, 10, 30)}
    methods["gaussian (Mahalanobis)"] = Gaussian(f_ref, f_cal)
    methods["gmm-8 (neg. log-density)"] = Mixture(f_ref, f_cal)
    cases: dict[str, np.ndarray] = {"in-distribution (fresh)": trace}
    cases |= {f"distorted: {d}": distort(trace, d) for d in DISTORTIONS}
    cases |= {
        f"chip: {c}": simulate_theta(theta, seed=4, chip_model=other_chip(c)).trace
        for c in OTHER_CHIPS
    }
    print(f"reference {len(f_ref)} in-regime rows, calibration {len(f_cal)}, test {len(f_test)}")
    print(
        f"{'case':28s} "
        + " ".join(f"{m:>24s}" for m in methods)
        + f" {'knn k=10 + trace checks':>24s}"
    )
    for name, t in cases.items():
        f = summarize(t)
        rates = [float(np.mean(m.score(f) > m.threshold)) for m in methods.values()]
        reasons = trace_reasons(t, f[:, 0], Regime(), 1023)
        total = float(
            np.mean(
                (methods["knn k=10"].score(f) > methods["knn k=10"].threshold)
                | np.array([bool(r) for r in reasons])
            )
        )
        print(f"{name:28s} " + " ".join(f"{r:24.3f}" for r in rates) + f" {total:24.3f}")


def _in_regime_store(path: str) -> tuple[np.ndarray, np.ndarray]:
    import xarray as xr

    ds = xr.open_zarr(path)
    keep = Regime().contains(np.asarray(ds["spike_count"].values, dtype=np.float64))
    return np.asarray(ds["theta"].values)[keep], np.asarray(ds["trace"].values)[keep]


def trace_space(posterior_dir: str, train: str, test: str, target: float = 0.05) -> None:
    """Detection per distortion class and false alarms: summary check alone vs with trace check.

    Calibration: the held-out store's in-regime traces are split in two halves (even / odd
    rows). Both checks are thresholded at one quantile of their scores on the first half, the
    smallest that keeps the union's false alarms (with the regime, flat and rail reasons) at
    ``target``; the second half measures false alarms and detection. "summary (95 %)" is the
    artifact's check as served today.
    """
    from inference import load_posterior
    from inference.diagnostics.trace_check import TraceDetector
    from inference.evaluation.distortions import (
        OTHER_MODEL,
        TRACE_DISTORTIONS,
        distort_randomly,
        other_model_chip,
    )

    post = load_posterior(posterior_dir)
    pre = int(round(post.protocol.t_pre_us / post.protocol.sample_period_us))
    stim_end = pre + int(round(post.protocol.t_stim_us / post.protocol.sample_period_us))
    _, ref = _in_regime_store(train)
    theta, held = _in_regime_store(test)
    cal, fresh, theta_fresh = held[0::2], held[1::2], theta[1::2]

    def summary_check(traces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """kNN scores and whether a regime, flat or rail reason fired, per trace."""
        checks = post.misspecification_batched(traces=traces)
        score = np.array([c["score"] for c in checks])
        # The regime, flat and rail reasons only: an artifact's own summary and trace checks are
        # thresholded here, on this run's calibration half.
        checked = ("summary unlike", "trace unlike")
        own = np.array([any(not r.startswith(checked) for r in c["reasons"]) for c in checks])
        return score, own

    detector = TraceDetector.fit(ref, cal, pre, stim_end)
    s_cal, own_cal = summary_check(cal)
    t_cal = detector.calibration_scores
    # One quantile for both checks, the smallest whose union keeps `target` on calibration.
    for q in np.linspace(0.95, 0.999, 99):
        s_threshold, t_threshold = np.quantile(s_cal, q), np.quantile(t_cal, q)
        if np.mean((s_cal > s_threshold) | own_cal | (t_cal > t_threshold)) <= target:
            detector = detector.with_quantile(float(q))
            break
    print(
        f"reference {len(ref)} in-regime training traces, calibration {len(cal)}, "
        f"test {len(fresh)}; thresholds at the {detector.quantile:.1%} quantile of calibration: "
        f"summary {s_threshold:.3g}, trace {detector.threshold:.3g}"
    )
    cases = {"in-regime held-out (false alarms)": fresh}
    cases |= {d: distort_randomly(fresh, d, seed=28) for d in TRACE_DISTORTIONS}
    cases[f"other model: {OTHER_MODEL}"] = simulate_theta(
        theta_fresh, seed=28, chip_model=other_model_chip(post.chip_model)
    ).trace
    started = time.perf_counter()
    for row in fresh[:50]:  # one trace per call, as a served request scores it
        detector.score(row[None, :])
    per_trace_ms = (time.perf_counter() - started) / min(50, len(fresh)) * 1e3
    print(f"trace check: {per_trace_ms:.2f} ms per trace, one trace per call")
    print(f"{'case':36s} {'summary (95 %)':>15s} {'summary+trace':>14s} {'trace only':>12s}")
    for name, traces in cases.items():
        checks = post.misspecification_batched(traces=traces)
        today = np.array([c["flagged"] for c in checks])
        score, own = summary_check(traces)
        by_summary = (score > s_threshold) | own
        by_trace = detector.score(traces) > detector.threshold
        print(
            f"{name:36s} {today.mean():15.3f} {(by_summary | by_trace).mean():14.3f} "
            f"{(by_trace & ~by_summary).mean():12.3f}"
        )


if __name__ == "__main__":
    main()
