"""One chip's fingerprints as a unit of work, and the Ray actor that records them.

Physics never lives here: ``record_chip`` calls ``farm.circuits.record.record_fingerprints`` on
every neuron of one chip and writes the result; the actor only holds the substrates and the open
store between chips. The driver (``farm.circuits.runner``) flags a chip done once it returned.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from farm.circuits.record import build_substrates, record_fingerprints
from farm.circuits.store import FingerprintSpec, FingerprintStore
from farm.substrates.base import Substrate


@dataclass(frozen=True, slots=True)
class FingerprintJob:
    """Everything an actor needs to record any chip of a store (picklable, small).

    ``chip_delay_s`` slows each chip and ``crash_marker`` (a file path) makes the first actor
    to finish writing a chip die before it returns, for interruption and retry tests; neither
    changes data. Both are read on the driver, so they reach actors on every node.
    """

    store_url: str
    spec: FingerprintSpec
    chip_delay_s: float = 0.0
    crash_marker: str = ""


def record_chip(
    store: FingerprintStore, job: FingerprintJob, substrates: tuple[Substrate, ...], position: int
) -> dict[str, Any]:
    """Record and write the chip at ``position`` of the store's ``chip`` axis (not flagged)."""
    if job.chip_delay_s > 0:
        time.sleep(job.chip_delay_s)
    t0 = time.perf_counter()
    spec = job.spec
    neurons = np.asarray(spec.neurons, dtype=np.int16)
    chip = np.full(neurons.shape, spec.chip_ids[position], dtype=np.int16)
    codes = record_fingerprints(substrates, spec.references, spec.seed, chip, neurons)
    store.write_chip(position, codes)
    if job.crash_marker and not os.path.exists(job.crash_marker):
        with open(job.crash_marker, "w") as f:
            f.write(f"chip {spec.chip_ids[position]} written, actor died before returning\n")
        os._exit(1)  # a killed worker: the driver sees the actor die, not an exception
    return {
        "position": position,
        "chip": spec.chip_ids[position],
        "seconds": time.perf_counter() - t0,
    }


class FingerprintActor:
    """One emulated (or real) chip's recorder: substrates and the store, opened once.

    Args:
        job: the run's settings, shared by every actor.
        num_threads: numba threads for the kernel (Ray gives each actor one CPU).
    """

    def __init__(self, job: FingerprintJob, num_threads: int = 1) -> None:
        import numba

        numba.set_num_threads(max(1, min(num_threads, numba.config.NUMBA_NUM_THREADS)))
        self.job = job
        self.store = FingerprintStore.open(job.store_url, mode="r+")
        spec = job.spec
        self.substrates = build_substrates(spec.substrate, spec.references, spec.chip_model)

    def record(self, position: int) -> dict[str, Any]:
        """Record and write one chip; the driver flags it done when this returns."""
        stats = record_chip(self.store, self.job, self.substrates, position)
        stats["pid"] = os.getpid()
        return stats


__all__ = ["FingerprintActor", "FingerprintJob", "record_chip"]
