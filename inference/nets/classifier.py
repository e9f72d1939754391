"""The restriction classifier theta -> logit P(in regime), a ReLU MLP exportable to numpy.

Anchor: sbi's ``RestrictionEstimator`` (``sbi/utils/restriction_estimator.py``). Its training loop
runs in-process and its default resnet has no numpy twin, so we keep its idea (a classifier on
theta, thresholded for few false negatives) with an MLP that farm.prior.RestrictedPrior evaluates.
Reference: Deistler et al. 2022, "Truncated proposals for scalable and hassle-free SBI".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    """Args: hidden_features: width of each hidden layer; hidden_layers: how many."""

    hidden_features: int = 128
    hidden_layers: int = 3

    def __post_init__(self) -> None:
        if self.hidden_features < 1 or self.hidden_layers < 1:
            raise ValueError(
                f"hidden_features={self.hidden_features}, hidden_layers={self.hidden_layers} "
                "must be >= 1"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class RegimeClassifier(nn.Module):
    """theta (batch, 7) LSB -> (batch,) logit of P(spike count in the regime).

    Args:
        config: widths; input_mean, input_std: (7,) z-scoring of theta (the box's uniform moments).
    """

    def __init__(
        self, config: ClassifierConfig, input_mean: list[float], input_std: list[float]
    ) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("input_mean", torch.tensor(input_mean, dtype=torch.float32))
        self.register_buffer("input_std", torch.tensor(input_std, dtype=torch.float32))
        layers: list[nn.Module] = []
        d = len(input_mean)
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(d, config.hidden_features), nn.ReLU()]
            d = config.hidden_features
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return self.net((theta.float() - self.input_mean) / self.input_std).squeeze(-1)

    def export_numpy(self) -> tuple[list[NDArray[np.float64]], list[NDArray[np.float64]]]:
        """Weights as farm.prior.RestrictedPrior wants them: x @ W + b per layer, W is (in, out)."""
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        weights = [m.weight.detach().double().numpy().T.copy() for m in linears]
        biases = [m.bias.detach().double().numpy().copy() for m in linears]
        return weights, biases


def box_moments(
    low: NDArray[np.floating], high: NDArray[np.floating]
) -> tuple[list[float], list[float]]:
    """Mean and std of a uniform box: the classifier's input z-scoring (fixed, not fitted)."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return ((low + high) / 2).tolist(), ((high - low) / np.sqrt(12.0)).tolist()
