"""1D convolutional summary network over the raw ADC trace, trained jointly with the flow.

Anchor: sbi's ``CNNEmbedding`` (``sbi/neural_nets/embedding_nets/cnn.py``), kept small for CPUs.
"""

from __future__ import annotations

import torch
from torch import nn


class TraceCNN(nn.Module):
    """Trace (batch, T) ADC codes -> (batch, num_features) learned summary statistics.

    Args:
        trace_mean, trace_std: scalar standardisation of codes (fitted on the training split).
        channels: output channels of each strided conv block; each block halves the time axis twice.
        kernel_size: conv kernel width in samples (1 µs each).
        pool_bins: time bins kept by the final adaptive pooling (keeps coarse spike timing).
        num_features: size of the summary vector passed to the flow.
    """

    def __init__(self, trace_mean: float, trace_std: float, channels: tuple[int, ...] = (8, 16, 32), kernel_size: int = 7, pool_bins: int = 8, num_features: int = 32) -> None:
        super().__init__()
        self.register_buffer("trace_mean", torch.tensor(float(trace_mean)))
        self.register_buffer("trace_std", torch.tensor(float(trace_std)))
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv1d(c_in, c, kernel_size, stride=2, padding=kernel_size // 2), nn.ReLU(), nn.MaxPool1d(2)]
            c_in = c
        layers += [nn.AdaptiveAvgPool1d(pool_bins), nn.Flatten()]
        self.conv = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in * pool_bins, 64), nn.ReLU(), nn.Linear(64, num_features))
        self.num_features = num_features

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        x = (trace.float() - self.trace_mean) / self.trace_std
        return self.head(self.conv(x.unsqueeze(1)))


class Standardize(nn.Module):
    """Handcrafted statistics (batch, F) -> z-scored (batch, F), with train-split mean/std as buffers."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.num_features = len(mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std
