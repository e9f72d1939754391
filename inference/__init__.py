"""Amortized inference for the BSS-2 AdEx neuron: restriction classifier, NPE, Ray Train on Zarr.

``load_posterior(DIR)`` rebuilds a trained posterior from its artifact with no pickle; the
`farm train` command (``inference.cli_train``) trains and writes those artifacts.
"""

from inference.artifacts import FORMAT_VERSION
from inference.classifier import ClassifierConfig, RegimeClassifier
from inference.datasets import ChunkStream, DataPlan, StoreSet, is_validation, plan_data, quality_flags
from inference.flows import FlowConfig, NPEModel
from inference.posterior import AmortizedPosterior, load_posterior
from inference.train import TrainConfig, TrainingError, run_training

__all__ = [
    "FORMAT_VERSION",
    "AmortizedPosterior",
    "ChunkStream",
    "ClassifierConfig",
    "DataPlan",
    "FlowConfig",
    "NPEModel",
    "RegimeClassifier",
    "StoreSet",
    "TrainConfig",
    "TrainingError",
    "is_validation",
    "load_posterior",
    "plan_data",
    "quality_flags",
    "run_training",
]
