"""What a replica asks of the posterior per request or batch: draws, densities, misspecification.

Why a module of its own: these run on the replica's single worker thread and touch only the
loaded ``AmortizedPosterior``, never Serve or HTTP, so the service module keeps the routing and
the bounds, and this one the model work (including how a batch is split back into requests).
Every answer carries the observation's own misspecification check
(``AmortizedPosterior.misspecification``: one embedding plus a kNN over at most 5000 rows), so a
lab sees "this trace is unlike the training data" next to the posterior it should not trust.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

#: request field -> batched keyword of the posterior
BATCHED = {"trace": "traces", "features": "features", "fingerprint": "fingerprints"}

#: draws (n, 7), their log-densities (n,), requests that shared the pass, misspecification dict
Drawn = tuple[np.ndarray, np.ndarray, int, dict[str, Any]]


@dataclass(frozen=True)
class Job:
    """One unseeded /sample request waiting in the batcher."""

    num_samples: int
    observation: dict[str, np.ndarray]


def assess(posterior: Any, observation: dict[str, np.ndarray]) -> dict[str, Any]:
    """The check of ONE observation (``{"trace": (T,)}`` or ``{"features": (F,)}``, with
    ``"fingerprint": (R, T)`` for a circuit-aware posterior)."""
    return posterior.misspecification(**observation)


class Refused(ValueError):
    """The posterior can give no draws for this observation; ``misspecification`` says why.

    Why: an observation whose posterior lies almost entirely outside a restricted prior exhausts
    the rejection budget (``inference.errors.RejectionBudgetExceeded``). It is refused (HTTP 422,
    docs/http-api.md), and the refusal carries the same check an answer carries, flagged, with
    the budget as one more reason, so a client reads both through one object.

    Args:
        message: the budget error's one line.
        misspecification: the observation's check, ``flagged`` and with the reason appended.
    """

    def __init__(self, message: str, misspecification: dict[str, Any]) -> None:
        super().__init__(message)
        self.misspecification = misspecification


def refusing(posterior: Any, observation: dict[str, np.ndarray], call: Callable[[], T]) -> T:
    """``call()``, with a spent rejection budget turned into ``Refused`` for ``observation``."""
    from inference.diagnostics.misspecification import refused
    from inference.errors import RejectionBudgetExceeded

    try:
        return call()
    except RejectionBudgetExceeded as e:
        check = refused(assess(posterior, observation), e)
        raise Refused(str(e).splitlines()[0], check) from None


def draw_and_assess(
    posterior: Any, num_samples: int, seed: int | None, **batched: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Draws, log-densities and misspecification checks of B observations.

    ``traces=`` or ``features=`` (and ``fingerprints=`` (B, R, T) for a circuit-aware posterior);
    one summary and one embedding per observation serve both
    (``AmortizedPosterior.sample_and_assess``).
    """
    return posterior.sample_and_assess(num_samples, seed=seed, normalized=False, **batched)


def draw_one(
    posterior: Any, num_samples: int, observation: dict[str, np.ndarray], seed: int | None
) -> Drawn:
    """Draws for one request, their log-densities, batch size 1 and its misspecification check."""
    batched = {BATCHED[field]: value[None] for field, value in observation.items()}
    samples, log_prob, (check,) = refusing(
        posterior,
        observation,
        lambda: draw_and_assess(posterior, num_samples, seed, **batched),
    )
    return samples[0], log_prob[0], 1, check


def draw_batch(posterior: Any, jobs: list[Job]) -> list[Drawn | Exception]:
    """One flow pass per input kind (trace / features) for the whole batch; one answer per job.

    A circuit-aware posterior's jobs each carry a fingerprint; they are stacked beside the
    observations, row i belonging to job i.

    Densities come from the sampling pass and skip the restricted prior's leakage correction:
    /sample only uses them to pick the highest-density draw, and the correction is one constant
    per observation. The misspecification check is computed per request (batched, row i belongs
    to job i); a job whose draws fail is retried alone so the others are still answered.
    """
    results: list[Drawn | Exception] = [ValueError("not computed")] * len(jobs)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, job in enumerate(jobs):  # jobs of one replica share their fields; grouped to be sure
        groups.setdefault(tuple(sorted(job.observation)), []).append(i)
    for fields, idx in groups.items():
        n_max = max(jobs[i].num_samples for i in idx)
        try:
            stacked = {BATCHED[f]: np.stack([jobs[i].observation[f] for i in idx]) for f in fields}
            draws, log_prob, checks = draw_and_assess(posterior, n_max, None, **stacked)
            for row, i in enumerate(idx):
                n = jobs[i].num_samples
                results[i] = (
                    np.ascontiguousarray(draws[row, :n]),
                    log_prob[row, :n],
                    len(idx),
                    checks[row],
                )
        except ValueError:
            for i in idx:  # isolate the bad request so the others are still answered
                try:
                    results[i] = draw_one(posterior, jobs[i].num_samples, jobs[i].observation, None)
                except ValueError as e:
                    results[i] = e
    return results
