"""What a finished Ray Train run hands its driver: the best weights, the history, the data plan.

A module of its own so the loop that fills it (``loop``) and the tasks and artifact writers that
read it (``tasks``, ``npe_artifact``, ``restricted_prior``) share one type without importing
each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from inference.data.datasets import DataPlan, StoreSet
from inference.defaults import TrainConfig

#: Builds the (untrained) network of a run from its config and standardisation: the task's
#: ``build_model``, as each worker rebuilds it from ``TrainConfig``.
ModelBuilder = Callable[[TrainConfig, dict[str, Any]], torch.nn.Module]


@dataclass
class TrainOutcome:
    """The driver's result of one training run.

    Args:
        config: the run's resolved config (``cfg.out`` is the artifact directory).
        plan: the data plan (splits, standardisation, excluded rows).
        stats: the standardisation and box bounds the model was built from.
        state: the last checkpoint's state (``best_model``, ``history``, ``best_val``, ...).
        stores: the opened training stores.
        build_model: the network builder, so ``best_model`` needs no task registry.
    """

    config: TrainConfig
    plan: DataPlan
    stats: dict[str, Any]
    state: dict[str, Any]
    stores: StoreSet
    build_model: ModelBuilder

    def best_model(self) -> torch.nn.Module:
        """The network with the weights of the best validation epoch, in eval mode."""
        model = self.build_model(self.config, self.stats)
        model.load_state_dict(self.state["best_model"])
        return model.eval()

    def summary(self) -> dict[str, Any]:
        """What every finished training reports: best epoch and loss, epochs run, split sizes."""
        return {
            "best_val_loss": self.state["best_val"],
            "best_epoch": self.state["best_epoch"] + 1,
            "epochs_trained": len(self.state["history"]),
            "resumed_at_epochs": self.state["resumed_at"],
            "num_train": self.plan.num_train,
            "num_val": self.plan.num_val,
            "num_test": self.plan.num_test,
        }


__all__ = ["ModelBuilder", "TrainOutcome"]
