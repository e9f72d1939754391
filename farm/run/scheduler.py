"""The Ray driver loop: feeds chip actors from the chunk queue, with back-pressure and re-queueing.

The driver keeps at most ``max_in_flight_per_chip`` chunks per actor in flight (memory stays flat
in n). Actors simulate a chunk and write it straight into the store; only small statistics travel
back, and the driver flags the chunk done once its actor returned. An actor that dies (process
killed, node lost) has its chunks re-queued on the others and is replaced where the cluster has
room. While a private local Ray starts, a ``DriverWorker`` thread runs chunks from the same queue.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from typing import Any

from farm.errors import FarmError
from farm.run.chip_actor import ChipActor
from farm.run.job import ChunkJob, ChunkQueue, run_queue
from farm.run.raycluster import connect_ray, ray_connected, shutdown_ray
from farm.substrates.registry import get_substrate

log = logging.getLogger("farm")
#: Below this many chunks a local run is too short for the driver to help while Ray starts.
DRIVER_MIN_CHUNKS = 4
#: Seconds without any actor up (and chunks waiting) before the run gives up.
NO_ACTOR_TIMEOUT_S = 300


class DriverWorker(threading.Thread):
    """Simulates chunks in the driver while a private local Ray starts, until every actor is up.

    Why: starting Ray and the actors takes ~7-9 s on 2 cores, a tenth of a million-trace run,
    and the driver already holds the kernel and the store. It drains the farm's own queue with
    ``run_queue``, so a chunk is flagged exactly as an actor's would be.

    BLAS runs single-threaded meanwhile (``run_on_ray``): OpenBLAS shuts its thread pool down in a
    fork handler, and Ray's start-up forks while this thread may be inside a threaded ``dgemm``
    (the restricted prior's classifier), which then waits forever for the workers that were
    shut down (seen: `farm simulate --prior` hung at 100 % CPU in ``exec_blas_async_wait``).
    """

    def __init__(self, queue: ChunkQueue, job: ChunkJob) -> None:
        super().__init__(name="farm-driver-worker", daemon=True)
        self.queue, self.job = queue, job
        self.halt = threading.Event()
        self.chunks_done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            import numba

            numba.set_num_threads(1)  # this thread only; leaves a core to Ray's start-up
            substrate = get_substrate(self.job.substrate, self.job.protocol, self.job.chip_model)
            self.chunks_done = run_queue(self.queue, self.job, substrate, self.halt)
        except BaseException as e:  # reported by the main loop, which owns the run's errors
            self.error = e

    def stop(self) -> None:
        """Finish the current chunk, take no more, and surface an error the worker met."""
        self.halt.set()
        self.join()
        if isinstance(self.error, FarmError):
            raise self.error
        if self.error is not None:
            raise FarmError(
                f"the driver's own chunk failed: {type(self.error).__name__}: {self.error}; "
                "completed chunks are kept, re-run the same command to resume"
            ) from None


def run_on_ray(
    queue: ChunkQueue,
    job: ChunkJob,
    stats: dict[str, Any],
    *,
    address: str | None,
    num_chips: int | None,
    max_in_flight_per_chip: int,
    max_actor_failures: int | None,
) -> None:
    """Run every chunk of ``queue`` on chip actors; fills ``stats`` (workers, nodes, retries).

    Args:
        address: Ray cluster; None starts a private local Ray (and lets the driver work meanwhile).
        num_chips: actors; default one per CPU of the cluster.
        max_in_flight_per_chip: chunks queued on one actor at once (back-pressure).
        max_actor_failures: actor deaths tolerated before the run fails (default 5 per chip + 10).

    Raises:
        FarmError: a chunk failed, too many actors died, or none could start.
    """
    from threadpoolctl import threadpool_limits

    t_enter = time.perf_counter()
    driver: DriverWorker | None = None
    blas_limit = None
    # Ray is imported only once the driver works: its imports hide behind the driver's chunks.
    if address is None and not ray_connected() and len(queue) > DRIVER_MIN_CHUNKS:
        blas_limit = threadpool_limits(
            limits=1, user_api="blas"
        )  # set before the thread exists; see DriverWorker
        driver = DriverWorker(queue, job)
        driver.start()
    try:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        started = _connect_keeping_sigterm(address)
        stats["ray_start_s"] = time.perf_counter() - t_enter
    except BaseException:
        if driver is not None:
            driver.halt.set()
            driver.join()
        if blas_limit is not None:
            blas_limit.restore_original_limits()
        if address is None and ray_connected():  # interrupted while the private Ray started
            import ray

            ray.shutdown()
        raise
    starting: dict[Any, Any] = {}  # ready() ref -> actor
    ready: dict[Any, int] = {}  # actor -> chunks in flight
    in_flight: dict[Any, tuple[Any, int]] = {}  # run() ref -> (actor, chunk)
    retried: set[int] = set()  # chunks whose actor died
    stats.setdefault("retried_on", set())
    failures = 0
    last_progress = time.monotonic()
    interrupted = False
    try:
        cluster_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if num_chips is None:
            num_chips = cluster_cpus
        num_chips = max(1, min(num_chips, len(queue)))
        max_failures = max_actor_failures if max_actor_failures is not None else 5 * num_chips + 10
        actor_cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(ChipActor)
        job_ref = ray.put(job)

        def spawn() -> None:
            actor = actor_cls.options(scheduling_strategy="SPREAD").remote(job_ref)
            starting[actor.ready.remote()] = actor

        def actor_died() -> None:
            nonlocal failures
            failures += 1
            if failures > max_failures:
                raise FarmError(
                    f"{failures} actors died (limit {max_failures}); "
                    "completed chunks are kept, re-run to resume"
                ) from None
            spawn()

        for _ in range(num_chips):
            spawn()
        stats["num_workers"] = num_chips
        # Actors that can run at once on the private Ray (one CPU each; `--chips` may ask for more).
        runnable = min(num_chips, cluster_cpus)
        while len(queue) or in_flight or (driver is not None and driver.is_alive()):
            if len(ready) >= runnable and "actors_up_s" not in stats:
                stats["actors_up_s"] = time.perf_counter() - t_enter
            if driver is not None and len(ready) >= runnable:
                # Every actor that can run is up: the driver hands over after its current chunk.
                # (Stopping at the first would leave a core idle while the others load the kernel.)
                driver.stop()
                stats["driver_chunks"] = driver.chunks_done
                driver = None
            for actor in list(ready):
                while ready[actor] < max_in_flight_per_chip:
                    chunk = queue.take()
                    if chunk is None:
                        break
                    in_flight[actor.run.remote(chunk)] = (actor, chunk)
                    ready[actor] += 1
            done, _ = ray.wait(list(in_flight) + list(starting), num_returns=1, timeout=1.0)
            for ref in done:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        stats["nodes"].add(ray.get(ref)["node_id"])
                        ready[actor] = 0
                    except RayActorError:
                        actor_died()
                    except RayTaskError as e:
                        raise FarmError(f"a chip actor failed to start: {_cause(e)}") from None
                    continue
                actor, chunk = in_flight.pop(ref)
                try:
                    res = ray.get(ref)
                except RayActorError:
                    # The actor's process or node is gone: its chunk goes to another actor.
                    log.warning("actor running chunk %d died; re-queueing it", chunk)
                    queue.put_back(chunk)
                    stats["chunks_retried"] += 1
                    retried.add(chunk)
                    if ready.pop(actor, None) is not None:
                        actor_died()
                    continue
                except RayTaskError as e:
                    raise FarmError(
                        f"chunk {chunk} failed: {_cause(e)}; "
                        "completed chunks are kept, re-run the same command to resume"
                    ) from None
                queue.finish(chunk, res["n"], res)
                stats["nodes"].add(res["node_id"])
                if chunk in retried:
                    stats["retried_on"].add(res["node_id"])
                ready[actor] -= 1
                last_progress = time.monotonic()
            if (
                not ready
                and not in_flight
                and len(queue)
                and (driver is None or not driver.is_alive())
                and time.monotonic() - last_progress > NO_ACTOR_TIMEOUT_S
            ):
                raise FarmError(
                    f"no chip actor could be started for {NO_ACTOR_TIMEOUT_S} s; "
                    "check the cluster's free CPUs (`ray status`)"
                )
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        raise
    finally:
        if driver is not None:  # the run ended (or failed) before any actor came up
            driver.halt.set()
            driver.join()
            stats["driver_chunks"] = driver.chunks_done
        if blas_limit is not None:
            blas_limit.restore_original_limits()
        for actor in list(ready) + list(starting.values()) + [a for a, _ in in_flight.values()]:
            try:
                ray.kill(actor)
            except Exception:
                pass
        if started and address is None and interrupted:
            # Ctrl-C or SIGTERM: take the private Ray (raylet, GCS, workers) down with the run
            # instead of leaving it to atexit, which a second signal or os._exit would skip.
            shutdown_ray()


def _connect_keeping_sigterm(address: str | None) -> bool:
    """``connect_ray``, leaving the caller's SIGTERM handler in place; True if Ray was started.

    Why: ``ray.init`` installs a SIGTERM handler of its own (``sys.exit(15)`` while it starts,
    then its core worker's fatal-signal handler, which aborts with exit -6 and leaves a private
    Ray behind). A caller that turned SIGTERM into an interrupt (`farm simulate`) keeps that,
    and a SIGTERM that lands while Ray starts is reported as the interrupt it is.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    # Ray's handler raises SystemExit, which Python drops where it lands in an at-fork callback
    # (ray.init forks its daemons): the wake-up fd records every signal, so none is lost.
    wake_r, wake_w = socket.socketpair() if main else (None, None)
    old_wake, seen = -1, b""
    if wake_w is not None:
        wake_w.setblocking(False)
        old_wake = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    try:
        started = connect_ray(address)
    except SystemExit as e:
        if main and e.code == signal.SIGTERM and callable(previous):
            previous(signal.SIGTERM, None)  # Ray's start-up handler caught the caller's signal
        raise
    finally:
        if wake_r is not None and wake_w is not None:
            signal.set_wakeup_fd(old_wake)
            wake_r.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                seen = wake_r.recv(4096)
            wake_r.close()
            wake_w.close()
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if signal.SIGTERM in seen and callable(previous):
        previous(signal.SIGTERM, None)  # a SIGTERM Ray's start-up handler swallowed
    return started


def _cause(err: Exception) -> str:
    """The user-facing line of a remote exception (its original cause, not Ray's wrapper)."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    return str(err).strip().splitlines()[-1]
