"""One training run: a task, stores and a config in, an artifact and its metrics out.

The single-run trainer knows nothing of ensembles: ``inference.training.ensemble`` trains K runs
through it, and ``inference.training.api.train`` chooses between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from farm.errors import FarmInputError
from farm.store.sim_store import StoreMismatch
from inference.defaults import TrainConfig
from inference.training.loop import run_training
from inference.training.tasks import Task


def train_single(
    task: Task,
    stores: Sequence[str],
    out: str,
    config: TrainConfig,
    *,
    address: str | None = None,
) -> dict[str, Any]:
    """Train one model with Ray Train and write its artifact into ``out``; re-running resumes.

    Args:
        task: the task object (``inference.training.tasks.get_task`` turns a name into one).
        stores: Zarr stores from `farm simulate`; out: the artifact directory.
        config: the run's settings; its ``task``, ``stores``, ``out`` and ``variant`` are taken
            from the task and the arguments.
        address: Ray cluster to join; None reuses an initialised Ray or starts a private one.

    Returns:
        The metrics also written into the artifact's manifest.

    Raises:
        ValueError: bad settings or stores (one line naming the value).
        TrainingError: training failed at run time.
    """
    for s in [*stores, *getattr(task, "heldout", ())]:
        if "://" not in s and not Path(s).exists():
            raise FarmInputError(
                f"store={s!r} does not exist; create it with `farm simulate --out {s}`"
            )
    if not stores:
        raise ValueError("stores=() is empty; give at least one --store")
    cfg = replace(
        config,
        task=task.name,
        stores=tuple(stores),
        out=out,
        variant=getattr(task, "features", config.variant),
    )
    try:
        task.check_inputs(list(stores))  # fail before training, not after
        return task.finalize(run_training(cfg, address=address, task=task))
    except (StoreMismatch, FileNotFoundError) as e:
        raise FarmInputError(str(e)) from None


__all__ = ["train_single"]
