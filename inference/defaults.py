"""Training settings: ``TrainConfig`` and the defaults every front end reads from it.

Light on purpose (no torch, no Ray): the command line imports it for ``--help`` defaults.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

#: Training tasks by name (``inference.training.tasks.TASKS`` maps each to its task class).
TASK_NAMES = ("classifier", "npe")
#: What the NPE's embedding reads: named statistics, the raw trace through a 1D CNN, or both
#: (hybrid).
FEATURES = ("handcrafted", "summary-net", "hybrid")
#: Store arrays each ``FEATURES`` variant's embedding reads, concatenated in this order
#: (``inference.nets.embeddings.model_input``): the hybrid sees the statistics and the trace.
INPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "handcrafted": ("features",),
    "summary-net": ("trace",),
    "hybrid": ("features", "trace"),
}
#: The hybrid's trace network, where ``--arch`` leaves a field out: the statistics already carry
#: the spikes, so a small net over the 4x averaged trace is enough to learn what they miss
#: (docs/performance.md, "Hybrid summary network"). Resolved into the run's config, so its manifest
#: records every field.
HYBRID_ARCH: dict[str, Any] = {
    "cnn_channels": (8, 16),
    "cnn_input_pool": 4,
    "embedding_features": 16,
    "cnn_pool_bins": 16,
}


def architecture_defaults(variant: str) -> dict[str, Any]:
    """Estimator fields whose default depends on the variant: the hybrid's small CNN, else ``{}``.

    Every builder of a config from a variant (the training task, the benchmarks) starts from these,
    so ``hybrid`` means the same network wherever it is built.
    """
    return dict(HYBRID_ARCH) if variant == "hybrid" else {}


#: The NPE's density estimator: a neural spline flow, or a flow-matching vector field
#: (``inference.nets.flow_matching``).
ESTIMATORS = ("nsf", "flow-matching")
#: Front ends of the summary network's CNN (``inference.nets.embeddings.TraceCNN``): ``pooled``
#: strided convs with max-pooling (artifacts without a ``cnn_stem`` were trained with it), ``patch``
#: GEMM patch merges.
CNN_STEMS = ("pooled", "patch")
#: Learning-rate schedules (``inference.training.loop.make_scheduler``).
LR_SCHEDULES = ("plateau", "cosine", "none")


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything a training run needs; crosses to Ray workers as ``asdict(cfg)``.

    Args:
        task: ``classifier`` (theta -> in regime) or ``npe`` (posterior estimator).
        stores: Zarr stores to train on; out: the artifact directory (checkpoints inside).
        variant: for ``npe``: ``handcrafted``, ``summary-net`` or ``hybrid`` (``FEATURES``).
        num_workers: Ray Train workers (data-parallel, DDP over gloo).
        cpus_per_worker: CPUs each worker reserves (and torch threads it uses); 0 = share the
            cluster.
        epochs: maximum epochs (a safety cap: early stopping ends a run, as in sbi's
            ``stop_after_epochs``).
        patience: rounds without validation improvement before stopping (sbi's default is 20
            epochs; a round is an epoch unless the epoch is longer than ``round_samples``).
        lr_schedule: ``plateau`` (halve the learning rate after ``lr_patience`` rounds without
            improvement, down to 1/64 of it), ``cosine`` (to 0 over ``epochs``) or ``none``.
        batch_size: rows per step and worker; 0 = from the data
            (``inference.training.schedule.resolve``: 256 below 1.4e5 training rows per worker,
            512 at 2e5, at most 2048, the learning rate scaled by the batch's square root).
        learning_rate, seed: the usual.
        round_samples: most training rows between two validations (and checkpoints, schedule
            steps, patience counts); an epoch of more rows is split into rounds. 0 = one round
            per epoch.
        val_rows: validation rows used, the first of the split (read once, kept in memory);
            0 = all.
        warmup_from: learning rate the first round ramps up from (set by ``resolve`` when it
            scales the rate); 0 = no warm-up.
        val_fraction, test_fraction: shares of sample indices (by hash,
            ``inference.data.datasets.split_of``) held out for validation (early stopping, the
            classifier's threshold) and for the held-out check; the rest trains.
        gpus_per_worker: GPUs each Ray Train worker reserves (0 = CPU); model and batches move
            there.
        flow, classifier: architecture dicts (FlowConfig / ClassifierConfig fields).
        plan, stats: the data plan and standardisation, filled in by ``run_training`` on the
            driver for its workers (not part of the run's identity).
        circuits: a circuits store (`farm fingerprint`) to condition an ``npe`` posterior on the
            fingerprint of each row's circuit (circuit-aware); None: circuit-marginal.
    """

    # task, stores and out default so a config can be written before them: `train(task, stores,
    # out, config=TrainConfig(epochs=50))` fills them in, as Ray Train fills in its datasets.
    task: str = "npe"
    stores: tuple[str, ...] = ()
    out: str = ""
    variant: str = "handcrafted"
    num_workers: int = 1
    cpus_per_worker: int = 0
    epochs: int = 500
    patience: int = 20
    batch_size: int = 0
    learning_rate: float = 1e-3
    lr_schedule: str = "plateau"
    lr_patience: int = 5
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    gpus_per_worker: float = 0.0
    seed: int = 0
    shuffle_chunks: int = 4
    progress: bool = True
    flow: dict[str, Any] = field(default_factory=dict)
    classifier: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    circuits: str | None = None
    round_samples: int = 50_000
    val_rows: int = 20_000
    warmup_from: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"task={self.task!r} must be one of {', '.join(TASK_NAMES)}")
        if self.variant not in FEATURES:
            raise ValueError(f"features={self.variant!r} must be one of {', '.join(FEATURES)}")
        object.__setattr__(self, "stores", tuple(self.stores))  # a JSON round-trip gives a list
        checks = {
            "num_workers": (1, 64),
            "epochs": (1, 10_000),
            "patience": (1, 10_000),
            "lr_patience": (1, 10_000),
            "batch_size": (0, 65_536),
            "round_samples": (0, 10**9),
            "val_rows": (0, 10**9),
            "cpus_per_worker": (0, 256),
            "shuffle_chunks": (1, 1024),
        }
        for name, (lo, hi) in checks.items():
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"{name}={v} outside [{lo}, {hi}]")
        if self.batch_size == 1:
            raise ValueError("batch_size=1: give 0 (from the data) or 2 and more")
        if not (0 < self.learning_rate < 1):
            raise ValueError(f"learning_rate={self.learning_rate} outside (0, 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} must be one of {', '.join(LR_SCHEDULES)}"
            )
        if not (0 < self.val_fraction < 0.5):
            raise ValueError(f"val_fraction={self.val_fraction} outside (0, 0.5)")
        if not (0 < self.test_fraction < 0.5) or self.val_fraction + self.test_fraction >= 0.5:
            raise ValueError(
                f"test_fraction={self.test_fraction} "
                f"outside (0, 0.5 - val_fraction={self.val_fraction})"
            )
        if not 0 <= self.gpus_per_worker <= 16:
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker} outside [0, 16]")
        if self.circuits is not None and self.task != "npe":
            raise ValueError(f"circuits={self.circuits!r} conditions an npe posterior only")

    def identity(self) -> dict[str, Any]:
        """Settings that must match to resume (workers, epochs and progress may change)."""
        d = asdict(self)
        for k in (
            "num_workers",
            "cpus_per_worker",
            "gpus_per_worker",
            "progress",
            "out",
            "epochs",
            "plan",
            "stats",
        ):
            d.pop(k)
        if d["circuits"] is None:  # circuit-marginal runs keep the identity they always had
            d.pop("circuits")
        for k, default in (("round_samples", 50_000), ("val_rows", 20_000), ("warmup_from", 0.0)):
            if d[k] == default:  # as do runs at the default step layout
                d.pop(k)
        d["stores"] = list(d["stores"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{**d, "stores": tuple(d["stores"])})


#: The defaults of the settings a user chooses (the command line shows and passes these).
TRAIN_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in fields(TrainConfig)
    if f.default is not MISSING
    and f.name
    in (
        "num_workers",
        "epochs",
        "patience",
        "batch_size",
        "learning_rate",
        "lr_schedule",
        "round_samples",
        "val_rows",
        "val_fraction",
        "test_fraction",
        "gpus_per_worker",
        "cpus_per_worker",
        "seed",
        "variant",
    )
}

__all__ = [
    "ESTIMATORS",
    "FEATURES",
    "HYBRID_ARCH",
    "architecture_defaults",
    "INPUT_FIELDS",
    "LR_SCHEDULES",
    "TASK_NAMES",
    "TRAIN_DEFAULTS",
    "TrainConfig",
]
