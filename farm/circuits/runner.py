"""`farm fingerprint` as a Python call: create or resume a circuits store, record pending chips.

Chips run on Ray actors (``FingerprintActor``), at most ``num_actors`` at a time, each recording
one whole chip per call; the emulator and the ``bss2`` backend take the same path through the
substrate interface. Determinism does not depend on who ran what: a chip's bytes are a pure
function of (seed, chip, neuron, reference), and the driver flags a chip only after its actor
wrote it. An actor that dies has its chip re-queued on a fresh actor.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from typing import Any

from farm.circuits.actor import FingerprintActor, FingerprintJob
from farm.circuits.references import DEFAULT_REFERENCES, ReferenceSet
from farm.circuits.store import FingerprintSpec, FingerprintStore
from farm.defaults import NEURONS_PER_CHIP, ChipModel
from farm.errors import FarmError, FarmInputError
from farm.run.progress import ProgressBar
from farm.run.raycluster import connect_ray
from farm.store.lock import StoreLock
from farm.store.paths import check_parent_writable, classify, is_remote
from farm.substrates.registry import check_available


@dataclass(frozen=True, slots=True)
class FingerprintConfig:
    """What to fingerprint into which store, and where it runs.

    Args:
        out: local path or fsspec URL of the circuits store.
        chip_ids: chips to record (sorted, unique; ``farm.substrates.circuits.parse_chip_ids``).
        neurons: neurons of every chip (default all 512).
        seed: root of the fingerprints' noise.
        substrate: ``emulator`` or ``bss2``.
        references: the reference set (default ``DEFAULT_REFERENCES``).
        chip_model: the emulated chips' physics.
        address: Ray cluster; None starts (or reuses) a local Ray.
        num_actors: chips recorded at once; None: one per CPU of the cluster, at most one per chip.
        progress: show a progress bar (chips).
        break_lock: take the store's lock even from a run that still looks alive.
        max_actor_failures: actor deaths tolerated before the run fails; None: 3 per chip + 5.
    """

    out: str
    chip_ids: tuple[int, ...]
    neurons: tuple[int, ...] = tuple(range(NEURONS_PER_CHIP))
    seed: int = 0
    substrate: str = "emulator"
    references: ReferenceSet = DEFAULT_REFERENCES
    chip_model: ChipModel = field(default_factory=ChipModel)
    address: str | None = None
    num_actors: int | None = None
    progress: bool = False
    break_lock: bool = False
    max_actor_failures: int | None = None

    def __post_init__(self) -> None:
        if not self.out:
            raise FarmInputError("out='' is empty; give a store path or URL")
        if self.num_actors is not None and self.num_actors < 1:
            raise FarmInputError(f"num_actors={self.num_actors} must be >= 1 (or None)")
        check_available(self.substrate)

    @property
    def spec(self) -> FingerprintSpec:
        return FingerprintSpec(
            seed=self.seed,
            chip_ids=tuple(self.chip_ids),
            neurons=tuple(self.neurons),
            references=self.references,
            chip_model=self.chip_model,
            substrate=self.substrate,
        )


def run_fingerprint(config: FingerprintConfig) -> dict[str, Any]:
    """Fill (or resume) the circuits store of ``config.out``; the Python form of `farm fingerprint`.

    Returns:
        Summary dict: the store's description plus chips recorded now, seconds, actors, retries.

    Raises:
        FarmInputError: bad settings, a foreign ``out`` (``StoreRefused``), a store made with
            other settings (``FingerprintMismatch``), or a store another run writes
            (``StoreLocked``).
        FarmError: the run could not finish; recorded chips stay flagged and a re-run resumes.
    """
    spec = config.spec
    out = str(config.out)
    out = out.removeprefix("file://") if out.startswith("file://") else out
    # Refuse a foreign --out before the lock file appears beside it; then one writer at a time.
    classify(out)
    check_parent_writable(out)
    t0 = time.perf_counter()
    with StoreLock(out, break_lock=config.break_lock) as lock:
        store = FingerprintStore.create_or_resume(out, spec)
        pending = store.pending_chips()
        skipped = len(spec.chip_ids) - len(pending)
        job = FingerprintJob(
            _absolute(store.url),
            spec,
            _chip_delay_s(),
            os.environ.get("FARM_FINGERPRINT_CRASH_MARKER", ""),
        )
        stats = {"num_actors": 0, "retried": 0}
        with ProgressBar(
            len(spec.chip_ids), skipped, config.progress, label="fingerprint", unit="chips"
        ) as bar:
            if pending:
                _run_on_ray(store, job, pending, bar, config, stats)
        if lock.lost:
            raise FarmError(
                f"another run took over the lock of {out}; run `farm verify {out}`, "
                "then re-run the same command"
            )
    summary = store.describe()
    summary.update(
        recorded_now=len(pending),
        skipped=skipped,
        seconds=time.perf_counter() - t0,
        num_actors=stats["num_actors"],
        chips_retried=stats["retried"],
    )
    return summary


def _run_on_ray(
    store: FingerprintStore,
    job: FingerprintJob,
    pending: list[int],
    bar: ProgressBar,
    config: FingerprintConfig,
    stats: dict[str, Any],
) -> None:
    """Record every pending chip on actors; flags each chip after its actor returned."""
    connect_ray(config.address)
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    remote = ray.remote(num_cpus=1, max_restarts=0)(FingerprintActor)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    num_actors = min(len(pending), config.num_actors or cpus)
    max_failures = (
        config.max_actor_failures if config.max_actor_failures is not None else 3 * len(pending) + 5
    )
    queue = collections.deque(pending)
    idle = [remote.remote(job) for _ in range(num_actors)]
    stats["num_actors"] = num_actors
    in_flight: dict[Any, tuple[Any, int]] = {}
    failures = 0
    try:
        while queue or in_flight:
            while idle and queue:
                actor, position = idle.pop(), queue.popleft()
                in_flight[actor.record.remote(position)] = (actor, position)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                actor, position = in_flight.pop(ref)
                try:
                    ray.get(ref)
                except RayActorError:
                    failures += 1
                    stats["retried"] += 1
                    if failures > max_failures:
                        raise FarmError(
                            f"{failures} fingerprint actors died; recorded chips are kept, "
                            "re-run the same command to resume"
                        ) from None
                    queue.appendleft(position)
                    idle.append(remote.remote(job))
                    continue
                except RayTaskError as e:
                    cause = e.cause if isinstance(e.cause, BaseException) else e
                    if isinstance(cause, FarmInputError):
                        raise cause from None
                    raise FarmError(
                        f"chip {job.spec.chip_ids[position]} failed: {type(cause).__name__}: "
                        f"{str(cause).splitlines()[0] if str(cause) else ''}; recorded chips are "
                        "kept, re-run the same command to resume"
                    ) from None
                store.mark_done(position)
                bar.advance(1)
                idle.append(actor)
    finally:
        for actor in idle + [a for a, _ in in_flight.values()]:
            ray.kill(actor)


def _chip_delay_s() -> float:
    """FARM_CHIP_DELAY_S: a per-chip sleep for interruption tests (never changes data)."""
    return float(os.environ.get("FARM_CHIP_DELAY_S", "0") or 0)


def _absolute(url: str) -> str:
    """Actors on other nodes open the store themselves: a relative path would name another."""
    return url if is_remote(url) else os.path.abspath(os.path.expanduser(url))


__all__ = ["FingerprintConfig", "run_fingerprint"]
