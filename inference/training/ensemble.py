"""Train an ensemble: K NPE members with seeds seed, seed+1, ..., in parallel when Ray has room.

Each member is an ordinary `farm train npe` run into ``<out>/member-<k>/`` (its own checkpoints,
so re-running the same command resumes every member); ``ensemble.json`` is written once all
members are done. Member 0 is exactly the single posterior the same command without
``--ensemble`` trains, which makes "ensemble vs one member" a like-for-like comparison.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from farm.errors import FarmInputError, FarmRuntimeError
from farm.run.raycluster import connect_ray
from inference.defaults import TrainConfig
from inference.errors import TrainingError
from inference.posteriors.ensemble import MAX_MEMBERS, member_dir, write_ensemble
from inference.training.tasks import NPETask, Task
from inference.training.trainer import train_single


def check_members(num_members: Any) -> int:
    """``num_members`` as an int in [1, 16], or a one-line ValueError."""
    if (
        isinstance(num_members, bool)
        or not isinstance(num_members, int)
        or not 1 <= num_members <= MAX_MEMBERS
    ):
        raise FarmInputError(f"ensemble={num_members!r} outside [1, {MAX_MEMBERS}] members")
    return num_members


def _train_member(task: Task, stores: list[str], out: str, config: TrainConfig) -> dict[str, Any]:
    """One member, in the driver or in a Ray task: the single-run trainer."""
    return train_single(task, stores, out, config)


def train_ensemble(
    task: Task,
    stores: Sequence[str],
    out: str,
    num_members: int,
    config: TrainConfig,
    *,
    address: str | None = None,
) -> dict[str, Any]:
    """Train ``num_members`` posteriors and write the ensemble artifact into ``out``.

    Args:
        task: an ``NPETask`` (ensembles are of posteriors only).
        stores, out, address: as ``inference.training.trainer.train_single``.
        num_members: K in [1, 16].
        config: every member's settings; member k uses seed ``config.seed + k``.

    Returns:
        ``{"ensemble": {num_members, seeds, parallel, members: [member metrics]}, ...}`` with
        member 0's data counts and the members' mean best validation loss.

    Raises:
        ValueError: bad settings (one line); TrainingError: a member failed (the others keep
            their checkpoints).
    """
    import ray

    check_members(num_members)
    if not isinstance(task, NPETask):
        raise FarmInputError(
            f"ensemble={num_members} given for task={task.name!r}; "
            "only npe posteriors form ensembles"
        )
    root = Path(out).absolute()
    if (root / "manifest.json").is_file() or (root / "train_config.json").is_file():
        raise FarmInputError(
            f"out={out!r} holds a single posterior; give the ensemble another --out"
        )
    # members may train in Ray tasks with another working directory: every path becomes absolute
    stores = [s if "://" in s else str(Path(s).absolute()) for s in stores]
    task = replace(task, prior=None if task.prior is None else str(Path(task.prior).absolute()))
    seeds = [config.seed + k for k in range(num_members)]
    workers, quiet = config.num_workers, not config.progress
    started = False
    if not ray.is_initialized():
        # as inference.training.loop: workers print their own progress
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        try:
            started = connect_ray(
                address,
                quiet=quiet,
                log_level=logging.ERROR,
                object_store_memory=None,
                configure_logging=False,
            )
        except Exception as e:  # e.g. a raylet that did not start on an overloaded node: one line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainingError(
                f"could not start or join Ray (address={address or 'local'}): {reason}; "
                "re-run to retry"
            ) from None
    try:
        free = int(ray.available_resources().get("CPU", 0))
        # every worker of every member gets at least one CPU
        parallel = free >= num_members * workers
        if parallel:
            per_worker = free // (num_members * workers)
            # the member's driver; its Train workers hold the CPUs
            fit = ray.remote(num_cpus=0, max_retries=0)(_train_member)
            refs = [
                fit.remote(
                    task,
                    stores,
                    str(root / member_dir(k)),
                    replace(config, seed=s, cpus_per_worker=per_worker),
                )
                for k, s in enumerate(seeds)
            ]
            members = [_get(ray, ref, k) for k, ref in enumerate(refs)]
        else:
            # one member at a time: each takes the whole cluster (cpus_per_worker=0)
            members = [
                _train_member(
                    task,
                    stores,
                    str(root / member_dir(k)),
                    replace(config, seed=s, cpus_per_worker=0),
                )
                for k, s in enumerate(seeds)
            ]
    finally:
        if started:
            ray.shutdown()
    losses = [float(m["best_val_loss"]) for m in members]
    metrics = {
        "num_train": members[0].get("num_train"),
        "num_val": members[0].get("num_val"),
        "best_val_loss": sum(losses) / len(losses),
        "ensemble": {
            "num_members": num_members,
            "seeds": seeds,
            "parallel": parallel,
            "members": members,
        },
    }
    write_ensemble(root, seeds, metrics)
    return metrics


def _get(ray: Any, ref: Any, k: int) -> dict[str, Any]:
    """A member's metrics; its typed error re-raised as one line (not Ray's task traceback)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        line = (
            str(cause).strip().splitlines()[0]
            if cause is not None and str(cause).strip()
            else type(e).__name__
        )
        if isinstance(cause, FarmInputError):
            raise FarmInputError(line) from None
        if isinstance(cause, FarmRuntimeError):
            raise TrainingError(f"member {k}: {line}") from None
        raise TrainingError(f"member {k} failed: {type(cause).__name__}: {line}") from None


def format_ensemble_metrics(out: str, metrics: dict[str, Any]) -> str:
    """Human lines for `farm train npe --ensemble K`: one per member, then where the mixture is."""
    e = metrics["ensemble"]
    mode = "parallel" if e["parallel"] else "sequential"
    lines = [f"ensemble of {e['num_members']} posteriors written to {out} ({mode} Ray Train runs)"]
    for k, (s, m) in enumerate(zip(e["seeds"], e["members"], strict=True)):
        h = m.get("heldout", {})
        cov = f", {int(h['level'] * 100)}% coverage {h['coverage']:.2f}" if "coverage" in h else ""
        lines.append(
            f"  member {k} (seed {s}): best epoch {m['best_epoch']} of {m['epochs_trained']}, "
            f"val loss {m['best_val_loss']:.4f}{cov}"
        )
    return "\n".join(lines)


__all__ = ["check_members", "format_ensemble_metrics", "train_ensemble"]
