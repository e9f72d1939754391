"""The spline flow the NPE uses is zuko's NSF, only faster: same numbers, same weights.

Implementation equality is checked in float64 (both accept double tensors), where rounding
(eps 2.2e-16) stays far below any tolerance even after the amplification described below; a
float32 comparison would test the CPU's instruction set (FMA, AVX-512 reduction order) instead.
"""

from __future__ import annotations

import torch
import zuko
from zuko.transforms import MonotonicRQSTransform

from inference.nets.spline_flow import FastRQSTransform, spline_flow

# Float64 tolerance for every equality below. The worst amplification of rounding is the
# spline inverse: solving the bin's quadratic is conditioned by 1 / (smallest derivative), and
# the derivatives are floored at slope=1e-3, so an input error of a few eps grows at most
# ~1e3-fold: 1e3 * 100 operations * 2.2e-16 ~ 2e-11, still 50x below this.
TOL64 = 1e-9


def test_fast_spline_matches_zuko_forward_inverse_and_jacobian():
    g = torch.Generator().manual_seed(0)
    w, h, d = (torch.randn(500, 7, k, generator=g, dtype=torch.float64) for k in (8, 8, 7))
    x = 6 * torch.rand(500, 7, generator=g, dtype=torch.float64) - 3
    ours, theirs = FastRQSTransform(w, h, d), MonotonicRQSTransform(w, h, d)
    y, ladj = ours.call_and_ladj(x)
    y_ref, ladj_ref = theirs.call_and_ladj(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=TOL64, atol=TOL64)
    torch.testing.assert_close(ladj, ladj_ref, rtol=TOL64, atol=TOL64)
    torch.testing.assert_close(ours.inv(y_ref), theirs.inv(y_ref), rtol=TOL64, atol=TOL64)
    torch.testing.assert_close(ours.inv(y), x, rtol=TOL64, atol=TOL64)  # and it is an inverse


def test_float32_inverse_error_stays_within_its_condition_bound():
    """What training and serving run: float32. The inverse is only as exact as its conditioning.

    An error dy in y moves x by dy / f'(x). With the forward map's own float32 rounding dy of a
    few eps32 * |bound| (1.2e-7 * 5 per operation, ~10 operations: 6e-6), the round trip may be
    off by 6e-6 / f'(x); we allow exactly that (times 4), computed per element.
    """
    g = torch.Generator().manual_seed(0)
    w, h, d = (torch.randn(500, 7, k, generator=g) for k in (8, 8, 7))
    x = 6 * torch.rand(500, 7, generator=g) - 3
    t = FastRQSTransform(w, h, d)
    y, ladj = t.call_and_ladj(x)
    dy = 10 * torch.finfo(torch.float32).eps * 5.0
    bound = 4 * dy / ladj.exp()  # per element: ladj of an elementwise spline is log f'(x)
    err = (t.inv(y) - x).abs()
    assert (err <= bound + 1e-6).all(), f"worst excess {(err - bound).max().item():.3g}"


def test_flow_takes_nsf_weights_and_gives_the_same_densities_and_draws():
    torch.manual_seed(1)
    reference = zuko.flows.NSF(
        features=7, context=11, transforms=3, bins=8, hidden_features=(32, 32), passes=2
    ).double()
    flow = spline_flow(7, 11, transforms=3, bins=8, hidden_features=(32, 32), passes=2).double()
    assert flow.state_dict().keys() == reference.state_dict().keys()
    flow.load_state_dict(reference.state_dict())
    ctx = torch.randn(4, 11, dtype=torch.float64)
    theta = torch.randn(4, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            flow(ctx).log_prob(theta), reference(ctx).log_prob(theta), rtol=TOL64, atol=TOL64
        )
        torch.manual_seed(2)
        a = flow(ctx).sample((50,))
        torch.manual_seed(2)
        b = reference(ctx).sample((50,))
    assert a.dtype == torch.float64
    torch.testing.assert_close(
        a, b, rtol=TOL64, atol=TOL64
    )  # draws go through three spline inverses


def test_densities_from_the_sampling_pass_equal_a_separate_density_pass():
    """rsample_and_log_prob reuses the last inverse pass's conditioner for the Jacobian."""
    torch.manual_seed(3)
    for passes in (2, None):  # coupling and fully autoregressive
        flow = spline_flow(
            7, 5, transforms=4, bins=8, hidden_features=(32, 32), passes=passes
        ).double()
        ctx = torch.randn(3, 5, dtype=torch.float64)
        with torch.no_grad():
            z, lp = flow(ctx).rsample_and_log_prob((200,))
            torch.testing.assert_close(lp, flow(ctx).log_prob(z), rtol=TOL64, atol=TOL64)
