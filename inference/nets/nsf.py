"""The conditional density estimator q(theta | x): an embedding, then a zuko NSF in logit space.

Why zuko (not sbi's ``posterior_nn``): its flows are plain ``nn.Module``s whose forward takes the
context, so DistributedDataParallel under Ray Train wraps them without sbi's training loop, and
the weights save as a ``state_dict`` that loads with ``torch.load(weights_only=True)``.
Reference: Durkan et al. 2019, "Neural Spline Flows".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from inference.defaults import FEATURES, INPUT_FIELDS
from inference.nets.embeddings import STEMS, make_embedding
from inference.nets.spline_flow import spline_flow
from inference.nets.transforms import BoxLogit


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """Architecture of the posterior estimator (stored in the artifact manifest).

    Args:
        variant: ``handcrafted`` (z-scored named statistics), ``summary-net`` (1D CNN on the
            trace) or ``hybrid`` (the statistics beside a small CNN's summary of the trace).
        transforms: NSF coupling layers; hidden_features: width of each layer's MLP; bins: spline
            bins.
        embedding_features: summary size of the CNN; cnn_channels: its conv widths;
        cnn_pool_bins: time bins after its final pooling.
        cnn_stem: the CNN's front end (``inference.nets.embeddings.STEMS``); manifests without it
            were ``pooled``.
        cnn_input_pool: samples averaged before the CNN (``TraceCNN``'s ``input_pool``); manifests
            without it: 1.
        circuit_statistics: fingerprint statistics appended to the input (a circuit-aware
            posterior, ``farm train npe --circuits``); 0 = circuit-marginal.
        passes: zuko's coupling passes per transform; 2 = coupling layers (sampling costs 2 network
            passes per transform, ~4x faster than autoregressive), None = fully autoregressive (7).
    """

    variant: str = "handcrafted"
    transforms: int = 5
    hidden_features: int = 64
    hidden_layers: int = 2
    bins: int = 8
    embedding_features: int = 32
    cnn_channels: tuple[int, ...] = (16, 32, 32)
    cnn_pool_bins: int = 16
    cnn_stem: str = "pooled"
    cnn_input_pool: int = 1
    circuit_statistics: int = 0
    passes: int | None = 2

    def __post_init__(self) -> None:
        if self.passes is not None and not 2 <= self.passes <= 7:
            raise ValueError(f"passes={self.passes} must be None (autoregressive) or in [2, 7]")
        if self.variant not in FEATURES:
            raise ValueError(f"features={self.variant!r} must be one of {', '.join(FEATURES)}")
        if self.cnn_stem not in STEMS:
            raise ValueError(f"cnn_stem={self.cnn_stem!r} must be one of {', '.join(STEMS)}")
        for name in (
            "transforms",
            "hidden_features",
            "hidden_layers",
            "bins",
            "embedding_features",
            "cnn_pool_bins",
            "cnn_input_pool",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    @property
    def x_fields(self) -> tuple[str, ...]:
        """Arrays the embedding reads (``INPUT_FIELDS``), then ``circuit`` when circuit-aware."""
        return INPUT_FIELDS[self.variant] + (("circuit",) if self.circuit_statistics else ())

    def to_dict(self) -> dict:
        """Manifest form; ``circuit_statistics`` only when set (marginal manifests as before)."""
        return _without_marginal(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> FlowConfig:
        """From a manifest; artifacts written before ``passes`` existed are autoregressive."""
        d = dict(d)
        d["cnn_channels"] = tuple(d.get("cnn_channels", (16, 32, 32)))
        d.setdefault("passes", None)
        d.setdefault("cnn_stem", "pooled")
        d.setdefault("cnn_input_pool", 1)
        return cls(**d)


def _without_marginal(d: dict) -> dict:
    """A config dict without ``circuit_statistics`` when it is 0 (the key's absence means 0)."""
    if not d.get("circuit_statistics"):
        d.pop("circuit_statistics", None)
    return d


class NPEModel(nn.Module):
    """Embedding + conditional NSF over standardised logit-space theta.

    Args:
        config: the architecture.
        stats: standardisation from the data plan (``feature_mean``/``feature_std``,
            ``theta_mean``/``theta_std``, ``trace_mean``/``trace_std``) and the box
            ``low``/``high``.
    """

    def __init__(self, config: FlowConfig, stats: dict) -> None:
        super().__init__()
        self.config = config
        self.theta_transform = BoxLogit(
            stats["low"], stats["high"], stats["theta_mean"], stats["theta_std"]
        )
        self.embedding = make_embedding(config, stats)
        dim = len(stats["low"])
        self.flow = spline_flow(
            dim,
            self.embedding.num_features,
            config.transforms,
            config.bins,
            (config.hidden_features,) * config.hidden_layers,
            config.passes,
        )

    @property
    def x_fields(self) -> tuple[str, ...]:
        """Store arrays the embedding reads (``FlowConfig.x_fields``)."""
        return self.config.x_fields

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean negative log-density of standardised z (NPE loss; Jacobian constant per theta)."""
        return -self.flow(self.embedding(x)).log_prob(self.theta_transform(theta)).mean()

    def log_prob(self, theta: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """log q(theta | x) in LSB space, (n,) float64.

        Args:
            theta: (n, 7) LSB; context: ``embedding(x)``, (n, D) or (1, D) broadcast to every row.
        """
        z = self.theta_transform(theta)
        return self.flow(context.expand(theta.shape[0], -1)).log_prob(
            z
        ).double() + self.theta_transform.log_abs_det_jacobian(theta)
