"""`farm infer` end to end: read traces, answer them block by block on Ray, write the store.

Order as in farm.run.runner: refuse a foreign --out before its lock file appears, hold the lock
before creation touches the path, then answer only the blocks not yet flagged. The driver is the
one writer; actors only compute.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from farm import FarmInputError, FarmRuntimeError, StoreLock
from farm.run.progress import ProgressBar
from farm.store.paths import check_parent_writable
from farm.store.sim_store import normalise_url
from inference.batch.actors import PosteriorActor, artifact_files
from inference.batch.block import block_seed, infer_block
from inference.batch.circuits import circuit_aware, fingerprints, identity, open_checked
from inference.batch.config import InferConfig
from inference.batch.observations import Observations, check_compatible, read_observations
from inference.batch.store import InferLayout, InferStore, check_out

#: Blocks queued per actor: one computing, one waiting, so an actor never idles on the driver.
IN_FLIGHT_PER_WORKER = 2


def run_infer(cfg: InferConfig) -> dict[str, Any]:
    """Answer every trace of ``cfg.store`` with the posterior; create or resume ``cfg.out``.

    A circuit-aware posterior answers each trace with its circuit's fingerprint from
    ``cfg.circuits``; a circuit-marginal one reads none, and ``cfg.circuits`` is then not read
    (``summary["circuits_used"]`` says which).

    Returns:
        A summary: store, observations, answered now / before, seconds, rate, flagged, workers,
        the circuits store and whether it was used.

    Raises:
        FarmInputError: bad posterior, traces, --circuits or --out (nothing written).
        FarmRuntimeError: a worker or the cluster failed; finished blocks stay, rerun resumes.
    """
    posterior = load_checked(cfg.posterior)
    obs = read_observations(cfg.store)
    check_compatible(obs, posterior.protocol, posterior.trace_length, repr(cfg.posterior))
    circuits = open_checked(cfg.circuits, posterior, obs, repr(cfg.posterior))
    layout = _layout(cfg, posterior, obs, identity(circuits))
    out = normalise_url(cfg.out)
    check_out(out)  # refuses anything foreign before the lock file appears beside it
    check_parent_writable(out)
    t0 = time.perf_counter()
    with StoreLock(out, break_lock=cfg.break_lock) as lock:
        store = InferStore.create_or_resume(out, layout)
        pending = store.pending_blocks()
        todo = sum(b - a for a, b in map(store.block_bounds, pending))
        workers = 0
        try:
            done = obs.num_observations - todo
            with ProgressBar(
                obs.num_observations, done, cfg.progress, label="infer", unit="obs"
            ) as bar:
                if pending and cfg.in_process:
                    _run_here(cfg, posterior, circuits, obs, store, pending, bar)
                    workers = 1
                elif pending:
                    url = None if circuits is None else circuits.url
                    workers = _run_on_ray(cfg, url, obs, store, pending, bar)
        except OSError as e:  # the driver's writes, on a full or vanished disk
            raise FarmRuntimeError(
                f"writing to {out} failed: {e.strerror or e}; finished blocks are kept, "
                "re-run the same command to resume"
            ) from None
        if lock.lost:
            raise FarmRuntimeError(
                f"another run took over the lock of {out}; re-run the same command to finish it"
            )
    seconds = time.perf_counter() - t0
    flagged = np.asarray(store.group["misspecification_flagged"][:])
    return {
        "out": out,
        "observations": obs.num_observations,
        "answered_now": todo,
        "already_done": obs.num_observations - todo,
        "seconds": seconds,
        "observations_per_second": todo / seconds if seconds > 0 else 0.0,
        "flagged": int(flagged.sum()),
        "num_draws": cfg.num_draws,
        "num_workers": workers,
        "posterior_fingerprint": posterior.fingerprint,
        "circuit_aware": circuit_aware(posterior),
        "circuits": cfg.circuits,
        "circuits_used": circuits is not None,
    }


def load_checked(directory: str) -> Any:
    """``inference.load_posterior`` with every refusal as one line naming the directory."""
    from inference import load_posterior

    try:
        return load_posterior(directory)
    except (ValueError, OSError, KeyError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FarmInputError(
            text if directory in text else f"posterior={directory!r}: {text}"
        ) from None


def _layout(
    cfg: InferConfig, posterior: Any, obs: Observations, circuits: dict[str, Any] | None
) -> InferLayout:
    manifest = posterior.manifest
    version = {
        "package_version": manifest.get("package_version"),
        "format_version": manifest.get("format_version"),
        "emulator_version": manifest.get("emulator_version"),
    }
    return InferLayout(
        num_draws=cfg.num_draws,
        block_size=cfg.block_size,
        parameter_names=tuple(posterior.parameter_names),
        chip=obs.chip,
        neuron=obs.neuron,
        identity={
            "posterior_fingerprint": posterior.fingerprint,
            "seed": cfg.seed,
            "num_draws": cfg.num_draws,
            "block_size": cfg.block_size,
            "input": obs.identity,
            "circuits": circuits,
        },
        attrs={
            "posterior_fingerprint": posterior.fingerprint,
            "posterior_version": version,
            "posterior": str(cfg.posterior),
            "posterior_variant": posterior.variant,
            "circuit_aware": circuit_aware(posterior),
            "circuits": None if circuits is None else circuits["url"],
            "seed": cfg.seed,
            "input": obs.source,
            "input_kind": obs.kind,
            "protocol": posterior.protocol.to_dict(),
            "map_method": "highest-density draw of `draws`",
        },
    )


def _run_here(
    cfg: InferConfig,
    posterior: Any,
    circuits: Any,
    obs: Observations,
    store: InferStore,
    pending: list[int],
    bar: ProgressBar,
) -> None:
    """Answer ``pending`` blocks in this process, on one torch thread as an actor does.

    Why one thread: on a shared machine torch's OpenMP threads spin at barriers for cores that
    are not free (10x slower), and one thread gives the actors' bytes exactly.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for block in pending:
            start, stop = store.block_bounds(block)
            seed = block_seed(cfg.seed, block)
            fps = fingerprints(circuits, *_ids(circuits, obs, start, stop))
            result = infer_block(posterior, obs.rows(start, stop), cfg.num_draws, seed, fps)
            store.write_block(block, result)
            store.mark_done(block)
            bar.advance(stop - start)
    finally:
        torch.set_num_threads(before)


def _ids(circuits: Any, obs: Observations, start: int, stop: int) -> tuple[Any, Any]:
    """(chip, neuron) of rows [start, stop) where circuits are read, else (None, None)."""
    if circuits is None:
        return None, None
    return obs.chip[start:stop], obs.neuron[start:stop]


def _run_on_ray(
    cfg: InferConfig,
    circuits: str | None,
    obs: Observations,
    store: InferStore,
    pending: list[int],
    bar: ProgressBar,
) -> int:
    """Answer ``pending`` blocks with one actor per CPU; returns the number of actors.

    ``circuits``: the checked circuits store's URL, which each actor opens once (None: marginal).
    """
    import ray

    from farm import connect_ray

    connect_ray(cfg.address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    num = max(1, min(cfg.num_workers or cpus, len(pending)))
    files = ray.put(artifact_files(cfg.posterior))
    remote = ray.remote(num_cpus=1)(PosteriorActor)
    actors = [remote.remote(files, 1, circuits) for _ in range(num)]
    queue, in_flight = deque(pending), {}

    def submit(actor: Any) -> None:
        block = queue.popleft()
        start, stop = store.block_bounds(block)
        seed = block_seed(cfg.seed, block)
        ids = _ids(circuits, obs, start, stop)
        ref = actor.infer.remote(block, obs.rows(start, stop), cfg.num_draws, seed, *ids)
        in_flight[ref] = actor

    try:
        for _ in range(IN_FLIGHT_PER_WORKER):
            for actor in actors:
                if queue:
                    submit(actor)
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ref)
            try:
                block, result = ray.get(ref)
            except (ray.exceptions.RayError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise FarmRuntimeError(
                    f"an inference worker failed ({first}); finished blocks are kept, "
                    "re-run the same command to resume"
                ) from None
            store.write_block(block, result)
            store.mark_done(block)
            bar.advance(result.draws.shape[0])
            if queue:
                submit(actor)
    finally:
        for actor in actors:
            ray.kill(actor)
    return num
