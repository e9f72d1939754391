"""The Ray actor for one chip (or emulator instance): a thin wrapper that runs chunks on request.

Physics never lives here: the actor holds a substrate and an open store, and calls
``farm.run.job.run_chunk``. The scheduler in ``farm.run.scheduler`` decides what it runs.
"""

from __future__ import annotations

import os
from typing import Any

from farm.run.job import ChunkJob, run_chunk
from farm.store.sim_store import SimStore
from farm.substrates.registry import get_substrate


class ChipActor:
    """One emulated (or real) chip: holds a substrate and an open store, runs chunks on request.

    Args:
        job: the run's settings, shared by every actor.
        num_threads: numba threads for the kernel (one per actor: Ray gives each a CPU).
    """

    def __init__(self, job: ChunkJob, num_threads: int = 1) -> None:
        import numba

        numba.set_num_threads(max(1, min(num_threads, numba.config.NUMBA_NUM_THREADS)))
        self.job = job
        self.store = SimStore.open(job.store_url, mode="r+")
        self.substrate = get_substrate(job.substrate, job.protocol, job.chip_model)

    def ready(self) -> dict[str, Any]:
        """Where the actor runs; answering it means the actor is up."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def run(self, chunk: int) -> dict[str, Any]:
        """Simulate and write ``chunk``; the driver flags it done when this returns."""
        import ray

        stats = run_chunk(self.store, self.job, self.substrate, chunk)
        stats["node_id"] = ray.get_runtime_context().get_node_id()
        stats["pid"] = os.getpid()
        return stats
