"""The library entry point of training: a task, stores, an output directory and a config.

This is what `farm train classifier|npe` calls; the command line only parses options and maps
``ValueError`` (bad input, exit 2) and ``TrainingError`` (run-time failure, exit 1). It picks the
single-run trainer (``inference.training.trainer``) or the ensemble on top of it
(``inference.training.ensemble``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from farm.errors import FarmInputError
from inference.defaults import TrainConfig
from inference.errors import TrainingError
from inference.posteriors.ensemble import is_ensemble
from inference.training.ensemble import check_members, format_ensemble_metrics, train_ensemble
from inference.training.tasks import Task, get_task
from inference.training.trainer import train_single

#: Keyword arguments `train` took before ``config`` -> the ``TrainConfig`` field each sets.
#: ``quiet`` sets ``progress`` (negated). Old callers keep working; the defaults stay in
#: ``TrainConfig`` alone.
LEGACY_KEYWORDS = {
    "workers": "num_workers",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "patience": "patience",
    "val_fraction": "val_fraction",
    "seed": "seed",
    "cpus_per_worker": "cpus_per_worker",
    "gpus_per_worker": "gpus_per_worker",
}


def train(
    task: str | Task,
    stores: Sequence[str],
    out: str,
    config: TrainConfig | None = None,
    *,
    address: str | None = None,
    ensemble: int = 1,
    **legacy: Any,
) -> dict[str, Any]:
    """Train one model (or an ensemble of K) with Ray Train into ``out``; re-running resumes.

    As Ray's trainers take a ``ScalingConfig``/``RunConfig``, this takes one ``TrainConfig``:
    ``train("npe", stores, out, config=TrainConfig(epochs=50, num_workers=2))``. ``address`` and
    ``ensemble`` stay keyword arguments, not config fields: the config is what one run's workers
    receive and what a resumed run is checked against, while the cluster to join and the number
    of runs only say how runs are launched.

    Args:
        task: ``"classifier"``, ``"npe"`` (default options) or a task object, e.g.
            ``NPETask(features="summary-net", prior="artifacts/restricted")`` or
            ``ClassifierTask(target_recall=0.99, heldout=("runs/heldout.zarr",))``.
        stores: Zarr stores from `farm simulate`; out: the artifact directory.
        config: the settings (``TrainConfig``; its task, stores and out come from the arguments);
            None: the defaults. ``config.progress=False`` is the command line's ``--quiet``.
        address: Ray cluster to join; None starts a private local Ray.
        ensemble: K in [1, 16]; K > 1 trains K posteriors (seeds seed..seed+K-1, in parallel when
            the cluster has room) whose equal mixture ``load_posterior(out)`` returns.
        legacy: the keyword arguments of old callers (``workers=``, ``epochs=``, ``quiet=``, ...;
            ``LEGACY_KEYWORDS``), applied on top of ``config``.

    Returns:
        The metrics also written into the artifact's manifest.

    Raises:
        ValueError: bad settings or stores (one line naming the value).
        TrainingError: training failed at run time.
    """
    cfg = config_with_legacy(config, legacy)
    t = get_task(task)
    if ensemble != 1 and cfg.circuits is not None:
        raise FarmInputError(
            f"ensemble={ensemble} with circuits: circuit-aware ensembles are not supported; "
            "train one posterior (ensemble=1)"
        )
    if ensemble != 1:
        return train_ensemble(t, stores, out, check_members(ensemble), cfg, address=address)
    if is_ensemble(out):
        raise FarmInputError(
            f"out={out!r} holds an ensemble; pass the same --ensemble K to resume it, "
            "or another --out"
        )
    return train_single(t, stores, out, cfg, address=address)


def config_with_legacy(config: TrainConfig | None, legacy: dict[str, Any]) -> TrainConfig:
    """``config`` (default: ``TrainConfig()``) with the old keyword arguments of ``train`` applied.

    Raises:
        TypeError: a keyword ``train`` never took, as Python names it.
    """
    for name in legacy:
        if name not in LEGACY_KEYWORDS and name != "quiet":
            raise TypeError(f"train() got an unexpected keyword argument {name!r}")
    fields = {LEGACY_KEYWORDS[k]: v for k, v in legacy.items() if k in LEGACY_KEYWORDS}
    if "quiet" in legacy:
        fields["progress"] = not legacy["quiet"]
    base = TrainConfig() if config is None else config
    return replace(base, **fields) if fields else base


def format_metrics(task: str | Task, out: str, metrics: dict[str, Any]) -> str:
    """A few human lines for the terminal (the full metrics are in the manifest)."""
    if "ensemble" in metrics:
        return format_ensemble_metrics(out, metrics)
    return get_task(task).format_metrics(out, metrics)


__all__ = ["LEGACY_KEYWORDS", "TrainingError", "config_with_legacy", "format_metrics", "train"]
