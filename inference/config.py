"""Training settings: ``TrainConfig`` and the defaults every front end reads from it.

Light on purpose (no torch, no Ray): the command line imports it for ``--help`` defaults.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

#: Training tasks by name (``inference.tasks.TASKS`` maps each to its task class).
TASK_NAMES = ("classifier", "npe")
#: What the NPE's embedding reads: named statistics or the raw trace through a 1D CNN.
FEATURES = ("handcrafted", "summary-net")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything a training run needs; crosses to Ray workers as ``asdict(cfg)``.

    Args:
        task: ``classifier`` (theta -> in regime) or ``npe`` (posterior estimator).
        stores: Zarr stores to train on; out: the artifact directory (checkpoints inside).
        variant: for ``npe``: ``handcrafted`` or ``summary-net``.
        num_workers: Ray Train workers (data-parallel, DDP over gloo).
        cpus_per_worker: CPUs each worker reserves (and torch threads it uses); 0 = share the cluster.
        epochs: maximum epochs; patience: epochs without validation improvement before stopping.
        batch_size, learning_rate, val_fraction, seed: the usual.
        flow, classifier: architecture dicts (FlowConfig / ClassifierConfig fields).
        plan, stats: the data plan and standardisation, filled in by ``run_training`` on the
            driver for its workers (not part of the run's identity).
    """

    task: str
    stores: tuple[str, ...]
    out: str
    variant: str = "handcrafted"
    num_workers: int = 1
    cpus_per_worker: int = 0
    epochs: int = 30
    patience: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    seed: int = 0
    shuffle_chunks: int = 4
    progress: bool = True
    flow: dict[str, Any] = field(default_factory=dict)
    classifier: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"task={self.task!r} must be one of {', '.join(TASK_NAMES)}")
        if self.variant not in FEATURES:
            raise ValueError(f"features={self.variant!r} must be one of {', '.join(FEATURES)}")
        if not self.stores:
            raise ValueError("stores=() is empty; give at least one --store")
        object.__setattr__(self, "stores", tuple(self.stores))  # a JSON round-trip gives a list
        checks = {"num_workers": (1, 64), "epochs": (1, 10_000), "patience": (1, 10_000), "batch_size": (2, 65_536), "cpus_per_worker": (0, 256), "shuffle_chunks": (1, 1024)}
        for name, (lo, hi) in checks.items():
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"{name}={v} outside [{lo}, {hi}]")
        if not (0 < self.learning_rate < 1):
            raise ValueError(f"learning_rate={self.learning_rate} outside (0, 1)")
        if not (0 < self.val_fraction < 0.5):
            raise ValueError(f"val_fraction={self.val_fraction} outside (0, 0.5)")

    def identity(self) -> dict[str, Any]:
        """Settings that must match to resume (workers, epochs and progress may change)."""
        d = asdict(self)
        for k in ("num_workers", "cpus_per_worker", "progress", "out", "epochs", "plan", "stats"):
            d.pop(k)
        d["stores"] = list(d["stores"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return cls(**{**d, "stores": tuple(d["stores"])})


#: The defaults of the settings a user chooses (the command line shows and passes these).
TRAIN_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(TrainConfig)
    if f.default is not MISSING and f.name in ("num_workers", "epochs", "patience", "batch_size", "learning_rate", "val_fraction", "seed", "variant")
}

__all__ = ["FEATURES", "TASK_NAMES", "TRAIN_DEFAULTS", "TrainConfig"]
