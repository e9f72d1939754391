"""Bounded theta <-> unbounded z: the logit of the box-normalised value, with its Jacobian.

Why: the flow lives in R^7, and mapping back through a sigmoid puts every sample strictly
inside the prior box (sbi does the same with ``biject_to(prior.support)``).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

#: Box-normalised values are clamped to [EPS, 1 - EPS] before the logit, so a theta exactly on a
#: bound (possible in float32) maps to a finite z.
EPS = 1e-6


def theta_to_unbounded_np(
    theta: NDArray[np.floating], low: NDArray[np.floating], high: NDArray[np.floating]
) -> NDArray[np.float64]:
    """z = logit((theta - low) / (high - low)), float64, (n, 7) -> (n, 7)."""
    u = np.clip((np.asarray(theta, dtype=np.float64) - low) / (high - low), EPS, 1.0 - EPS)
    return np.log(u) - np.log1p(-u)


class BoxLogit(torch.nn.Module):
    """theta (LSB, inside the box) <-> standardised unbounded z.

    Args:
        low, high: (7,) box bounds.
        z_mean, z_std: (7,) standardisation of logit space (train split).
    """

    def __init__(
        self, low: list[float], high: list[float], z_mean: list[float], z_std: list[float]
    ) -> None:
        super().__init__()
        self.register_buffer("low", torch.tensor(low, dtype=torch.float64))
        self.register_buffer("high", torch.tensor(high, dtype=torch.float64))
        self.register_buffer("z_mean", torch.tensor(z_mean, dtype=torch.float64))
        self.register_buffer("z_std", torch.tensor(z_std, dtype=torch.float64))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """theta -> standardised z (float32 for the flow)."""
        u = ((theta.double() - self.low) / (self.high - self.low)).clamp(EPS, 1.0 - EPS)
        return ((torch.logit(u) - self.z_mean) / self.z_std).float()

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """standardised z -> theta (float64), strictly inside the box."""
        u = torch.sigmoid(z.double() * self.z_std + self.z_mean)
        return torch.minimum(
            torch.maximum(self.low + u * (self.high - self.low), self.low), self.high
        )

    def log_abs_det_jacobian(self, theta: torch.Tensor) -> torch.Tensor:
        """log |dz/dtheta| summed over parameters, (n,) float64: log p(theta) = log q(z) + this."""
        u = ((theta.double() - self.low) / (self.high - self.low)).clamp(EPS, 1.0 - EPS)
        return (
            -torch.log(u)
            - torch.log1p(-u)
            - torch.log(self.high - self.low)
            - torch.log(self.z_std)
        ).sum(-1)
