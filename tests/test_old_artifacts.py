"""Artifacts written by earlier versions keep loading and give the same numbers.

The fixture was trained before the package was split into role-named subpackages (bss2-farm
0.1.0, hybrid features, flow matching, 1 epoch on 3,000 rows); ``expected.npz`` holds what that
code answered for two traces. Loading touches no pickle (weights_only), so a moved or renamed
module must not change what an old artifact means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference import load_posterior

FIXTURE = Path(__file__).parent / "fixtures" / "artifacts" / "npe-hybrid-fm-0.1.0"


def test_artifact_from_before_the_split_loads_and_answers_the_same() -> None:
    expected = np.load(FIXTURE / "expected.npz")
    posterior = load_posterior(FIXTURE)
    trace = expected["traces"][0]
    samples = posterior.sample(16, trace=trace, seed=0)
    # same weights, same seed, same single-threaded ops: equal to float32 rounding
    np.testing.assert_allclose(samples, expected["samples"], rtol=1e-5, atol=1e-3)
    log_prob = posterior.log_prob(expected["samples"][:4], trace=trace)
    np.testing.assert_allclose(log_prob, expected["log_prob"], rtol=1e-5, atol=1e-4)
    assert posterior.misspecification(trace=trace)["flagged"] is False
