"""Amortized inference for the BSS-2 AdEx neuron: restriction classifier, NPE, Ray Train on Zarr.

``load_posterior(DIR)`` rebuilds a trained posterior from its artifact with no pickle;
``inference.training.train`` trains and writes those artifacts (what `farm train` runs).

Names load on first use (module ``__getattr__``): a Serve replica that only loads a posterior
never imports the trainer, Ray Train or Zarr.
"""

from __future__ import annotations

from farm.lazy import lazy_exports

#: public name -> module that defines it
_LAZY = {
    "FORMAT_VERSION": "inference.artifacts",
    "AmortizedPosterior": "inference.posterior",
    "load_posterior": "inference.posterior",
    "ArtifactError": "inference.errors",
    "TrainingError": "inference.errors",
    "TRAIN_DEFAULTS": "inference.config",
    "TrainConfig": "inference.config",
    "ClassifierConfig": "inference.classifier",
    "RegimeClassifier": "inference.classifier",
    "FlowConfig": "inference.flows",
    "NPEModel": "inference.flows",
    "ChunkStream": "inference.datasets",
    "DataPlan": "inference.datasets",
    "StoreSet": "inference.datasets",
    "is_validation": "inference.splits",
    "plan_data": "inference.datasets",
    "quality_flags": "inference.quality",
    "ClassifierTask": "inference.tasks",
    "NPETask": "inference.tasks",
    "get_task": "inference.tasks",
    "run_training": "inference.train",
    "train": "inference.training",
    "split_of": "inference.splits",
    "split_rows": "inference.heldout",
    "PriorMismatch": "inference.datasets",
    "RejectionBudgetExceeded": "inference.errors",
    "format_metrics": "inference.training",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
