"""Inference's error types, refining farm's: bad input (exit 2) vs a run that failed (exit 1)."""

from __future__ import annotations

from farm.errors import FarmInputError, FarmRuntimeError


class ArtifactError(FarmInputError):
    """Not the document asked for: a file missing, not JSON, of another kind or format version."""


class TrainingError(FarmRuntimeError):
    """Training could not run or failed in a worker; the message says why in one line."""


class RejectionBudgetExceeded(FarmInputError):
    """A restricted-prior posterior spent its proposal budget.

    The observation's posterior mass lies outside the restricted region.

    Args:
        budget: proposals drawn per observation before giving up (``max_rounds * num_samples``).
        max_rounds: the budget as a multiple of ``num_samples``.
        acceptance: the highest observed acceptance among the observations that ran out.
        num_observations: how many observations of the batch ran out.
    """

    def __init__(
        self, budget: int, max_rounds: int, acceptance: float, num_observations: int = 1
    ) -> None:
        self.budget = int(budget)
        self.max_rounds = int(max_rounds)
        self.acceptance = float(acceptance)
        self.num_observations = int(num_observations)
        super().__init__(
            "posterior mass lies almost entirely outside the restricted prior: "
            f"rejection budget of at most {self.max_rounds} x num_samples = {self.budget} "
            f"proposals spent with acceptance {self.acceptance:.2g} (< 1/{self.max_rounds}) "
            f"for {self.num_observations} observation(s); is the observation in the regime?"
        )


__all__ = ["ArtifactError", "RejectionBudgetExceeded", "TrainingError"]
