"""Ray actors that each wrap one chip (or emulator instance), and the driver that feeds them.

The driver keeps a queue of the store's unfinished chunks and at most ``max_in_flight_per_chip``
chunks per actor in flight (back-pressure: memory stays flat in n). Actors simulate a chunk and
write it straight into the store; only small statistics travel back. The driver flags a chunk
done once its actor returned. An actor that dies (process killed, node lost) has its chunks
re-queued on the others and is replaced where the cluster has room.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.defaults import DEFAULT_CHUNK, ChipModel, Protocol, Regime
from farm.prior import AnyPrior, BoxPrior
from farm.simulate import simulate_indices, simulate_rows
from farm.store import SimStore, StoreSpec
from farm.substrate import Substrate, get_substrate
from farm.thetafile import theta_fingerprint

log = logging.getLogger("farm")
_CHUNK_DELAY_S = float(os.environ.get("FARM_CHUNK_DELAY_S", "0") or 0)
_DRIVER_MIN_CHUNKS = 4  # below this, a local run is too short for the driver to help while Ray starts


class FarmError(RuntimeError):
    """A run that cannot finish; completed chunks stay flagged and a re-run resumes."""


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
    """Simulate and write one chunk; the pure core shared by actors and the in-process path."""
    start, stop = store.chunk_bounds(chunk)
    idx = np.arange(start, stop, dtype=np.int64)
    if job.chunk_delay_s > 0:
        time.sleep(job.chunk_delay_s)
    t0 = time.perf_counter()
    if job.theta_from_store:
        batch = simulate_rows(store.read_theta(chunk), job.seed, idx, substrate)
    else:
        batch = simulate_indices(job.prior, job.seed, idx, substrate)
    t_sim = time.perf_counter() - t0
    store.write_chunk(chunk, batch)
    counts = batch.spike_count
    in_regime = int(np.sum((counts >= job.regime.min_spikes) & (counts <= job.regime.max_spikes)))
    return {"chunk": chunk, "n": len(batch), "in_regime": in_regime, "sim_seconds": t_sim, "seconds": time.perf_counter() - t0}


class ChipActor:
    """One emulated (or real) chip: holds a substrate and an open store, runs chunks on request."""

    def __init__(self, job: ChunkJob, num_threads: int = 1) -> None:
        import numba

        numba.set_num_threads(max(1, min(num_threads, numba.config.NUMBA_NUM_THREADS)))
        self.job = job
        self.store = SimStore.open(job.store_url, mode="r+")
        self.substrate = get_substrate(job.substrate, job.protocol, job.chip_model)

    def ready(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def run(self, chunk: int) -> dict[str, Any]:
        import ray

        stats = run_chunk(self.store, self.job, self.substrate, chunk)
        stats["node_id"] = ray.get_runtime_context().get_node_id()
        stats["pid"] = os.getpid()
        return stats


@dataclass
class _Progress:
    """Rich progress on stderr (traces/s and ETA), silent when disabled."""

    total: int
    done: int
    enabled: bool
    _bar: Any = field(default=None, init=False)
    _task: Any = field(default=None, init=False)

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]simulate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("simulate", total=self.total, completed=self.done, rate="")
            self._t0 = time.perf_counter()
            self._done0 = self.done
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            rate = (self.done - self._done0) / max(time.perf_counter() - self._t0, 1e-9)
            self._bar.update(self._task, completed=self.done, rate=f"{rate:,.0f} traces/s")

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def run_farm(
    out: str,
    num_sims: int,
    *,
    seed: int = 0,
    chunk_size: int | None = None,
    num_chips: int | None = None,
    substrate: str = "emulator",
    prior: AnyPrior | None = None,
    theta: NDArray[np.float32] | None = None,
    address: str | None = None,
    in_process: bool = False,
    progress: bool = False,
    protocol: Protocol | None = None,
    chip_model: ChipModel | None = None,
    regime: Regime | None = None,
    max_in_flight_per_chip: int = 2,
    max_actor_failures: int | None = None,
) -> dict[str, Any]:
    """Fill (or resume, or extend) the store at ``out``; the Python form of `farm simulate`.

    Args:
        out: local path or fsspec URL of the store.
        num_sims: samples the store should hold.
        seed: root seed; sample i is a pure function of (seed, i).
        chunk_size: samples per store chunk and work item, fixed at creation; None: the
            existing store's, or ``DEFAULT_CHUNK`` for a new store.
        num_chips: actors; default one per CPU of the cluster.
        prior: BoxPrior (default) or RestrictedPrior.
        theta: (num_sims, 7) parameter sets to simulate instead of prior draws.
        address: Ray cluster address; None starts (or reuses) a local Ray.
        in_process: run without Ray in this process.

    Returns:
        Summary dict (samples done, traces/s, fraction in the regime of interest, nodes used).
    """
    prior = prior or BoxPrior()
    protocol = protocol or Protocol()
    chip_model = chip_model or ChipModel()
    regime = regime or Regime()
    theta_source = "prior" if theta is None else theta_fingerprint(theta)
    if chunk_size is None:
        chunk_size = SimStore.existing_chunk_size(out) or DEFAULT_CHUNK
    if theta is not None and theta.shape[0] != num_sims:
        raise ValueError(f"theta has {theta.shape[0]} rows but num_sims={num_sims}")
    spec = StoreSpec(seed=seed, num_sims=num_sims, chunk_size=chunk_size, prior=prior.to_dict(), protocol=protocol, chip_model=chip_model, regime=regime, substrate=substrate, theta_source=theta_source)
    store = SimStore.create_or_resume(out, spec)
    if theta is not None and not store.attrs.get("theta_written"):
        store.write_theta(theta)
        store.set_attrs(theta_written=True)
    job = ChunkJob(store_url=store.url, seed=seed, prior=prior, substrate=substrate, protocol=protocol, chip_model=chip_model, regime=regime, theta_from_store=theta is not None, chunk_delay_s=_CHUNK_DELAY_S)
    pending = store.pending_chunks()
    skipped = store.num_sims - sum(b - a for a, b in map(store.chunk_bounds, pending))
    t0 = time.perf_counter()
    stats: dict[str, Any] = {"num_workers": 0, "nodes": set(), "chunks_retried": 0}
    try:
        with _Progress(total=store.num_sims, done=skipped, enabled=progress) as bar:
            if pending and in_process:
                _run_in_process(store, job, pending, bar)
                stats.update(num_workers=1, nodes={"local"})
            elif pending:
                _run_on_ray(store, job, pending, bar, stats, address=address, num_chips=num_chips, max_in_flight_per_chip=max_in_flight_per_chip, max_actor_failures=max_actor_failures)
    except OSError as e:  # the driver's own writes (done flags) on a full or vanished store
        raise FarmError(f"writing to {store.url} failed: {e.strerror or e}; completed chunks are kept, re-run the same command to resume") from None
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
        driver_chunks=stats.get("driver_chunks", 0),
    )
    return summary


def _run_in_process(store: SimStore, job: ChunkJob, pending: list[int], bar: _Progress) -> None:
    sub = get_substrate(job.substrate, job.protocol, job.chip_model)
    for chunk in pending:
        try:
            res = run_chunk(store, job, sub, chunk)
        except OSError as e:
            raise FarmError(f"writing chunk {chunk} to {store.url} failed: {e}; completed chunks are kept, re-run the same command to resume") from None
        store.mark_done(chunk)
        bar.advance(res["n"])


def _connect_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": True, "logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        # A fresh local cluster bound to loopback ("local" never joins a `ray start` cluster
        # that happens to run on this machine); the object store only carries small statistics.
        address = "local"
        kwargs.update(object_store_memory=256 * 1024**2, _node_ip_address="127.0.0.1")
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise FarmError(f"cannot connect to Ray at address={address!r}: {str(e).splitlines()[0]}") from None


class _DriverWorker(threading.Thread):
    """Simulates chunks in the driver while a private local Ray starts, until the first actor is up.

    Why: starting Ray and the actors takes ~7-9 s on 2 cores, a tenth of a million-trace run,
    and the driver already holds the kernel and the store. It takes chunks from the farm's own
    queue and flags them like an actor would, so determinism and resume are unchanged: a chunk
    is flagged done only after its data is written, by whoever ran it.
    """

    def __init__(self, store: SimStore, job: ChunkJob, queue: collections.deque, lock: threading.Lock, bar: _Progress) -> None:
        super().__init__(name="farm-driver-worker", daemon=True)
        self.store, self.job, self.queue, self.lock, self.bar = store, job, queue, lock, bar
        self.halt = threading.Event()
        self.chunks_done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            import numba

            numba.set_num_threads(1)  # this thread only; leaves a core to Ray's start-up
            substrate = get_substrate(self.job.substrate, self.job.protocol, self.job.chip_model)
            while not self.halt.is_set():
                with self.lock:
                    if not self.queue:
                        return
                    chunk = self.queue.popleft()
                try:
                    res = run_chunk(self.store, self.job, substrate, chunk)
                except BaseException:
                    with self.lock:
                        self.queue.appendleft(chunk)  # an actor retries it (or the error ends the run)
                    raise
                with self.lock:
                    self.store.mark_done(chunk)
                    self.bar.advance(res["n"])
                    self.chunks_done += 1
        except BaseException as e:  # reported by the main loop, which owns the run's errors
            self.error = e

    def stop(self) -> None:
        """Finish the current chunk, take no more, and surface an error the worker met."""
        self.halt.set()
        self.join()
        if isinstance(self.error, OSError):
            raise FarmError(f"writing to {self.store.url} failed: {self.error.strerror or self.error}; completed chunks are kept, re-run the same command to resume") from None
        if self.error is not None:
            raise FarmError(f"the driver's own chunk failed: {type(self.error).__name__}: {self.error}; completed chunks are kept, re-run the same command to resume") from None


def _run_on_ray(store: SimStore, job: ChunkJob, pending: list[int], bar: _Progress, stats: dict[str, Any], *, address: str | None, num_chips: int | None, max_in_flight_per_chip: int, max_actor_failures: int | None) -> None:
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    queue = collections.deque(pending)
    lock = threading.Lock()
    driver: _DriverWorker | None = None
    if address is None and not ray.is_initialized() and len(pending) > _DRIVER_MIN_CHUNKS:
        driver = _DriverWorker(store, job, queue, lock, bar)
        driver.start()
    try:
        _connect_ray(address)
    except BaseException:
        if driver is not None:
            driver.halt.set()
            driver.join()
        raise
    if num_chips is None:
        num_chips = max(1, int(ray.cluster_resources().get("CPU", 1)))
    num_chips = max(1, min(num_chips, len(pending)))
    max_failures = max_actor_failures if max_actor_failures is not None else 5 * num_chips + 10
    actor_cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(ChipActor)
    job_ref = ray.put(job)

    starting: dict[Any, Any] = {}  # ready() ref -> actor
    ready: dict[Any, int] = {}  # actor -> chunks in flight
    in_flight: dict[Any, tuple[Any, int]] = {}  # run() ref -> (actor, chunk)
    failures = 0
    last_progress = time.monotonic()

    def spawn() -> None:
        actor = actor_cls.options(scheduling_strategy="SPREAD").remote(job_ref)
        starting[actor.ready.remote()] = actor

    for _ in range(num_chips):
        spawn()
    stats["num_workers"] = num_chips
    try:
        while queue or in_flight or (driver is not None and driver.is_alive()):
            if driver is not None and ready:  # an actor is up: the driver hands over after its current chunk
                driver.stop()
                stats["driver_chunks"] = driver.chunks_done
                driver = None
            for actor in list(ready):
                while ready[actor] < max_in_flight_per_chip:
                    with lock:
                        if not queue:
                            break
                        chunk = queue.popleft()
                    in_flight[actor.run.remote(chunk)] = (actor, chunk)
                    ready[actor] += 1
            waitables = list(in_flight) + list(starting)
            done, _ = ray.wait(waitables, num_returns=1, timeout=1.0)
            for ref in done:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        info = ray.get(ref)
                        stats["nodes"].add(info["node_id"])
                        ready[actor] = 0
                    except RayActorError:
                        failures += 1
                        if failures > max_failures:
                            raise FarmError(f"{failures} actors died (limit {max_failures}); completed chunks are kept, re-run to resume") from None
                        spawn()
                    except RayTaskError as e:
                        raise FarmError(f"a chip actor failed to start: {_cause(e)}") from None
                    continue
                actor, chunk = in_flight.pop(ref)
                try:
                    res = ray.get(ref)
                except RayActorError:
                    # The actor's process or node is gone: its chunk goes to another actor.
                    log.warning("actor running chunk %d died; re-queueing it", chunk)
                    with lock:
                        queue.appendleft(chunk)
                    stats["chunks_retried"] += 1
                    if actor in ready:
                        ready.pop(actor)
                        failures += 1
                        if failures > max_failures:
                            raise FarmError(f"{failures} actors died (limit {max_failures}); completed chunks are kept, re-run to resume") from None
                        spawn()
                    continue
                except RayTaskError as e:
                    raise FarmError(f"chunk {chunk} failed: {_cause(e)}; completed chunks are kept, re-run the same command to resume") from None
                with lock:
                    store.mark_done(chunk)
                    bar.advance(res["n"])
                stats["nodes"].add(res["node_id"])
                ready[actor] -= 1
                last_progress = time.monotonic()
            if not ready and not in_flight and queue and (driver is None or not driver.is_alive()) and time.monotonic() - last_progress > 300:
                raise FarmError("no chip actor could be started for 300 s; check the cluster's free CPUs (`ray status`)")
    finally:
        if driver is not None:  # the run ended (or failed) before any actor came up
            driver.halt.set()
            driver.join()
            stats["driver_chunks"] = driver.chunks_done
        for actor in list(ready) + list(starting.values()) + [a for a, _ in in_flight.values()]:
            try:
                ray.kill(actor)
            except Exception:
                pass


def _cause(err: Exception) -> str:
    """The user-facing line of a remote exception (its original cause, not Ray's wrapper)."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    return str(err).strip().splitlines()[-1]
