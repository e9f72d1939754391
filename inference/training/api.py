"""The library entry point of training: a task (by name or object), stores, an output directory -> metrics.

This is what `farm train classifier|npe` calls; the command line only parses options and maps
``ValueError`` (bad input, exit 2) and ``TrainingError`` (run-time failure, exit 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm.errors import FarmInputError
from farm.store.sim_store import StoreMismatch
from inference.defaults import TRAIN_DEFAULTS, TrainConfig
from inference.errors import TrainingError
from inference.training.loop import run_training
from inference.training.tasks import Task, get_task

_D = TRAIN_DEFAULTS


def train(
    task: str | Task,
    stores: list[str],
    out: str,
    *,
    workers: int = _D["num_workers"],
    epochs: int = _D["epochs"],
    batch_size: int = _D["batch_size"],
    learning_rate: float = _D["learning_rate"],
    patience: int = _D["patience"],
    val_fraction: float = _D["val_fraction"],
    seed: int = _D["seed"],
    address: str | None = None,
    quiet: bool = False,
    ensemble: int = 1,
    cpus_per_worker: int = 0,
    gpus_per_worker: float = _D["gpus_per_worker"],
) -> dict[str, Any]:
    """Train one model with Ray Train and write its artifact into ``out``; re-running resumes.

    Args:
        task: ``"classifier"``, ``"npe"`` (default options) or a task object, e.g.
            ``NPETask(features="summary-net", prior="artifacts/restricted")`` or
            ``ClassifierTask(target_recall=0.99, heldout=("runs/heldout.zarr",))``.
        stores: Zarr stores from `farm simulate`; out: the artifact directory.
        workers, epochs, batch_size, learning_rate, patience, val_fraction, seed: see ``TrainConfig``.
        address: Ray cluster to join; None starts a private local Ray.
        quiet: no per-epoch progress lines.
        ensemble: K in [1, 16]; K > 1 trains K posteriors (seeds seed..seed+K-1, in parallel when
            the cluster has room) whose equal mixture ``load_posterior(out)`` returns
            (``inference.posteriors.ensemble``).
        cpus_per_worker: CPUs each Ray Train worker reserves; 0 = the cluster's CPUs / workers.
        gpus_per_worker: GPUs each Ray Train worker reserves (0: CPU); the model and batches move there.

    Returns:
        The metrics also written into the artifact's manifest.

    Raises:
        ValueError: bad settings or stores (one line naming the value).
        TrainingError: training failed at run time.
    """
    t = get_task(task)
    if ensemble != 1:
        from inference.training.ensemble import check_members, train_ensemble

        return train_ensemble(
            t,
            stores,
            out,
            check_members(ensemble),
            seed=seed,
            workers=workers,
            address=address,
            quiet=quiet,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            patience=patience,
            val_fraction=val_fraction,
            gpus_per_worker=gpus_per_worker,
        )
    if (Path(out) / "ensemble.json").is_file():
        raise FarmInputError(
            f"out={out!r} holds an ensemble; pass the same --ensemble K to resume it, or another --out"
        )
    for s in stores:
        if "://" not in s and not Path(s).exists():
            raise FarmInputError(
                f"store={s!r} does not exist; create it with `farm simulate --out {s}`"
            )
    for s in getattr(t, "heldout", ()):
        if "://" not in s and not Path(s).exists():
            raise FarmInputError(
                f"store={s!r} does not exist; create it with `farm simulate --out {s}`"
            )
    cfg = TrainConfig(
        task=t.name,
        stores=tuple(stores),
        out=out,
        variant=getattr(t, "features", _D["variant"]),
        num_workers=workers,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        val_fraction=val_fraction,
        seed=seed,
        progress=not quiet,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
    )
    try:
        t.check_inputs(list(stores))  # fail before training, not after
        return t.finalize(run_training(cfg, address=address, task=t))
    except (StoreMismatch, FileNotFoundError) as e:
        raise FarmInputError(str(e)) from None


def format_metrics(task: str | Task, out: str, metrics: dict[str, Any]) -> str:
    """A few human lines for the terminal (the full metrics are in the manifest)."""
    if "ensemble" in metrics:
        from inference.training.ensemble import format_ensemble_metrics

        return format_ensemble_metrics(out, metrics)
    return get_task(task).format_metrics(out, metrics)


__all__ = ["TrainingError", "format_metrics", "train"]
