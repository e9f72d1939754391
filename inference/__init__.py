"""Amortized inference for the BSS-2 AdEx neuron: restriction classifier, NPE, Ray Train on Zarr.

``load_posterior(DIR)`` rebuilds a trained posterior from its artifact with no pickle;
``inference.training.api.train`` trains and writes those artifacts (what `farm train` runs).

Names load on first use (module ``__getattr__``): a Serve replica that only loads a posterior
never imports the trainer, Ray Train or Zarr.
"""

from __future__ import annotations

from farm.lazy import lazy_exports

#: public name -> module that defines it
_LAZY = {
    "FORMAT_VERSION": "inference.artifacts",
    "AmortizedPosterior": "inference.posteriors.amortized",
    "BasePosterior": "inference.posteriors.base",
    "EnsemblePosterior": "inference.posteriors.ensemble",
    "load_posterior": "inference.posteriors.loader",
    "ArtifactError": "inference.errors",
    "TrainingError": "inference.errors",
    "TRAIN_DEFAULTS": "inference.defaults",
    "TrainConfig": "inference.defaults",
    "ClassifierConfig": "inference.nets.classifier",
    "RegimeClassifier": "inference.nets.classifier",
    "FlowConfig": "inference.nets.nsf",
    "NPEModel": "inference.nets.nsf",
    "ChunkStream": "inference.data.datasets",
    "DataPlan": "inference.data.datasets",
    "StoreSet": "inference.data.datasets",
    "is_validation": "inference.data.splits",
    "plan_data": "inference.data.datasets",
    "quality_flags": "inference.data.quality",
    "ClassifierTask": "inference.training.tasks",
    "NPETask": "inference.training.tasks",
    "get_task": "inference.training.tasks",
    "run_training": "inference.training.loop",
    "train": "inference.training.api",
    "split_of": "inference.data.splits",
    "split_rows": "inference.data.heldout",
    "PriorMismatch": "inference.data.datasets",
    "RejectionBudgetExceeded": "inference.errors",
    "format_metrics": "inference.training.api",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
