"""How a run's steps are laid out: batch size and learning rate from N, rounds, warm-up.

Why not whole epochs: validation, the learning-rate schedule, early stopping and checkpoints all
happen once per epoch, and an epoch of 1e6 rows is ~30 minutes on 2 cores. So the training rows of
an epoch are split into *rounds* of at most ``TrainConfig.round_samples`` rows (a round reads one
share of the epoch's shuffled chunks), and everything that used to happen per epoch happens per
round: patience and ``lr_patience`` count samples seen, not passes. A store whose training rows fit
in one round (tests, ``make demo``) keeps one round per epoch, so small runs step exactly as before.

The batch grows with the data (``batch_size=0``): 256 times the power of two nearest to (training
rows per worker / ``REFERENCE_ROWS``), from 256 to ``MAX_AUTO_BATCH``; fewer, larger steps are
cheaper per row on a CPU. The learning rate grows with the square root of the batch (the noise of a
gradient shrinks so), reached by a linear warm-up over the first round from the rate given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from inference.defaults import TrainConfig

#: Training rows per worker at which the batch is ``REFERENCE_BATCH`` (and the rate as given).
REFERENCE_ROWS = 100_000
#: The batch size the given learning rate belongs to.
REFERENCE_BATCH = 256
#: The largest batch the data chooses.
MAX_AUTO_BATCH = 2048


def auto_batch_size(num_train: int, num_workers: int) -> int:
    """Batch per worker for ``num_train`` training rows: 256 x the power of two nearest rows / 1e5.

    512 at a 2e5 store's 1.6e5 training rows, 2048 at a 1e6 store's 8e5; 256 below 1.4e5.
    """
    per_worker = num_train / max(1, num_workers)
    doublings = max(0, round(math.log2(max(per_worker, 1) / REFERENCE_ROWS)))
    return min(MAX_AUTO_BATCH, REFERENCE_BATCH * 2**doublings)


def resolve(cfg: TrainConfig, num_train: int) -> TrainConfig:
    """``cfg`` with ``batch_size=0`` replaced by the data's batch and the rate scaled to it.

    The result is what the run records (and resumes by): a small store resolves to batch 256 at
    the rate given, the configuration runs had before the batch followed the data.
    """
    if cfg.batch_size:
        return cfg
    batch = auto_batch_size(num_train, cfg.num_workers)
    if batch == REFERENCE_BATCH:
        return replace(cfg, batch_size=batch)
    lr = cfg.learning_rate * math.sqrt(batch / REFERENCE_BATCH)
    return replace(cfg, batch_size=batch, learning_rate=min(lr, 0.9), warmup_from=cfg.learning_rate)


@dataclass(frozen=True)
class Rounds:
    """Steps of a run: ``parts`` rounds per epoch of ``steps`` steps each (every worker)."""

    parts: int
    steps: int
    warmup_steps: int

    @classmethod
    def plan(cls, cfg: TrainConfig, num_train: int, world: int, num_chunks: int) -> Rounds:
        """Rounds of at most ``cfg.round_samples`` rows (0: one per epoch); warm-up: one round.

        A round needs a chunk per worker at least, so stores of few, large chunks get fewer.
        """
        parts = max(1, math.ceil(num_train / cfg.round_samples)) if cfg.round_samples else 1
        parts = max(1, min(parts, num_chunks // max(1, world)))
        steps = max(1, num_train // (parts * world * cfg.batch_size))
        return cls(parts, steps, steps if cfg.warmup_from else 0)

    def lr_at(self, cfg: TrainConfig, step: int) -> float | None:
        """The warm-up's learning rate at global step ``step``; None once it is over."""
        if step >= self.warmup_steps:
            return None
        frac = (step + 1) / self.warmup_steps
        return cfg.warmup_from + frac * (cfg.learning_rate - cfg.warmup_from)


__all__ = ["MAX_AUTO_BATCH", "REFERENCE_BATCH", "REFERENCE_ROWS", "Rounds", "auto_batch_size"]
