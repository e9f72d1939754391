"""Flow-matching posterior estimation (FMPE): a conditional vector field and a fixed-step ODE.

Why a second estimator: the NSF's density is limited by its spline layers; a flow-matching field
is an unconstrained network trained by regression (no Jacobian in the loss), which scales to
larger embeddings and often calibrates better (Wildberger et al. 2023, "Flow Matching for
Scalable Simulation-Based Inference"; sbi ships it as FMPE). Sampling and densities cost an ODE
solve instead of one pass.

Time runs from noise (t=0, z0 ~ N(0, I)) to data (t=1, z1 = standardised logit theta, the same
``BoxLogit`` space as the NSF, so draws stay inside the prior box). Path and target (Lipman et
al. 2023): z_t = (1 - (1 - s) t) z0 + t z1, u = z1 - (1 - s) z0, s = ``sigma_min``.

The field is built so its divergence is exact and cheap (no autograd, so it also runs under
``torch.inference_mode``): the (x, t) conditioning goes through a deep MLP whose output is shared
by every draw of an observation, and theta passes two FiLM-modulated layers plus a diagonal
linear term, whose Jacobian trace reduces to one H x H matrix-vector product per row.
log q(z1 | x) = log N(z0) - int_0^1 div v(z_t, t, x) dt (continuous change of variables).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from inference.defaults import FEATURES, INPUT_FIELDS
from inference.nets.embeddings import STEMS, make_embedding
from inference.nets.transforms import BoxLogit

ESTIMATOR = "flow-matching"
ODE_METHODS = ("midpoint", "rk4")
#: Most rows one ODE pass holds (bounds memory: ~4 kB per row at the default width).
_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True, slots=True)
class FlowMatchingConfig:
    """Architecture and ODE settings of the flow-matching estimator (stored in the manifest).

    Args:
        variant: ``handcrafted`` (z-scored named statistics), ``summary-net`` (1D CNN on the
            trace) or ``hybrid`` (the statistics beside a small CNN's summary of the trace).
        hidden_features: width of the two theta layers of the field.
        condition_features, condition_layers: width and depth of the (x, t) conditioning MLP.
        time_features: sinusoidal features of t (even).
        embedding_features, cnn_channels, cnn_pool_bins, cnn_stem, cnn_input_pool: the CNN
            summary net (as ``FlowConfig``).
        circuit_statistics: fingerprint statistics appended to the input (as ``FlowConfig``).
        sigma_min: width of the path's end at the data (Lipman et al. 2023).
        time_power: training times are drawn with density ~ t**time_power, weighting the data
            end where the field bends (Wildberger et al. 2023 use 1 / (1 + alpha), alpha = 4).
        time_samples: path points (t, z0) drawn per training row; the row's embedding is computed
            once and shared, so K > 1 lowers the loss's variance (the time draw dominates it) at
            little cost when the embedding is the expensive part (the summary network).
        ode_steps, ode_method: the fixed-step solver; the grid t_k = 1 - (1 - k/N)^2 is dense
            near the data, where a narrow posterior makes the field steep.
    """

    variant: str = "handcrafted"
    hidden_features: int = 64
    condition_features: int = 128
    condition_layers: int = 2
    time_features: int = 16
    embedding_features: int = 32
    cnn_channels: tuple[int, ...] = (16, 32, 32)
    cnn_pool_bins: int = 16
    cnn_stem: str = "pooled"
    cnn_input_pool: int = 1
    circuit_statistics: int = 0
    sigma_min: float = 1e-3
    time_power: float = 0.2
    time_samples: int = 1
    ode_steps: int = 6
    ode_method: str = "rk4"

    def __post_init__(self) -> None:
        if self.variant not in FEATURES:
            raise ValueError(f"features={self.variant!r} must be one of {', '.join(FEATURES)}")
        if self.cnn_stem not in STEMS:
            raise ValueError(f"cnn_stem={self.cnn_stem!r} must be one of {', '.join(STEMS)}")
        if self.ode_method not in ODE_METHODS:
            raise ValueError(
                f"ode_method={self.ode_method!r} must be one of {', '.join(ODE_METHODS)}"
            )
        for name in (
            "hidden_features",
            "condition_features",
            "condition_layers",
            "embedding_features",
            "cnn_pool_bins",
            "cnn_input_pool",
            "time_samples",
            "ode_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.time_features < 2 or self.time_features % 2:
            raise ValueError(f"time_features={self.time_features} must be even and >= 2")
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"sigma_min={self.sigma_min} outside [0, 1)")
        if not 0.0 <= self.time_power <= 10.0:
            raise ValueError(f"time_power={self.time_power} outside [0, 10]")

    @property
    def x_fields(self) -> tuple[str, ...]:
        """Arrays the embedding reads (``INPUT_FIELDS``), then ``circuit`` when circuit-aware."""
        return INPUT_FIELDS[self.variant] + (("circuit",) if self.circuit_statistics else ())

    def to_dict(self) -> dict[str, Any]:
        """Manifest form; ``estimator`` tells ``load_posterior`` which model to rebuild."""
        d = {"estimator": ESTIMATOR, **asdict(self)}
        if not d["circuit_statistics"]:  # marginal manifests as before the field existed
            del d["circuit_statistics"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlowMatchingConfig:
        d = {k: v for k, v in d.items() if k != "estimator"}
        if "cnn_channels" in d:
            d["cnn_channels"] = tuple(d["cnn_channels"])
        d.setdefault("cnn_stem", "pooled")
        d.setdefault("cnn_input_pool", 1)  # manifests written before the stem was a choice
        return cls(**d)


def _silu_and_slope(a: Tensor) -> tuple[Tensor, Tensor]:
    """SiLU(a) and its derivative, from one sigmoid."""
    s = torch.sigmoid(a)
    return a * s, s * (1 + a * (1 - s))


class VectorField(nn.Module):
    """v(z, t, x): (…, dim) -> (…, dim), with its exact divergence.

    v = W3 h2 + b(c) + lam(c) * z,
    h2 = h1 + silu(g2(c) * W2 h1 + b2(c)),
    h1 = silu(g1(c) * W1 z + b1(c)),
    where c = MLP(context, t). With e_i = silu'(a_i) * g_i and P = W1 @ W3 (H x H):
    div v = e1 . diag(P) + e2 . ((W2 * P^T) e1) + sum(lam).

    Args:
        dim: theta dimension; context_features: embedding size; the rest as ``FlowMatchingConfig``.
    """

    def __init__(
        self,
        dim: int,
        context_features: int,
        hidden_features: int,
        condition_features: int,
        condition_layers: int,
        time_features: int,
    ) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden_features
        self.register_buffer(
            "freqs", math.pi * torch.arange(1, time_features // 2 + 1, dtype=torch.float32)
        )
        self.context_in = nn.Linear(context_features, condition_features)
        self.time_in = nn.Linear(time_features, condition_features, bias=False)
        layers: list[nn.Module] = [nn.SiLU()]
        for _ in range(condition_layers - 1):
            layers += [nn.Linear(condition_features, condition_features), nn.SiLU()]
        layers.append(nn.Linear(condition_features, 4 * hidden_features + 2 * dim))
        self.condition_net = nn.Sequential(*layers)
        self.w1 = nn.Linear(dim, hidden_features, bias=False)
        self.w2 = nn.Linear(hidden_features, hidden_features, bias=False)
        self.w3 = nn.Linear(hidden_features, dim, bias=False)

    def context_term(self, context: Tensor) -> Tensor:
        """The part of the conditioning that does not depend on t: computed once per ODE solve."""
        return self.context_in(context)

    def modulation(self, context_term: Tensor, t: Tensor) -> tuple[Tensor, ...]:
        """(g1, b1, g2, b2, b3, lam) for (…, C) context terms at times t (a scalar or (…,))."""
        tf = t.to(context_term.dtype)[..., None] * self.freqs
        c = self.condition_net(context_term + self.time_in(torch.cat([tf.sin(), tf.cos()], dim=-1)))
        g1, b1, g2, b2 = c[..., : 4 * self.hidden].chunk(4, dim=-1)
        b3, lam = c[..., 4 * self.hidden :].chunk(2, dim=-1)
        return 1 + g1, b1, 1 + g2, b2, b3, lam

    def velocity(
        self, z: Tensor, mod: tuple[Tensor, ...], with_divergence: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """v at z (…, dim) given ``modulation`` (broadcastable); and div v (…,) if asked."""
        g1, b1, g2, b2, b3, lam = mod
        a1 = g1 * self.w1(z) + b1
        h1, d1 = _silu_and_slope(a1)
        a2 = g2 * self.w2(h1) + b2
        s2, d2 = _silu_and_slope(a2)
        v = self.w3(h1 + s2) + b3 + lam * z
        if not with_divergence:
            return v, None
        p = self.w1.weight @ self.w3.weight  # (H, H); P[j, k] = sum_i W1[j, i] W3[i, k]
        e1, e2 = d1 * g1, d2 * g2
        div = (
            e1 @ torch.diagonal(p) + (F.linear(e1, self.w2.weight * p.T) * e2).sum(-1) + lam.sum(-1)
        )
        return v, div

    def forward(self, z: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """v(z, t | context) for matching rows: z (n, dim), t (n,), context (n, D)."""
        return self.velocity(z, self.modulation(self.context_term(context), t))[0]


def time_grid(steps: int, reverse: bool = False) -> list[float]:
    """t_k = 1 - (1 - k/N)^2, k = 0..N: steps shrink towards the data end (t = 1)."""
    grid = [1.0 - (1.0 - k / steps) ** 2 for k in range(steps + 1)]
    return grid[::-1] if reverse else grid


class ODEPosterior:
    """q(z | x) for a batch of contexts: what a zuko flow returns for ``flow(context)``.

    Same methods and shapes as zuko's distributions, so ``AmortizedPosterior`` draws from either:
    ``sample(shape)`` -> (*shape, B, dim); ``log_prob(z)`` for z (…, B, dim) -> (…, B).

    Args:
        field: the trained vector field; context: (B, D) embeddings; steps, method: the solver.
    """

    def __init__(self, field: VectorField, context: Tensor, steps: int, method: str) -> None:
        self.field, self.steps, self.method = field, steps, method
        self.context_term = field.context_term(context)
        self.batch_shape = context.shape[:-1]
        self.event_shape = torch.Size([field.dim])

    def _solve(
        self, z: Tensor, grid: list[float], with_divergence: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Integrate dz/dt = v along ``grid`` for z (S, B', dim).

        Returns z at the grid's end and the integral of div v dt along it.
        """
        ctx = self.context_term
        if ctx.shape[0] != z.shape[1]:
            ctx = ctx.expand(z.shape[1], -1)
        ell = torch.zeros(z.shape[:-1], dtype=torch.float64) if with_divergence else None
        cache: dict[float, tuple[Tensor, ...]] = {}

        def f(zz: Tensor, t: float) -> tuple[Tensor, Tensor | None]:
            if (
                t not in cache
            ):  # every row shares t: the conditioning MLP runs once per (context, t)
                cache[t] = self.field.modulation(ctx, torch.tensor(t, dtype=zz.dtype))
            return self.field.velocity(zz, cache[t], with_divergence)

        for t0, t1 in zip(grid[:-1], grid[1:]):
            h = t1 - t0
            if self.method == "midpoint":
                k1, _ = f(z, t0)
                k2, dv = f(z + 0.5 * h * k1, t0 + 0.5 * h)
                z = z + h * k2
                inc = None if dv is None else h * dv
            else:  # classic RK4
                k1, d1 = f(z, t0)
                k2, d2 = f(z + 0.5 * h * k1, t0 + 0.5 * h)
                k3, d3 = f(z + 0.5 * h * k2, t0 + 0.5 * h)
                k4, d4 = f(z + h * k3, t1)
                z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
                inc = None if d1 is None else h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
            if ell is not None and inc is not None:
                ell = ell + inc.double()
        return z, ell

    def _chunked(
        self, z: Tensor, grid: list[float], with_divergence: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``_solve`` over (S, B, dim) in pieces of at most ``_CHUNK_ROWS`` rows."""
        s, b = z.shape[0], z.shape[1]
        if s * b <= _CHUNK_ROWS:
            return self._solve(z, grid, with_divergence)
        full = self.context_term
        outs, ells = [], []
        step_b = min(b, _CHUNK_ROWS)
        step_s = max(1, _CHUNK_ROWS // step_b)
        for b0 in range(0, b, step_b):
            self.context_term = full if full.shape[0] == 1 else full[b0 : b0 + step_b]
            row_z, row_ell = [], []
            for s0 in range(0, s, step_s):
                zz, ll = self._solve(z[s0 : s0 + step_s, b0 : b0 + step_b], grid, with_divergence)
                row_z.append(zz)
                row_ell.append(ll)
            outs.append(torch.cat(row_z, 0))
            row = torch.cat(row_ell, 0) if with_divergence else None
            ells.append(row)  # type: ignore[arg-type]
        self.context_term = full
        ell = torch.cat(ells, 1) if with_divergence else None  # type: ignore[arg-type]
        return torch.cat(outs, 1), ell

    def _base_log_prob(self, z0: Tensor) -> Tensor:
        return -0.5 * (z0.double() ** 2).sum(-1) - 0.5 * self.field.dim * math.log(2 * math.pi)

    def _draw(
        self, shape: tuple[int, ...] | torch.Size, with_log_prob: bool
    ) -> tuple[Tensor, Tensor | None]:
        shape = torch.Size(shape)
        b = self.batch_shape.numel()
        z0 = torch.randn(
            shape.numel(), b, self.field.dim, dtype=self.context_term.dtype
        )  # one RNG draw: chunking keeps seeds
        z1, ell = self._chunked(z0, time_grid(self.steps), with_log_prob)
        out = z1.reshape(*shape, *self.batch_shape, self.field.dim)
        if ell is None:
            return out, None
        return out, (self._base_log_prob(z0) - ell).reshape(*shape, *self.batch_shape)

    def rsample(self, shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        return self._draw(shape, False)[0]

    def sample(self, shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(shape)

    def rsample_and_log_prob(
        self, shape: tuple[int, ...] | torch.Size = ()
    ) -> tuple[Tensor, Tensor]:
        """Draws and log q from the same solve: the divergence is integrated along each path."""
        z, lp = self._draw(shape, True)
        assert lp is not None
        return z, lp

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z | x) by integrating back from data to noise; z (…, B, dim) -> (…, B) float64."""
        full = torch.broadcast_shapes(z.shape[:-1], self.batch_shape)
        b = self.batch_shape.numel()
        zz = (
            z.to(self.context_term.dtype)
            .expand(*full, self.field.dim)
            .reshape(-1, b, self.field.dim)
        )
        z0, ell = self._chunked(zz, time_grid(self.steps, reverse=True), True)
        assert ell is not None
        return (self._base_log_prob(z0) + ell).reshape(full)  # ell = int_1^0 div = -int_0^1 div


class ConditionalVectorField(nn.Module):
    """The lazy distribution: ``flow(context)`` -> ``ODEPosterior``, like a zuko ``Flow``."""

    def __init__(self, dim: int, context_features: int, config: FlowMatchingConfig) -> None:
        super().__init__()
        self.config = config
        self.net = VectorField(
            dim,
            context_features,
            config.hidden_features,
            config.condition_features,
            config.condition_layers,
            config.time_features,
        )

    def forward(self, context: Tensor) -> ODEPosterior:
        return ODEPosterior(self.net, context, self.config.ode_steps, self.config.ode_method)

    def loss(self, z1: Tensor, context: Tensor) -> Tensor:
        """Conditional flow-matching loss per row, (n,): mean squared error to the path velocity."""
        k = self.config.time_samples
        if k > 1:  # K path points per row: rows repeated, the mean over them is the row's loss
            rows = z1.shape[0]
            return self._loss(z1.repeat(k, 1), context.repeat(k, 1)).reshape(k, rows).mean(0)
        return self._loss(z1, context)

    def _loss(self, z1: Tensor, context: Tensor) -> Tensor:
        n = z1.shape[0]
        t = torch.rand(n, dtype=z1.dtype, device=z1.device) ** (
            1.0 / (1.0 + self.config.time_power)
        )  # density ~ t**power
        z0 = torch.randn_like(z1)
        s = self.config.sigma_min
        zt = (1 - (1 - s) * t[:, None]) * z0 + t[:, None] * z1
        target = z1 - (1 - s) * z0
        return ((self.net(zt, t, context) - target) ** 2).mean(-1)


class FlowMatchingModel(nn.Module):
    """Embedding + flow-matching field over standardised logit-space theta; NPEModel's interface.

    Args:
        config: the architecture.
        stats: standardisation from the data plan and the box ``low``/``high`` (as ``NPEModel``).
    """

    def __init__(self, config: FlowMatchingConfig, stats: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.theta_transform = BoxLogit(
            stats["low"], stats["high"], stats["theta_mean"], stats["theta_std"]
        )
        self.embedding = make_embedding(config, stats)
        self.flow = ConditionalVectorField(len(stats["low"]), self.embedding.num_features, config)

    @property
    def x_fields(self) -> tuple[str, ...]:
        return self.config.x_fields

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """Mean flow-matching loss of a batch: theta (n, 7) LSB, x (n, ·) features or traces."""
        return self.flow.loss(self.theta_transform(theta), self.embedding(x)).mean()

    def log_prob(self, theta: Tensor, context: Tensor) -> Tensor:
        """log q(theta | x) in LSB space, (n,) float64; context (n, D) or (1, D)."""
        z = self.theta_transform(theta)
        return self.flow(context).log_prob(z[:, None, :] if context.shape[0] == 1 else z).reshape(
            -1
        ) + self.theta_transform.log_abs_det_jacobian(theta)


__all__ = [
    "ESTIMATOR",
    "ODE_METHODS",
    "ConditionalVectorField",
    "FlowMatchingConfig",
    "FlowMatchingModel",
    "ODEPosterior",
    "VectorField",
    "time_grid",
]
