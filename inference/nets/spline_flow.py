"""zuko's neural spline flow (NSF), built from two faster parts; same modules, weights and numbers.

Why a module of its own: the posterior service samples 1000 draws with their densities per
request, and two zuko 1.6 / torch 2.13 costs dominated that on one CPU thread:

* torch's CPU ``softmax`` over the 8-wide bin dimension runs ~5x slower than exp / sum,
  and it is called twice per transform per pass;
* drawing *with* densities (``rsample_and_log_prob``) ran the conditioner network once more per
  transform after the inverse, to get the Jacobian the last inverse pass had already built.

Both replacements compute the same arithmetic as zuko's (tests/test_flows.py compares them on
random inputs and on an ``NSF``'s own weights), so artifacts load into either.
Reference: Durkan et al. 2019, "Neural Spline Flows".
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
import zuko
from torch import Tensor
from zuko.distributions import DiagNormal
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.lazy import UnconditionalDistribution
from zuko.transforms import AutoregressiveTransform, MonotonicRQSTransform


def _softmax_last(x: Tensor) -> Tensor:
    e = (x - x.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)


class FastRQSTransform(MonotonicRQSTransform):
    """zuko 1.6's monotonic rational-quadratic spline with the bin softmax written out."""

    def __init__(
        self,
        widths: Tensor,
        heights: Tensor,
        derivatives: Tensor,
        bound: float = 5.0,
        slope: float = 1e-3,
        **kwargs,
    ) -> None:
        torch.distributions.Transform.__init__(self, **kwargs)
        widths = widths / (1 + abs(2 * widths / math.log(slope)))
        heights = heights / (1 + abs(2 * heights / math.log(slope)))
        derivatives = derivatives / (1 + abs(derivatives / math.log(slope)))
        widths = F.pad(_softmax_last(widths), (1, 0), value=0)
        heights = F.pad(_softmax_last(heights), (1, 0), value=0)
        self.horizontal = bound * (2 * torch.cumsum(widths, dim=-1) - 1)
        self.vertical = bound * (2 * torch.cumsum(heights, dim=-1) - 1)
        self.derivatives = torch.exp(F.pad(derivatives, (1, 1), value=0))


class _SolvedAutoregressiveTransform(AutoregressiveTransform):
    """An autoregressive transform whose inverse keeps the conditioner of its last pass.

    In pass p of the inverse, the parameters of generation p are computed from generations
    < p, already exact; the masked conditioner never reads the last generation. So the
    transform built in the last pass *is* ``meta(x)`` at the solution, and the Jacobian of
    the inverse needs no further network pass.
    """

    _solved: tuple[Tensor, Tensor, torch.distributions.Transform] | None = None

    def _inverse(self, y: Tensor) -> Tensor:
        x = torch.zeros_like(y)
        for _ in range(self.passes):
            step = self.meta(x)
            x = step.inv(y)
        self._solved = (x, y, step)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        solved = self._solved
        if solved is not None and solved[0] is x and solved[1] is y:
            return solved[2].log_abs_det_jacobian(x, y)
        return self.meta(x).log_abs_det_jacobian(x, y)


class _MaskedAutoregressive(MaskedAutoregressiveTransform):
    """zuko's lazy masked autoregressive transform, building ``_SolvedAutoregressiveTransform``."""

    def forward(self, c: Tensor | None = None) -> AutoregressiveTransform:
        return _SolvedAutoregressiveTransform(partial(self.meta, c), self.passes)


def spline_flow(
    features: int,
    context: int,
    transforms: int,
    bins: int,
    hidden_features: tuple[int, ...],
    passes: int | None,
    slope: float = 1e-3,
) -> zuko.flows.Flow:
    """What ``zuko.flows.NSF(features, context, transforms, bins=bins, passes=passes, ...)`` builds.

    Same orders (identity, reversed, alternating), base and state_dict keys as zuko's
    ``MAF.__init__`` with the NSF's spline; only the two parts above differ.
    """
    orders = [torch.arange(features), torch.flipud(torch.arange(features))]
    layers = [
        _MaskedAutoregressive(
            features=features,
            context=context,
            order=orders[i % 2],
            passes=passes,
            hidden_features=hidden_features,
            univariate=partial(FastRQSTransform, slope=slope),
            shapes=[(bins,), (bins,), (bins - 1,)],
        )
        for i in range(transforms)
    ]
    base = UnconditionalDistribution(
        DiagNormal, loc=torch.zeros(features), scale=torch.ones(features), buffer=True
    )
    return zuko.flows.Flow(layers, base)
