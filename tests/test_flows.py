"""The spline flow the NPE uses is zuko's NSF, only faster: same numbers, same weights."""

from __future__ import annotations

import torch
import zuko
from zuko.transforms import MonotonicRQSTransform

from inference.spline_flow import FastRQSTransform, spline_flow


def test_fast_spline_matches_zuko_forward_inverse_and_jacobian():
    g = torch.Generator().manual_seed(0)
    w, h, d = (torch.randn(500, 7, k, generator=g) for k in (8, 8, 7))
    x = 6 * torch.rand(500, 7, generator=g) - 3
    ours, theirs = FastRQSTransform(w, h, d), MonotonicRQSTransform(w, h, d)
    y, ladj = ours.call_and_ladj(x)
    y_ref, ladj_ref = theirs.call_and_ladj(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ladj, ladj_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.inv(y_ref), theirs.inv(y_ref), rtol=1e-4, atol=1e-4)


def test_flow_takes_nsf_weights_and_gives_the_same_densities_and_draws():
    torch.manual_seed(1)
    reference = zuko.flows.NSF(features=7, context=11, transforms=3, bins=8, hidden_features=(32, 32), passes=2)
    flow = spline_flow(7, 11, transforms=3, bins=8, hidden_features=(32, 32), passes=2)
    assert flow.state_dict().keys() == reference.state_dict().keys()
    flow.load_state_dict(reference.state_dict())
    ctx = torch.randn(4, 11)
    theta = torch.randn(4, 7)
    with torch.no_grad():
        torch.testing.assert_close(flow(ctx).log_prob(theta), reference(ctx).log_prob(theta), rtol=1e-4, atol=1e-4)
        torch.manual_seed(2)
        a = flow(ctx).sample((50,))
        torch.manual_seed(2)
        b = reference(ctx).sample((50,))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_densities_from_the_sampling_pass_equal_a_separate_density_pass():
    """rsample_and_log_prob reuses the last inverse pass's conditioner for the Jacobian."""
    torch.manual_seed(3)
    for passes in (2, None):  # coupling and fully autoregressive
        flow = spline_flow(7, 5, transforms=4, bins=8, hidden_features=(32, 32), passes=passes)
        ctx = torch.randn(3, 5)
        with torch.no_grad():
            z, lp = flow(ctx).rsample_and_log_prob((200,))
            torch.testing.assert_close(lp, flow(ctx).log_prob(z), rtol=1e-4, atol=1e-3)
