"""The trained posterior as an sbi ``DirectPosterior``: sbi's sampling, densities, MAP, diagnostics.

Why: sbi users already have ``run_sbc``, ``pairplot`` and L-C2ST written against
``NeuralPosterior``. ``to_sbi`` wraps the artifact's embedding + flow in sbi 0.27's
``ConditionalDensityEstimator`` and its prior in a torch ``Distribution``, so every one of those
works on a `farm train npe` artifact. Its ``x`` is the raw MADC trace (T,) for every variant: the
handcrafted and hybrid ones summarise inside.
The prior's support is the region the artifact's prior allows (the box, or the box where the
restriction classifier accepts), so sbi's rejection and leakage correction do what the native
posterior does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sbi.inference.posteriors.direct_posterior import DirectPosterior
from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
from sbi.utils import BoxUniform
from torch import Tensor
from torch.distributions import Distribution, biject_to, constraints
from torch.distributions.transforms import Transform

from farm.prior import AnyPrior, RestrictedPrior


class RestrictedSupport(constraints.Constraint):
    """theta inside the box AND accepted by the restriction classifier; (…, 7) -> (…,) bool."""

    event_dim = 1

    def __init__(self, prior: RestrictedPrior) -> None:
        super().__init__()
        self.prior = prior
        self.box = constraints.independent(
            constraints.interval(
                torch.tensor(prior.low, dtype=torch.float32),
                torch.tensor(prior.high, dtype=torch.float32),
            ),
            1,
        )

    def check(self, value: Tensor) -> Tensor:
        flat = value.detach().reshape(-1, value.shape[-1]).cpu().numpy()
        return torch.from_numpy(np.asarray(self.prior.support(flat), dtype=bool)).reshape(
            value.shape[:-1]
        )


@biject_to.register(RestrictedSupport)
def _biject_restricted(constraint: RestrictedSupport) -> Transform:
    # sbi's MAP optimises in unconstrained space: the box's bijection is the right one (the
    # classifier's region is a subset; -inf potential outside it keeps the optimum inside).
    return biject_to(constraint.box)


class RestrictedBoxPrior(Distribution):
    """The restricted prior as a torch Distribution: uniform on the box where the classifier keeps.

    ``log_prob`` is the box's uniform log-density where the classifier accepts, else -inf (the
    region's own normaliser, log of the acceptance rate, is left out as sbi's restricted prior
    does); ``sample`` draws by rejection from the box, seeded from torch's generator.

    Args:
        prior: the farm's ``RestrictedPrior`` (numpy classifier, no torch).
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(self, prior: RestrictedPrior) -> None:
        self.prior = prior
        self._support = RestrictedSupport(prior)
        self._box = BoxUniform(
            torch.tensor(prior.low, dtype=torch.float32),
            torch.tensor(prior.high, dtype=torch.float32),
        )
        super().__init__(
            batch_shape=torch.Size(), event_shape=torch.Size([len(prior.low)]), validate_args=False
        )

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return self._support

    @property
    def mean(self) -> Tensor:  # for sbi's z-scoring transforms; the box's, as an approximation
        return self._box.mean

    @property
    def stddev(self) -> Tensor:
        return self._box.stddev

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # type: ignore[override]
        shape = torch.Size(sample_shape)
        n = max(1, math.prod(shape))
        seed = int(torch.randint(0, 2**62, ()).item())  # torch.manual_seed makes draws reproducible
        theta = self.prior.sample(n, seed=seed)
        return torch.from_numpy(np.ascontiguousarray(theta, dtype=np.float32)).reshape(*shape, -1)

    def log_prob(self, value: Tensor) -> Tensor:
        lp = self._box.log_prob(
            value.float().clamp(self._box.base_dist.low, self._box.base_dist.high)
        )
        return torch.where(self._support.check(value), lp, torch.full_like(lp, -math.inf))


def sbi_prior(prior: AnyPrior) -> Distribution:
    """The artifact's prior for sbi: ``BoxUniform`` for the box, else ``RestrictedBoxPrior``."""
    if isinstance(prior, RestrictedPrior):
        return RestrictedBoxPrior(prior)
    return BoxUniform(
        torch.tensor(prior.low, dtype=torch.float32), torch.tensor(prior.high, dtype=torch.float32)
    )


class NPEDensityEstimator(ConditionalDensityEstimator):
    """q(theta | x) of a `farm train npe` artifact in sbi's estimator interface; x = raw trace.

    Args:
        posterior: a loaded ``AmortizedPosterior`` (its model, standardisation and input checks
            are reused).

    ``log_prob`` returns float32 like sbi's own flows. The handcrafted and hybrid variants compute
    their statistics with numpy, so gradients do not flow back into x (sbi never needs them).
    """

    def __init__(self, posterior: Any) -> None:
        super().__init__(
            posterior.model,
            input_shape=torch.Size([len(posterior.parameter_names)]),
            condition_shape=torch.Size([posterior.trace_length + _fingerprint_size(posterior)]),
        )
        self._posterior = posterior

    @property
    def embedding_net(self) -> torch.nn.Module:
        return self.net.embedding

    def _context(self, condition: Tensor) -> Tensor:
        """(B, T) traces -> (B, D) embedding (handcrafted, hybrid: statistics computed inside).

        A circuit-aware posterior's x is [trace | flattened fingerprint] (B, T + R * T_ref).
        """
        c = condition.detach().reshape(-1, self.condition_shape[0])
        if c.shape[0] > 1 and bool((c == c[:1]).all()):
            # sbi's potential repeats x_o for every theta (MAP, leakage): embed it once.
            return self.net.embedding(self._inputs(c[:1])).expand(c.shape[0], -1)
        return self.net.embedding(self._inputs(c))

    def _inputs(self, c: Tensor) -> Tensor:
        x = c.cpu().numpy()
        post, t = self._posterior, self._posterior.trace_length
        if not post.circuit_aware:
            return post._inputs(x, None, batched=True)
        fingerprints = x[:, t:].reshape(-1, *post.fingerprint_shape)
        return post._inputs(x[:, :t], None, True, fingerprints)

    def log_prob(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
        """log q(theta | x): input (S, B, 7) or (B, 7), condition (B, T) -> (S, B)."""
        self._check_condition_shape(condition)
        theta = input if input.dim() == 3 else input.unsqueeze(0)
        s, b = theta.shape[0], theta.shape[1]
        context = self._context(condition)  # (Bc, D), Bc = 1 or b
        context = context.expand(b, -1) if context.shape[0] == 1 else context
        flat_ctx = context.unsqueeze(0).expand(s, -1, -1).reshape(s * b, -1)
        lp = self.net.log_prob(theta.reshape(s * b, -1).double(), flat_ctx)
        return lp.float().reshape(s, b)

    def loss(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
        """The NPE loss (negative log-density), per row; training runs in `farm train npe`."""
        return -self.log_prob(input, condition)[0]

    def sample(self, sample_shape: torch.Size, condition: Tensor, **kwargs: Any) -> Tensor:
        """theta ~ q(theta | x): (*sample_shape, B, 7) float32 LSB, inside the box."""
        self._check_condition_shape(condition)
        z = self.net.flow(self._context(condition)).sample(torch.Size(sample_shape))
        return self.net.theta_transform.inverse(z).float()


def _fingerprint_size(posterior: Any) -> int:
    shape = getattr(posterior, "fingerprint_shape", None)
    return 0 if shape is None else int(shape[0] * shape[1])


def to_sbi(posterior: Any) -> DirectPosterior:
    """An sbi ``DirectPosterior`` over the artifact's flow, embedding and prior.

    ``sample((n,), x=trace)``, ``log_prob``, ``set_default_x``, ``map``, ``run_sbc``, ``pairplot``
    and ``LC2ST`` work unchanged; x is the raw trace (T,) or (B, T) of MADC codes. For a
    circuit-aware posterior x is the trace followed by the circuit's flattened fingerprint,
    ``np.concatenate([trace, fingerprint.ravel()])``.

    Example:
        >>> post = to_sbi(load_posterior("artifacts/npe-sn"))
        >>> theta = post.sample((1000,), x=torch.as_tensor(trace, dtype=torch.float32))
    """
    return DirectPosterior(NPEDensityEstimator(posterior).eval(), sbi_prior(posterior.prior))


__all__ = ["NPEDensityEstimator", "RestrictedBoxPrior", "RestrictedSupport", "sbi_prior", "to_sbi"]
