"""1D convolutional summary network over the raw ADC trace, trained jointly with the flow.

Anchor: sbi's ``CNNEmbedding`` (``sbi/neural_nets/embedding_nets/cnn.py``), kept small for CPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from inference.defaults import CNN_STEMS

#: Layouts of the CNN's front end. ``pooled``: every block a stride-2 conv then a max-pool (the
#: original net; artifacts written before ``cnn_stem`` existed use it). ``patch``: non-overlapping
#: patches of ``PATCH`` samples, then blocks that merge neighbouring pairs, each a matrix multiply.
STEMS = CNN_STEMS
#: Samples per patch of the ``patch`` stem: 8 µs, shorter than the membrane time constants
#: (tens of µs); a reset is one large step of the difference channel, inside exactly one patch.
PATCH = 8


class PatchMerge(nn.Module):
    """(batch, T, C) -> (batch, ceil(T / k), C'): each step a linear map of ``k`` neighbours + ReLU.

    It is a Conv1d with kernel = stride = k, written as reshape + Linear: on a CPU torch's 1D conv
    backward is several times slower than the same multiply-adds as one GEMM.
    """

    def __init__(self, k: int, c_in: int, c_out: int) -> None:
        super().__init__()
        self.k = k
        self.linear = nn.Linear(k * c_in, c_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, c = h.shape
        pad = -t % self.k
        if pad:
            h = nn.functional.pad(h, (0, 0, 0, pad), mode="replicate")
        return torch.relu(self.linear(h.reshape(b, (t + pad) // self.k, self.k * c)))


class PairMax(nn.Module):
    """``nn.MaxPool1d(2)`` as a max over reshaped pairs: same values and gradient, a little cheaper.

    torch 2.13's CPU ``max_pool1d`` goes through ``max_pool2d_with_indices``, a quarter of the
    summary net's step in the profile; ``max(dim)`` costs ~25 % less forward, and picks the first
    maximum as the pool does, so the gradient lands on the same element (``tests/test_data_path.py``
    compares both bit for bit). With the ReLU moved after it (on half the steps), the embedding's
    forward + backward is 8-13 % cheaper (docs/performance.md).
    """

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = h.shape[-1] // 2
        return h[..., : 2 * n].unflatten(-1, (n, 2)).max(-1).values


class TraceCNN(nn.Module):
    """Trace (batch, T) ADC codes -> (batch, num_features) learned summary statistics.

    Args:
        trace_mean, trace_std: standardisation of codes (fitted on the training split): scalars
            for one sweep, or one per sweep for a multi-sweep protocol, whose flat (batch,
            sweeps * T) observation is read as sweeps stacked as input channels (2 per sweep).
        channels: output channels of each block (``pooled``: each block quarters the time axis;
            ``patch``: the first is the patch embedding's, each further block halves the time axis).
        kernel_size: conv kernel width in samples (1 µs each) of the ``pooled`` blocks.
        pool_bins: time bins kept by the final adaptive pooling (keeps coarse spike timing).
        num_features: size of the summary vector passed to the flow.
        stem: one of ``STEMS``; ``pooled`` is the default so configs without a stem rebuild the
            network their weights were trained in.
        input_pool: average every ``input_pool`` samples of the z-scored trace before the difference
            channel and the CNN (1 = none, as before the option existed). The membrane moves on tens
            of µs and a reset stays a single large step of the pooled trace, while every layer's
            cost falls by the same factor.

    The input has two channels, the z-scored trace and its first difference: a spike is a reset,
    a large negative step, which the difference channel makes a single-sample event (it lowers
    the validation loss).
    Why ``patch`` is cheaper: the ``pooled`` net runs 16 channels at 500 steps and 32 at 125
    through 1D convs (~0.8 M multiply-adds a trace, and a slow conv backward on CPUs); ``patch``
    reaches 125 steps in its first layer and does ~0.2 M multiply-adds as GEMMs
    (docs/performance.md has the measured speed ratio and held-out loss).
    """

    def __init__(
        self,
        trace_mean: float | list[float],
        trace_std: float | list[float],
        channels: tuple[int, ...] = (16, 32, 32),
        kernel_size: int = 7,
        pool_bins: int = 16,
        num_features: int = 32,
        stem: str = "pooled",
        input_pool: int = 1,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"cnn_stem={stem!r} must be one of {', '.join(STEMS)}")
        if stem == "patch" and not channels:
            raise ValueError(
                "cnn_channels=() is empty; the patch stem needs at least one conv width"
            )
        if isinstance(trace_mean, (list, tuple)):
            # several sweeps: one mean/std each, shape (sweeps, 1), broadcast over
            # (batch, sweeps, T)
            self.num_sweeps = len(trace_mean)
            self.register_buffer(
                "trace_mean", torch.tensor([float(v) for v in trace_mean]).reshape(-1, 1)
            )
            self.register_buffer(
                "trace_std", torch.tensor([float(v) for v in trace_std]).reshape(-1, 1)
            )
        else:
            self.num_sweeps = 1
            self.register_buffer("trace_mean", torch.tensor(float(trace_mean)))
            self.register_buffer("trace_std", torch.tensor(float(trace_std)))
        if input_pool < 1:
            raise ValueError(f"cnn_input_pool={input_pool} must be >= 1")
        self.stem = stem
        self.input_pool = input_pool
        layers: list[nn.Module] = []
        c_in = 2 * self.num_sweeps
        if stem == "pooled":
            for c in channels:
                # max-pool before the ReLU: the same values (ReLU is monotone) at half the ReLU's
                # cost; both carry no weights, so the state dict keeps its keys (conv.0, conv.3,
                # ...).
                layers += [
                    nn.Conv1d(c_in, c, kernel_size, stride=2, padding=kernel_size // 2),
                    PairMax(),
                    nn.ReLU(),
                ]
                c_in = c
        else:
            layers += [PatchMerge(PATCH, c_in, channels[0])]
            c_in = channels[0]
            for c in channels[1:]:
                layers += [PatchMerge(2, c_in, c)]
                c_in = c
            self.front = nn.Sequential(*layers)
            layers = []
        layers += [nn.AdaptiveAvgPool1d(pool_bins), nn.Flatten()]
        self.conv = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(c_in * pool_bins, 64), nn.ReLU(), nn.Linear(64, num_features)
        )
        self.num_features = num_features

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        if self.num_sweeps == 1:
            x = self._pooled((trace.float() - self.trace_mean) / self.trace_std)
            dx = torch.diff(x, dim=1, prepend=x[:, :1])
            if self.stem == "pooled":
                return self.head(self.conv(torch.stack([x, dx], dim=1)))
            h = self.front(
                torch.stack([x, dx], dim=-1)
            )  # channels last: (batch, T, 2) -> (batch, steps, C)
            return self.head(self.conv(h.transpose(1, 2)))
        # (batch, sweeps * T) -> (batch, sweeps, T): each sweep a channel, with its difference
        # channel
        x = self._pooled(
            (trace.float().reshape(trace.shape[0], self.num_sweeps, -1) - self.trace_mean)
            / self.trace_std
        )
        dx = torch.diff(x, dim=2, prepend=x[:, :, :1])
        xc = torch.cat([x, dx], dim=1)  # (batch, 2 * sweeps, T)
        if self.stem == "pooled":
            return self.head(self.conv(xc))
        return self.head(self.conv(self.front(xc.transpose(1, 2)).transpose(1, 2)))

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over non-overlapping windows of ``input_pool`` samples along the last axis.

        The end is padded by repetition.
        """
        k = self.input_pool
        if k == 1:
            return x
        pad = -x.shape[-1] % k
        if pad:
            x = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], pad)], dim=-1)
        return x.reshape(*x.shape[:-1], x.shape[-1] // k, k).mean(-1)


#: Largest |z-score| a statistic reaches the flow with: an input a thousand standard deviations
#: out says no more than one at the limit, and values near float32's range (1e38, which the HTTP
#: schema allows) made the spline flow return NaN draws.
Z_LIMIT = 1e3


class Standardize(nn.Module):
    """Handcrafted statistics (batch, F) -> z-scored (batch, F); train-split mean/std as buffers."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.num_features = len(mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) / self.std).clamp(-Z_LIMIT, Z_LIMIT)


class StatisticsAndTrace(nn.Module):
    """[statistics | trace] (batch, F + T) -> [z-scored statistics | trace summary] (batch, F + D).

    The ``hybrid`` embedding. Why: the statistics already state the spike count, timing and
    adaptation that a trace-only CNN must learn from 1000 samples at full rate; beside them a small
    net over the averaged trace only has to learn what they leave out (the sub-threshold shape), and
    costs a fraction of the summary net (docs/performance.md, "Hybrid summary network").
    """

    def __init__(self, statistics: Standardize, trace: TraceCNN) -> None:
        super().__init__()
        self.statistics = statistics
        self.trace = trace
        self.num_statistics = statistics.num_features
        self.num_features = statistics.num_features + trace.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.num_statistics
        return torch.cat([self.statistics(x[:, :f]), self.trace(x[:, f:])], dim=1)


class WithCircuit(nn.Module):
    """[observation input | circuit statistics] -> [observation summary | circuit summary].

    A circuit-aware posterior's embedding. The fingerprint statistics (``farm.circuits``) are
    z-scored, then an MLP turns them into ``CIRCUIT_FEATURES`` summaries, learnt with the flow:
    what a circuit's mismatch does to a trace is shared by every flow layer, so it is learnt once.
    """

    def __init__(self, observation: nn.Module, statistics: Standardize) -> None:
        super().__init__()
        self.observation = observation
        self.statistics = statistics
        self.num_statistics = statistics.num_features
        self.circuit = nn.Sequential(
            nn.Linear(statistics.num_features, CIRCUIT_HIDDEN),
            nn.ReLU(),
            nn.Linear(CIRCUIT_HIDDEN, CIRCUIT_FEATURES),
        )
        self.num_features = int(observation.num_features) + CIRCUIT_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.num_statistics
        return torch.cat(
            [self.observation(x[:, :-c]), self.circuit(self.statistics(x[:, -c:]))], dim=1
        )


#: Width of the circuit MLP's hidden layer and of its output (``WithCircuit``).
CIRCUIT_HIDDEN, CIRCUIT_FEATURES = 64, 32


def model_input(batch: Mapping[str, np.ndarray], fields: tuple[str, ...]) -> np.ndarray:
    """The embedding's input from a batch of store arrays: one field, or float32 [features | trace].

    float32 holds every ADC code (int16) exactly, so the hybrid's trace half is the trace itself.
    """
    if len(fields) == 1:
        return batch[fields[0]]
    return np.concatenate([np.asarray(batch[f], dtype=np.float32) for f in fields], axis=1)


def make_embedding(config: Any, stats: dict[str, Any]) -> nn.Module:
    """The embedding an estimator's config names (``FlowConfig`` or ``FlowMatchingConfig``).

    Both configs have the same embedding fields.

    z-scored named statistics for ``handcrafted``; the CNN with the config's summary-net fields for
    ``summary-net``; both side by side for ``hybrid``; with ``circuit_statistics`` the circuit's
    fingerprint statistics beside any of them (``WithCircuit``).
    """
    if getattr(config, "circuit_statistics", 0):
        return WithCircuit(
            _observation_embedding(config, stats),
            Standardize(stats["circuit_mean"], stats["circuit_std"]),
        )
    return _observation_embedding(config, stats)


def _observation_embedding(config: Any, stats: dict[str, Any]) -> nn.Module:
    fields = tuple(f for f in config.x_fields if f != "circuit")
    if fields == ("features",):
        return Standardize(stats["feature_mean"], stats["feature_std"])
    cnn = TraceCNN(
        stats["trace_mean"],
        stats["trace_std"],
        channels=config.cnn_channels,
        pool_bins=config.cnn_pool_bins,
        num_features=config.embedding_features,
        stem=config.cnn_stem,
        input_pool=config.cnn_input_pool,
    )
    if "features" in fields:
        return StatisticsAndTrace(Standardize(stats["feature_mean"], stats["feature_std"]), cnn)
    return cnn
