"""A posterior over a restricted prior: rejection, leakage correction, densities from the sampling.

No training needed: the contract holds for any flow, so an untrained one (small, random) stands in,
with a restricted prior that keeps half the box (leak_i_bias below the box centre).
"""

from __future__ import annotations

import numpy as np
import pytest

from farm.defaults import PriorBox
from farm.features import FEATURE_NAMES
from farm.prior import RestrictedPrior
from inference.nets.nsf import FlowConfig
from inference.posteriors.amortized import AmortizedPosterior
from tests.untrained import half_box, untrained_posterior


def _posterior(prior: RestrictedPrior, seed: int = 0) -> AmortizedPosterior:
    return untrained_posterior(
        FlowConfig(variant="handcrafted", transforms=2, hidden_features=16), prior, seed=seed
    )


@pytest.fixture(scope="module")
def post() -> AmortizedPosterior:
    return _posterior(half_box())


def _features(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(FEATURE_NAMES)))


def test_every_draw_lies_in_the_restricted_region_and_counts_are_exact(post):
    x = _features(5)
    samples = post.sample_batched(700, features=x, seed=1)
    assert samples.shape == (5, 700, 7)
    assert post.prior.support(samples.reshape(-1, 7)).all()
    # Rejection keeps the flow's shape inside the region: the draws are not all piled on one spot.
    assert np.all(samples.reshape(-1, 7).std(axis=0) > 0)


def test_draws_with_densities_are_the_seeded_draws_and_carry_normalised_log_prob(post):
    x = _features(3, seed=2)
    theta, lp = post.sample_and_log_prob(400, features=x, seed=7)
    np.testing.assert_array_equal(theta, post.sample_batched(400, features=x, seed=7))
    for i in range(3):
        np.testing.assert_allclose(
            lp[i], post.log_prob(theta[i], features=x[i]), rtol=1e-4, atol=1e-3
        )
    raw, unnormalised = post.sample_and_log_prob(400, features=x, seed=7, normalized=False)
    shift = (
        lp - unnormalised
    )  # the leakage correction: one constant per observation, -log(acceptance)
    assert np.allclose(shift, shift[:, :1], atol=1e-9) and np.all(shift[:, 0] > np.log(1.2))


def test_log_prob_integrates_to_one_over_the_restricted_region(post):
    """Box importance sampling: vol(box) * E_uniform[q(theta | x)] = 1 only with the correction."""
    box = PriorBox()
    low, high = np.asarray(box.low), np.asarray(box.high)
    rng = np.random.default_rng(3)
    theta = low + (high - low) * rng.random((200_000, 7))
    x = _features(1, seed=4)[0]
    log_q = post.log_prob(theta, features=x)
    integral = float(
        np.exp(np.logaddexp.reduce(log_q) - np.log(len(theta)) + np.sum(np.log(high - low)))
    )
    assert 0.9 < integral < 1.1, (
        integral
    )  # without the correction it would be the acceptance (~0.5)


def test_a_region_the_posterior_cannot_reach_is_a_clear_error():
    unreachable = _posterior(
        half_box(threshold=1.0 - 1e-12)
    )  # first parameter within 1e-12 of the box's low edge
    with pytest.raises(ValueError, match="outside the restricted prior"):
        unreachable.sample(5, features=_features(1)[0], seed=0)
