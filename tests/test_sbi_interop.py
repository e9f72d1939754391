"""`to_sbi(posterior)`: the artifact as an sbi DirectPosterior, with the native posterior's numbers.

No training needed: the contract (same densities, same support) holds for any flow, so a small
untrained one stands in, fed real emulator traces.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from farm.defaults import PriorBox
from farm.prior import BoxPrior
from farm.simulate import simulate_theta
from inference.nets.nsf import FlowConfig
from inference.posteriors.amortized import AmortizedPosterior
from inference.posteriors.sbi_interop import RestrictedBoxPrior, to_sbi
from tests.untrained import half_box, untrained_posterior

# float32 flow outputs vs the native float64 densities: |log q| ~ 10-100, float32 keeps ~7 digits.
RTOL, ATOL = 1e-5, 1e-3


def _posterior(variant: str, prior, seed: int = 0) -> AmortizedPosterior:
    config = FlowConfig(
        variant=variant, transforms=2, hidden_features=16, embedding_features=8, cnn_channels=(4, 4)
    )
    return untrained_posterior(
        config, prior, feature_std=10.0, trace_mean=500.0, trace_std=100.0, seed=seed
    )


@pytest.fixture(scope="module")
def sims():
    theta = BoxPrior().sample(6, seed=3)
    return theta, simulate_theta(theta, seed=3).trace


@pytest.mark.parametrize("variant", ["summary-net", "handcrafted", "hybrid"])
def test_box_posterior_has_the_native_densities_and_samples_in_the_box(variant: str, sims) -> None:
    native = _posterior(variant, BoxPrior())
    post = to_sbi(native)
    theta, traces = sims
    x = torch.as_tensor(traces[0], dtype=torch.float32)
    cand = BoxPrior().sample(50, seed=9)
    lp = post.log_prob(torch.as_tensor(cand), x=x).numpy()
    np.testing.assert_allclose(lp, native.log_prob(cand, trace=traces[0]), rtol=RTOL, atol=ATOL)
    torch.manual_seed(0)
    s = post.sample((300,), x=x, show_progress_bars=False)
    assert s.shape == (300, 7) and bool(BoxPrior().support(s.numpy().astype(np.float64)).all())
    post.set_default_x(x)  # sbi's default observation
    np.testing.assert_allclose(post.log_prob(torch.as_tensor(cand)).numpy(), lp, rtol=1e-6)


def test_restricted_posterior_matches_native_and_respects_the_region(sims) -> None:
    prior = half_box()
    native = _posterior("handcrafted", prior)
    post = to_sbi(native)
    theta, traces = sims
    x = torch.as_tensor(traces[1], dtype=torch.float32)
    cand = BoxPrior().sample(200, seed=5)
    inside = prior.support(cand)
    assert 0 < inside.sum() < len(cand)
    lp = post.log_prob(torch.as_tensor(cand), x=x, norm_posterior=False).numpy()
    nat = native.log_prob(cand, trace=traces[1])
    assert np.all(np.isneginf(lp[~inside])) and np.all(np.isneginf(nat[~inside]))
    # Unnormalised, the two are the same flow density; the native one carries log(acceptance).
    acceptance = native._acceptance(native._inputs(traces[1], None, batched=False))
    np.testing.assert_allclose(lp[inside], nat[inside] + math.log(acceptance), rtol=RTOL, atol=ATOL)
    torch.manual_seed(1)
    s = post.sample((200,), x=x, show_progress_bars=False).numpy().astype(np.float64)
    assert prior.support(s).all()


def test_restricted_prior_is_a_torch_distribution_sbi_accepts() -> None:
    prior = half_box()
    dist = RestrictedBoxPrior(prior)
    torch.manual_seed(0)
    a = dist.sample((500,))
    torch.manual_seed(0)
    assert torch.equal(a, dist.sample((500,)))  # seeded by torch's generator
    assert a.shape == (500, 7) and bool(prior.support(a.numpy().astype(np.float64)).all())
    cand = torch.as_tensor(BoxPrior().sample(100, seed=2))
    lp = dist.log_prob(cand)
    box_lp = -float(np.sum(np.log(np.asarray(PriorBox().high) - np.asarray(PriorBox().low))))
    ok = prior.support(cand.numpy().astype(np.float64))
    np.testing.assert_allclose(lp[ok].numpy(), box_lp, rtol=1e-6)
    assert torch.all(torch.isneginf(lp[~ok]))


def test_map_sbc_and_batched_sampling_run_through_sbi(sims) -> None:
    from sbi.diagnostics import check_sbc, run_sbc

    native = _posterior("summary-net", BoxPrior())
    post = to_sbi(native)
    theta, traces = sims
    x = torch.as_tensor(traces, dtype=torch.float32)
    post.set_default_x(x[0])
    m = post.map(num_iter=5, num_init_samples=20, show_progress_bars=False)
    assert m.shape == (1, 7) and bool(BoxPrior().support(m.numpy().astype(np.float64)).all())
    ranks, dap = run_sbc(
        torch.as_tensor(theta), x, post, num_posterior_samples=30, show_progress_bar=False
    )
    assert ranks.shape == (6, 7) and dap.shape == (6, 7)
    assert set(
        check_sbc(
            ranks, torch.as_tensor(BoxPrior().sample(6, seed=1)), dap, num_posterior_samples=30
        )
    ) >= {"ks_pvals"}
    batched = post.sample_batched((40,), x=x, show_progress_bars=False)
    assert batched.shape == (40, 6, 7)
