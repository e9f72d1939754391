"""Inference's error types, refining farm's: bad input (exit 2) vs a run that failed (exit 1)."""

from __future__ import annotations

from farm.errors import FarmInputError, FarmRuntimeError


class ArtifactError(FarmInputError):
    """A file that is not the document asked for: missing, not JSON, another kind or format version."""


class TrainingError(FarmRuntimeError):
    """Training could not run or failed in a worker; the message says why in one line."""


__all__ = ["ArtifactError", "TrainingError"]
