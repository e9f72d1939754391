"""A farm's unit of work: one store chunk, simulated and written by whoever takes it from the queue.

``run_chunk`` is the pure core every worker runs (a Ray actor, the driver while Ray starts, the
in-process path), and ``run_queue`` the one loop that drains a ``ChunkQueue`` in the calling
thread. A chunk is flagged done only after its data is written, by whoever ran it, so determinism
and resume do not depend on who ran what.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from farm.defaults import ChipModel, Protocol, Regime
from farm.errors import FarmError
from farm.prior import AnyPrior
from farm.run.progress import ProgressBar
from farm.simulate import simulate_indices, simulate_rows
from farm.store.sim_store import SimStore
from farm.substrates.base import Substrate


@dataclass(frozen=True, slots=True)
class ChunkJob:
    """Everything a worker needs to produce any chunk of a store (picklable, small)."""

    store_url: str
    seed: int
    prior: AnyPrior
    substrate: str
    protocol: Protocol
    chip_model: ChipModel
    regime: Regime
    theta_from_store: bool
    #: Throttle for fault-injection tests (read from FARM_CHUNK_DELAY_S on the driver, so it
    #: reaches actors on every node): slows each chunk, never changes data.
    chunk_delay_s: float = 0.0


def run_chunk(store: SimStore, job: ChunkJob, substrate: Substrate, chunk: int) -> dict[str, Any]:
    """Simulate and write one chunk (not flagged done); returns small statistics for the driver."""
    start, stop = store.chunk_bounds(chunk)
    idx = np.arange(start, stop, dtype=np.int64)
    if job.chunk_delay_s > 0:
        time.sleep(job.chunk_delay_s)
    t0 = time.perf_counter()
    if job.theta_from_store:
        batch = simulate_rows(store.read_chunk("theta", chunk), job.seed, idx, substrate)
    else:
        batch = simulate_indices(job.prior, job.seed, idx, substrate)
    t_sim = time.perf_counter() - t0
    store.write_chunk(chunk, batch.arrays())
    in_regime = int(np.sum(job.regime.contains(batch.spike_count)))
    return {
        "chunk": chunk,
        "n": len(batch),
        "in_regime": in_regime,
        "sim_seconds": t_sim,
        "seconds": time.perf_counter() - t0,
    }


class ChunkQueue:
    """The run's unfinished chunks, shared by the driver's thread and the Ray loop under one lock.

    ``finish`` flags a chunk done and advances the bar under the same lock, so two threads never
    write the flags or the bar at once. It also sums the workers' own timings (simulating vs
    writing), which `farm simulate --json` reports so a run shows where its time went.
    """

    def __init__(self, store: SimStore, chunks: Iterable[int], bar: ProgressBar) -> None:
        self.store, self.bar = store, bar
        self._chunks = collections.deque(chunks)
        self._lock = threading.Lock()
        #: Worker seconds over finished chunks: simulating (kernel, features) and writing them.
        self.sim_seconds = 0.0
        self.write_seconds = 0.0

    def __len__(self) -> int:
        with self._lock:
            return len(self._chunks)

    def take(self) -> int | None:
        """The next chunk to run, or None when the queue is empty."""
        with self._lock:
            return self._chunks.popleft() if self._chunks else None

    def put_back(self, chunk: int) -> None:
        """Return a chunk whose worker failed; it runs next."""
        with self._lock:
            self._chunks.appendleft(chunk)

    def finish(self, chunk: int, num_rows: int, timings: dict[str, Any] | None = None) -> None:
        """Flag a written chunk done and count its rows (and the worker's ``run_chunk`` timings)."""
        with self._lock:
            self.store.mark_done(chunk)
            self.bar.advance(num_rows)
            if timings is not None:
                self.sim_seconds += timings["sim_seconds"]
                self.write_seconds += timings["seconds"] - timings["sim_seconds"]


def run_queue(
    queue: ChunkQueue, job: ChunkJob, substrate: Substrate, halt: threading.Event | None = None
) -> int:
    """Run chunks from ``queue`` in this thread until it is empty or ``halt`` is set.

    A chunk that fails goes back to the queue. Store I/O errors (a full disk, a vanished bucket)
    become a FarmError naming the chunk; any other error propagates unchanged.

    Returns:
        The number of chunks this call finished.
    """
    finished = 0
    while halt is None or not halt.is_set():
        chunk = queue.take()
        if chunk is None:
            break
        try:
            res = run_chunk(queue.store, job, substrate, chunk)
            queue.finish(chunk, res["n"], res)
        except OSError as e:
            queue.put_back(chunk)
            raise FarmError(
                f"writing chunk {chunk} to {queue.store.url} failed: {e.strerror or e}; "
                "completed chunks are kept, re-run the same command to resume"
            ) from None
        except BaseException:
            queue.put_back(chunk)
            raise
        finished += 1
    return finished
