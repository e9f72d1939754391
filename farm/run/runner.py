"""`farm simulate` as a Python call: create or resume the store, then run its pending chunks.

Where the chunks run is the one choice made here: in this process (``in_process=True``), or on
Ray actors (``farm.run.scheduler``), with the driver itself working while a local Ray starts.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

from farm.defaults import default_chunk_size
from farm.errors import FarmError
from farm.run.config import FarmConfig
from farm.run.job import ChunkJob, ChunkQueue, run_queue
from farm.run.progress import ProgressBar
from farm.run.scheduler import run_on_ray
from farm.simulate import sim_schema
from farm.store.lock import StoreLock
from farm.store.paths import check_parent_writable, classify, is_remote
from farm.store.sim_store import SimStore, normalise_url
from farm.store.spec import StoreSpec
from farm.store.user_arrays import theta_fingerprint
from farm.substrates.registry import get_substrate


def _chunk_delay_s() -> float:
    """FARM_CHUNK_DELAY_S: a per-chunk sleep for fault-injection tests (never changes data)."""
    return float(os.environ.get("FARM_CHUNK_DELAY_S", "0") or 0)


def absolute_url(url: str) -> str:
    """A local store path made absolute; other fsspec URLs unchanged.

    Why: actors on other nodes open the store themselves, from their own working directory,
    so a relative ``--out`` would name a different (or no) store there.
    """
    return url if is_remote(url) else os.path.abspath(os.path.expanduser(url))


def run_farm(
    config: FarmConfig | str | None = None, num_sims: int | None = None, **options: Any
) -> dict[str, Any]:
    """Fill (or resume, or extend) the store of ``config.out``; the Python form of `farm simulate`.

    Args:
        config: the run (``FarmConfig``). Old callers' ``run_farm(out, num_sims, seed=...,
            ...)`` still works: ``out``, ``num_sims`` and keyword ``options`` (the
            ``FarmConfig`` field names) become a config, or replace fields of a given one.

    Returns:
        Summary dict (samples done, traces/s, fraction in the regime of interest, nodes used).

    Raises:
        FarmInputError: bad settings, a store made with other settings (``StoreMismatch``), an
            ``out`` that holds something else (``StoreRefused``), or a store another run is
            writing (``StoreLocked``).
        FarmError: the run could not finish; completed chunks are kept and a re-run resumes.
    """
    cfg = farm_config(config, num_sims, **options)
    out, seed, theta = cfg.out, cfg.seed, cfg.theta
    theta_source = "prior" if theta is None else theta_fingerprint(theta)
    chunk_size = cfg.chunk_size
    if chunk_size is None:
        chunk_size = SimStore.existing_chunk_size(out) or default_chunk_size(cfg.num_sims)
    spec = StoreSpec(
        seed=seed,
        num_sims=cfg.num_sims,
        chunk_size=chunk_size,
        prior=cfg.prior.to_dict(),
        protocol=cfg.protocol,
        chip_model=cfg.chip_model,
        regime=cfg.regime,
        schema=sim_schema(cfg.protocol),
        substrate=cfg.substrate,
        theta_source=theta_source,
    )
    # Refuse a foreign --out before the lock file appears beside it; then one writer at a time,
    # and the lock is held before creation touches the store path.
    out = normalise_url(out)
    classify(out)
    check_parent_writable(out)
    with StoreLock(out, break_lock=cfg.break_lock) as lock:
        store = SimStore.create_or_resume(out, spec)
        if theta is not None and not store.attrs.get("theta_written"):
            store.write_array("theta", theta)
            store.set_attrs(theta_written=True)
        job = ChunkJob(
            store_url=absolute_url(store.url),
            seed=seed,
            prior=cfg.prior,
            substrate=cfg.substrate,
            protocol=cfg.protocol,
            chip_model=cfg.chip_model,
            regime=cfg.regime,
            theta_from_store=theta is not None,
            chunk_delay_s=_chunk_delay_s(),
        )
        pending = store.pending_chunks()
        skipped = store.num_sims - sum(b - a for a, b in map(store.chunk_bounds, pending))
        t0 = time.perf_counter()
        started_at = time.time()  # lets a caller split its own wall time (process start, exit)
        stats: dict[str, Any] = {
            "num_workers": 0,
            "nodes": set(),
            "chunks_retried": 0,
            "retried_on": set(),
        }
        try:
            with ProgressBar(total=store.num_sims, done=skipped, enabled=cfg.progress) as bar:
                queue = ChunkQueue(store, pending, bar)
                if pending and cfg.in_process:
                    # Errors other than store I/O propagate unchanged: the caller's own process
                    # ran them.
                    run_queue(
                        queue, job, get_substrate(job.substrate, job.protocol, job.chip_model)
                    )
                    stats.update(num_workers=1, nodes={"local"})
                elif pending:
                    run_on_ray(
                        queue,
                        job,
                        stats,
                        address=cfg.address,
                        num_chips=cfg.num_chips,
                        max_in_flight_per_chip=cfg.max_in_flight_per_chip,
                        max_actor_failures=cfg.max_actor_failures,
                    )
        except OSError as e:  # the driver's own writes (done flags) on a full or vanished store
            raise FarmError(
                f"writing to {store.url} failed: {e.strerror or e}; completed chunks are kept, "
                "re-run the same command to resume"
            ) from None
        if lock.lost:
            raise FarmError(
                f"another run took over the lock of {out}; run `farm verify {out}`, "
                "then re-run the same command"
            )
    seconds = time.perf_counter() - t0
    summary = store.describe()
    simulated_now = summary["completed_sims"] - skipped
    summary.update(
        simulated_now=simulated_now,
        skipped=skipped,
        seconds=seconds,
        sims_per_second=simulated_now / seconds if seconds > 0 else 0.0,
        num_workers=stats["num_workers"],
        num_nodes=len(stats["nodes"]),
        nodes=sorted(stats["nodes"]),
        chunks_retried=stats["chunks_retried"],
        retried_on=sorted(stats["retried_on"]),
        driver_chunks=stats.get("driver_chunks", 0),
        # Where the time went: seconds into the run when Ray answered and when every actor that
        # can run was up (absent in-process), and worker seconds simulating vs writing chunks.
        ray_start_seconds=stats.get("ray_start_s"),
        actors_up_seconds=stats.get("actors_up_s"),
        worker_sim_seconds=queue.sim_seconds,
        worker_write_seconds=queue.write_seconds,
        started_at=started_at,
    )
    return summary


def farm_config(
    config: FarmConfig | str | None = None, num_sims: int | None = None, **options: Any
) -> FarmConfig:
    """The one place ``run_farm``'s old arguments become a ``FarmConfig``.

    Its keyword arguments were the config's field names, so they map one to one; the defaults
    live in ``FarmConfig`` alone.
    """
    if num_sims is not None:
        options["num_sims"] = num_sims
    if isinstance(config, FarmConfig):
        return replace(config, **options) if options else config
    if config is not None:
        options["out"] = config
    return FarmConfig(**options)


__all__ = ["FarmConfig", "absolute_url", "farm_config", "run_farm"]
