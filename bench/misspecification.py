"""Which misspecification score works: false alarms on fresh in-regime traces, detection of distorted ones.

Handcrafted summary space (what the handcrafted posterior's embedding z-scores). Reference =
in-regime rows of a training set, threshold = 95 % of in-regime held-out calibration rows, then
fresh in-regime traces (false-alarm rate), the same traces distorted, and the same parameters
simulated on chips the training never saw. Every method is calibrated the same way in the same run.

    python bench/misspecification.py [--n 20000]
"""

from __future__ import annotations

import argparse

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
    """Negative log-density of an 8-component Gaussian mixture (sklearn) on standardised summaries."""

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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
