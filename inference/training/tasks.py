"""Training tasks: what a run reads, which network it fits with which loss, and what it writes.

Anchor: sbi's ``RestrictionEstimator`` / ``NPE`` take their network as a name or a builder, and the
trainer stays apart from the estimator. Here a task object carries that knowledge, so the Ray
Train loop (``inference.training.loop``) and the single-run trainer (``inference.training.trainer``)
hold no string switches. A task is chosen by name (``get_task("npe", features="summary-net")``)
or given as an object; it is rebuilt on each worker from the run's ``TrainConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from farm.errors import FarmInputError
from inference.defaults import (
    ESTIMATORS,
    FEATURES,
    INPUT_FIELDS,
    TASK_NAMES,
    TrainConfig,
    architecture_defaults,
)
from inference.errors import TrainingError
from inference.nets.classifier import ClassifierConfig, RegimeClassifier, box_moments
from inference.nets.embeddings import model_input
from inference.nets.flow_matching import ESTIMATOR as FM_ESTIMATOR
from inference.nets.flow_matching import FlowMatchingConfig, FlowMatchingModel
from inference.nets.nsf import FlowConfig, NPEModel

if TYPE_CHECKING:
    from inference.data.datasets import DataPlan
    from inference.training.outcome import TrainOutcome


class Task(Protocol):
    """What the trainer needs to know about a task (ClassifierTask and NPETask implement it)."""

    name: ClassVar[str]
    #: Per-row validation metrics besides the loss, averaged over rows (``val_accuracy``).
    extra_metrics: ClassVar[tuple[str, ...]]

    def configure(self, cfg: TrainConfig) -> TrainConfig: ...
    def fields(self) -> tuple[str, ...]: ...
    def build_model(self, cfg: TrainConfig, stats: dict[str, Any]) -> torch.nn.Module: ...
    def batch_loss(
        self, model: torch.nn.Module, batch: dict[str, np.ndarray]
    ) -> tuple[torch.Tensor, dict[str, float]]: ...
    def check_inputs(self, stores: list[str]) -> None: ...
    def check_plan(self, cfg: TrainConfig, plan: DataPlan) -> None: ...
    def finalize(self, outcome: TrainOutcome) -> dict[str, Any]: ...
    def format_metrics(self, out: str, metrics: dict[str, Any]) -> str: ...


def _tensor(a: np.ndarray, model: torch.nn.Module | None = None) -> torch.Tensor:
    """A batch array as a tensor on the model's device (a GPU worker's, or the CPU)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    p = next(model.parameters(), None) if model is not None else None
    return t if p is None or p.device.type == "cpu" else t.to(p.device, non_blocking=True)


@dataclass(frozen=True)
class ClassifierTask:
    """The restriction classifier: theta -> P(spike count in the regime), binary cross-entropy.

    Args:
        target_recall: share of in-regime validation samples the restricted prior keeps, in
            [0.5, 1].
        heldout: stores from the box prior to report recall/precision on.
        architecture: ``ClassifierConfig`` fields overriding its defaults.
    """

    target_recall: float = 0.99
    heldout: tuple[str, ...] = ()
    architecture: dict[str, Any] = field(default_factory=dict)
    name: ClassVar[str] = "classifier"
    extra_metrics: ClassVar[tuple[str, ...]] = ("val_accuracy",)

    def __post_init__(self) -> None:
        if not 0.5 <= self.target_recall <= 1.0:
            raise ValueError(f"target_recall={self.target_recall} outside [0.5, 1]")
        object.__setattr__(self, "heldout", tuple(self.heldout or ()))

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> ClassifierTask:
        return cls(architecture=dict(cfg.classifier))

    def configure(self, cfg: TrainConfig) -> TrainConfig:
        return replace(cfg, task=self.name, classifier=dict(self.architecture) or cfg.classifier)

    def fields(self) -> tuple[str, ...]:
        return ("theta", "label")

    def build_model(self, cfg: TrainConfig, stats: dict[str, Any]) -> torch.nn.Module:
        mean, std = box_moments(np.asarray(stats["low"]), np.asarray(stats["high"]))
        return RegimeClassifier(ClassifierConfig(**cfg.classifier), mean, std)

    def batch_loss(
        self, model: torch.nn.Module, batch: dict[str, np.ndarray]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        label = _tensor(batch["label"], model)
        logit = model(_tensor(batch["theta"], model))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, label)
        return loss, {"val_accuracy": float(((logit > 0).float() == label).sum())}

    def check_inputs(self, stores: list[str]) -> None:
        return None

    def check_plan(self, cfg: TrainConfig, plan: DataPlan) -> None:
        return None

    def finalize(self, outcome: TrainOutcome) -> dict[str, Any]:
        from inference.training.restricted_prior import finalize_classifier

        return finalize_classifier(
            outcome, target_recall=self.target_recall, heldout=list(self.heldout) or None
        )

    def format_metrics(self, out: str, metrics: dict[str, Any]) -> str:
        v = metrics["validation"]
        lines = [
            f"restricted prior written to {out} (farm simulate --prior {out})",
            f"validation: recall {v['recall']:.3f}  precision {v['precision']:.3f}  at threshold "
            f"logit {metrics['threshold_logit']:.3f}",
            f"acceptance from the box {metrics['acceptance_rate']:.3f}; in regime: box "
            f"{metrics['box_in_regime_fraction']:.3f} -> restricted "
            f"{metrics['restricted_in_regime_fraction']:.3f}",
        ]
        if "test" in metrics:
            t = metrics["test"]
            lines.insert(
                2,
                f"test split: recall {t['recall']:.3f}  precision {t['precision']:.3f}  "
                f"({t['num_samples']} samples not used to train or to pick the threshold)",
            )
        if "heldout" in metrics:
            h = metrics["heldout"]
            lines.insert(
                2,
                f"held-out: recall {h['recall']:.3f}  precision {h['precision']:.3f}  "
                f"({h['num_samples']} samples)",
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class NPETask:
    """Amortized neural posterior estimation: embedding + a conditional density estimator of theta.

    Args:
        features: ``handcrafted`` (the store's named statistics), ``summary-net`` (a CNN on the
            trace) or ``hybrid`` (the statistics beside a small CNN on the trace).
        prior: the restricted prior directory the store was simulated from
            (``farm train classifier --out``).
        flow: architecture fields overriding the estimator's defaults (``FlowConfig`` or
            ``FlowMatchingConfig``).
        estimator: ``nsf`` (neural spline flow, loss -log q(theta | x)) or ``flow-matching``
            (a vector field, flow-matching regression loss; Wildberger et al. 2023).
        circuit_statistics: fingerprint statistics each row carries (``TrainConfig.circuits``
            sets it in ``configure``); 0 = circuit-marginal.
    """

    features: str = "handcrafted"
    prior: str | None = None
    flow: dict[str, Any] = field(default_factory=dict)
    estimator: str = "nsf"
    circuit_statistics: int = 0
    name: ClassVar[str] = "npe"
    extra_metrics: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features={self.features!r} must be one of {', '.join(FEATURES)}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator={self.estimator!r} must be one of {', '.join(ESTIMATORS)}")

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> NPETask:
        # the estimator travels in the architecture dict: an NSF run's config (and artifact) stays
        # as before
        return cls(
            features=cfg.variant,
            flow=dict(cfg.flow),
            estimator=cfg.flow.get("estimator", "nsf"),
            circuit_statistics=int(cfg.flow.get("circuit_statistics", 0)),
        )

    @property
    def x_fields(self) -> tuple[str, ...]:
        """Arrays the embedding reads: the store's, then the circuit's statistics if aware."""
        return INPUT_FIELDS[self.features] + (("circuit",) if self.circuit_statistics else ())

    def flow_config(self, cfg: TrainConfig) -> FlowConfig | FlowMatchingConfig:
        """The estimator's config: its defaults (``architecture_defaults``), then ``cfg.flow``."""
        d = (
            architecture_defaults(self.features)
            | {k: v for k, v in cfg.flow.items() if k != "estimator"}
            | {"variant": self.features}
        )
        if "cnn_channels" in d:
            d["cnn_channels"] = tuple(d["cnn_channels"])
        return FlowMatchingConfig(**d) if self.estimator == FM_ESTIMATOR else FlowConfig(**d)

    def configure(self, cfg: TrainConfig) -> TrainConfig:
        """Record the resolved architecture, so a change of defaults cannot resume silently."""
        flow = {k: v for k, v in {**cfg.flow, **self.flow}.items() if k != "estimator"}
        flow.pop("circuit_statistics", None)
        if cfg.circuits is not None:
            flow["circuit_statistics"] = circuit_statistic_count(cfg.circuits)
        cfg = replace(cfg, task=self.name, variant=self.features, flow=flow)
        return replace(
            cfg, flow={k: v for k, v in self.flow_config(cfg).to_dict().items() if k != "variant"}
        )

    def fields(self) -> tuple[str, ...]:
        return ("theta", *self.x_fields)

    def build_model(self, cfg: TrainConfig, stats: dict[str, Any]) -> torch.nn.Module:
        arch = self.flow_config(cfg)
        return (
            FlowMatchingModel(arch, stats)
            if isinstance(arch, FlowMatchingConfig)
            else NPEModel(arch, stats)
        )

    def batch_loss(
        self, model: torch.nn.Module, batch: dict[str, np.ndarray]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return model(
            _tensor(batch["theta"], model), _tensor(model_input(batch, self.x_fields), model)
        ), {}

    def check_inputs(self, stores: list[str]) -> None:
        """Refuse a --prior that is not the store's before training, not after."""
        from inference.data.datasets import StoreSet
        from inference.documents import RestrictedPriorDocument, read_document
        from inference.training.npe_artifact import resolve_prior

        if self.prior is not None:
            path = Path(self.prior) / "restricted_prior.json"
            if not path.is_file():
                raise FarmInputError(
                    f"prior={self.prior!r} has no restricted_prior.json; pass the --out directory "
                    "of `farm train classifier`"
                )
            read_document(path, RestrictedPriorDocument)
        resolve_prior(StoreSet(stores).priors[0], self.prior)

    def check_plan(self, cfg: TrainConfig, plan: DataPlan) -> None:
        if plan.num_train < cfg.batch_size * cfg.num_workers:
            raise TrainingError(
                f"{plan.num_train} training samples < batch_size {cfg.batch_size} x workers "
                f"{cfg.num_workers}; lower --batch-size"
            )

    def finalize(self, outcome: TrainOutcome) -> dict[str, Any]:
        from inference.training.npe_artifact import finalize_npe

        return finalize_npe(outcome, prior_dir=self.prior)

    def format_metrics(self, out: str, metrics: dict[str, Any]) -> str:
        h = metrics["heldout"]
        if not h.get("num_observations"):
            return (
                f"{self.estimator} posterior written to {out} (best epoch {metrics['best_epoch']} "
                f"of {metrics['epochs_trained']}); the test split is empty: no held-out check"
            )
        return "\n".join(
            [
                f"{self.estimator} posterior written to {out} (best epoch {metrics['best_epoch']} "
                f"of {metrics['epochs_trained']}, val loss {metrics['best_val_loss']:.4f})",
                f"held-out check on {h['num_observations']} test-split observations: "
                f"{int(h['level'] * 100)}% interval coverage {h['coverage']:.2f}, mean width "
                f"{h['relative_width']:.3f} of the prior box",
            ]
        )


def circuit_statistic_count(circuits: str) -> int:
    """How many statistics a fingerprint of the circuits store's references yields."""
    from farm.circuits.statistics import statistic_names
    from farm.circuits.store import FingerprintStore

    try:
        return len(statistic_names(FingerprintStore.open(circuits).references))
    except FileNotFoundError as e:
        raise FarmInputError(str(e)) from None


#: Tasks by name; a new estimator adds its class here (and its name to ``config.TASK_NAMES``).
TASKS: dict[str, type[ClassifierTask] | type[NPETask]] = {
    t.name: t for t in (ClassifierTask, NPETask)
}
assert tuple(TASKS) == TASK_NAMES, "config.TASK_NAMES and tasks.TASKS must list the same tasks"


def get_task(task: str | Task, **options: Any) -> Task:
    """A task object from its name and options, or the object itself.

    Raises:
        ValueError: an unknown name, or options given with an object.
    """
    if not isinstance(task, str):
        if options:
            raise ValueError(
                f"options {sorted(options)} given with a task object; set them on the object"
            )
        return task
    if task not in TASKS:
        raise ValueError(f"task={task!r} must be one of {', '.join(TASKS)}")
    return TASKS[task](**options)


def task_for(cfg: TrainConfig) -> Task:
    """The task a worker rebuilds from its config (architecture only, no driver-side options)."""
    return TASKS[cfg.task].from_config(cfg)


__all__ = ["TASKS", "ClassifierTask", "NPETask", "Task", "get_task", "task_for"]
