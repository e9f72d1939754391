"""What every posterior shares: the interface callers use and the checks of its inputs.

Anchor: sbi's ``base_posterior.py`` (``NeuralPosterior``), which ``DirectPosterior`` and
``EnsemblePosterior`` both build on. Here ``AmortizedPosterior`` (one flow) and
``EnsemblePosterior`` (a mixture of them) implement this class and never import each other;
``inference.posteriors.loader`` is the one place that knows both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: Most draws one call may ask for (the Serve app and the command line refuse more).
MAX_SAMPLES = 1_000_000


class BasePosterior(ABC):
    """q(theta | x) over numpy: the interface `farm evaluate` and the Serve app rely on.

    Attributes every implementation sets: ``prior``, ``variant``, ``estimator``,
    ``parameter_names``, ``feature_names``, ``protocol``, ``chip_model``, ``trace_length``,
    ``accepts_features``, ``regime``, ``detector``, ``fingerprint`` and ``manifest``.
    """

    manifest: dict[str, Any]
    fingerprint: str
    variant: str
    estimator: str
    parameter_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    trace_length: int
    accepts_features: bool
    #: trained with `--circuits`: every call takes the observed circuit's ``fingerprint=``
    circuit_aware: bool = False
    circuit_references: Any = None
    fingerprint_shape: tuple[int, int] | None = None

    @abstractmethod
    def sample(
        self, num_samples: int, *, trace: Any = None, features: Any = None, seed: int | None = None
    ) -> NDArray[np.float32]:
        """(num_samples, 7) float32 draws of theta for ONE observation; same seed, same draws."""

    @abstractmethod
    def sample_batched(
        self, num_samples: int, *, traces: Any = None, features: Any = None, seed: int | None = None
    ) -> NDArray[np.float32]:
        """(B, num_samples, 7) float32 draws for B observations."""

    @abstractmethod
    def sample_and_log_prob(
        self,
        num_samples: int,
        *,
        traces: Any = None,
        features: Any = None,
        seed: int | None = None,
        normalized: bool = True,
    ) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
        """Draws for B observations and their log-densities, ((B, n, 7), (B, n))."""

    @abstractmethod
    def sample_and_assess(
        self,
        num_samples: int,
        *,
        traces: Any = None,
        features: Any = None,
        seed: int | None = None,
        normalized: bool = True,
    ) -> tuple[NDArray[np.float32], NDArray[np.float64], list[dict[str, Any]]]:
        """``sample_and_log_prob`` and ``misspecification_batched``: a served /sample answer."""

    @abstractmethod
    def log_prob(
        self, theta: Any, *, trace: Any = None, features: Any = None
    ) -> NDArray[np.float64]:
        """(m,) float64 log q(theta | x) for ONE observation; -inf outside the prior support."""

    @abstractmethod
    def map(
        self, *, trace: Any = None, features: Any = None, num_samples: int = 1000
    ) -> NDArray[np.float32]:
        """(7,) float32: the maximum of q(theta | x) inside the prior support."""

    @abstractmethod
    def misspecification(self, *, trace: Any = None, features: Any = None) -> dict[str, Any]:
        """How unlike the training data ONE observation is: ``{score, threshold, flagged, ...}``."""

    @abstractmethod
    def misspecification_batched(
        self, *, traces: Any = None, features: Any = None
    ) -> list[dict[str, Any]]:
        """``misspecification`` for B observations."""


def _numeric(value: Any, name: str) -> NDArray[np.float64]:
    """``value`` as a finite, non-empty float64 array, or a one-line ValueError naming it."""
    a = np.asarray(value)
    if (
        a.dtype == object
        or not (np.issubdtype(a.dtype, np.number))
        or np.issubdtype(a.dtype, np.complexfloating)
    ):
        raise ValueError(f"{name} has dtype {a.dtype}; it must be numeric")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a.astype(np.float64, copy=False)


def _count(num_samples: Any) -> int:
    """``num_samples`` as an int in [1, MAX_SAMPLES], or a one-line ValueError."""
    if (
        isinstance(num_samples, bool)
        or not float(num_samples).is_integer()
        or not 1 <= int(num_samples) <= MAX_SAMPLES
    ):
        raise ValueError(f"num_samples={num_samples} outside [1, {MAX_SAMPLES}]")
    return int(num_samples)


__all__ = ["MAX_SAMPLES", "BasePosterior"]
