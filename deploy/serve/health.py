"""Is a replica's model still answering? The probe behind ``check_health`` and ``GET /health``.

Why a module of its own: the check must be a real model call (a 1-draw probe on the replica's
worker thread), judged the same way in the constructor (a model that cannot answer fails there,
not at the first user) and every ``health_check_period_s``; keeping it apart from the routes lets
it be exercised on a real posterior without a Serve replica around it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: A flat mid-range trace: any posterior of the protocol must turn it into finite draws (or refuse
#: it as input).
PROBE_CODE = 512


class ModelUnhealthy(RuntimeError):
    """The model could not answer the probe (a raise other than a rejection, non-finite draws)."""


def probe(posterior: Any, fingerprint: NDArray[np.int16] | None = None) -> None:
    """One draw for a flat trace; a ValueError (out of the restricted region) is still an answer.

    Args:
        posterior: the loaded posterior.
        fingerprint: for a circuit-aware posterior, the (R, T) fingerprint to probe with (a
            recorded circuit's, where the service has a circuits store); None: flat codes.

    Raises:
        ModelUnhealthy: the draw or its density is NaN/inf (e.g. weights that went non-finite).
    """
    trace = np.full((1, posterior.trace_length), PROBE_CODE, dtype=np.int16)
    circuit: dict[str, NDArray[np.int16]] = {}
    if getattr(posterior, "circuit_aware", False):  # it answers nothing without a fingerprint
        shape = tuple(posterior.fingerprint_shape)
        codes = np.full(shape, PROBE_CODE, dtype=np.int16) if fingerprint is None else fingerprint
        circuit["fingerprints"] = np.asarray(codes, dtype=np.int16)[None]
    try:
        samples, log_prob = posterior.sample_and_log_prob(
            1, seed=0, normalized=False, traces=trace, **circuit
        )
    except ValueError:
        return
    if not (np.all(np.isfinite(samples)) and np.all(np.isfinite(log_prob))):
        raise ModelUnhealthy(
            f"probe draw is not finite (theta {np.asarray(samples).ravel()[:3].tolist()}..., "
            f"log_prob {np.asarray(log_prob).ravel().tolist()})"
        )


class HealthMonitor:
    """Tracks the replica's worker thread and runs the probe between requests.

    Args:
        posterior: the loaded posterior.
        executor: the replica's one worker thread (the probe queues behind model calls there).
        request_timeout_s: a model call running longer than twice this marks the replica unhealthy.
        fingerprint: the probe's fingerprint for a circuit-aware posterior (``probe``).
    """

    def __init__(
        self,
        posterior: Any,
        executor: ThreadPoolExecutor,
        request_timeout_s: float,
        fingerprint: NDArray[np.int16] | None = None,
    ) -> None:
        self.posterior = posterior
        self.fingerprint = fingerprint
        self.executor = executor
        self.request_timeout_s = request_timeout_s
        self.busy_since: float | None = None  # when the worker thread started its current call
        self.unhealthy: str | None = None  # why the last check failed

    def timed(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (on the worker thread), recording when it started for ``check``."""
        self.busy_since = time.monotonic()
        try:
            return fn()
        finally:
            self.busy_since = None

    async def check(self, pending: int) -> None:
        """Serve's health probe: raises when a model call outlives 2 x request_timeout_s, or a probe
        draw fails.

        Args:
            pending: model-bound requests in the replica; the probe runs only when there are none.
        """
        busy = self.busy_since
        if busy is not None and time.monotonic() - busy > 2 * self.request_timeout_s:
            self.unhealthy = (
                f"model call running for {time.monotonic() - busy:.0f} s (> 2 x request_timeout_s)"
            )
            raise RuntimeError(self.unhealthy)
        if busy is None and pending == 0:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self.executor, probe, self.posterior, self.fingerprint
                )
            except Exception as e:  # anything but a rejection: the model cannot answer
                first = str(e).splitlines()[0] if str(e) else ""
                self.unhealthy = f"probe draw failed: {type(e).__name__}: {first}"
                raise RuntimeError(self.unhealthy) from None
        self.unhealthy = None

    def answer(self, replica: str) -> dict[str, Any] | None:
        """The body of a 503 ``/health`` while unhealthy, else None."""
        if self.unhealthy is None:
            return None
        return {"status": "unhealthy", "message": self.unhealthy, "replica": replica}
