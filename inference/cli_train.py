"""What `farm train classifier|npe` runs: validate, train with Ray Train, write the artifact.

farm/cli.py imports this lazily and maps ``ValueError`` to exit code 2 (bad input) and
``TrainingError`` to exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm.store import StoreMismatch
from inference.train import TrainConfig, TrainingError, run_training


def train_command(task: str, stores: list[str], out: str, *, variant: str = "handcrafted", workers: int = 1, epochs: int = 30, batch_size: int = 256,
                  learning_rate: float = 1e-3, patience: int = 5, val_fraction: float = 0.1, seed: int = 0, address: str | None = None,
                  prior: str | None = None, heldout: list[str] | None = None, target_recall: float = 0.99, quiet: bool = False) -> dict[str, Any]:
    """Train one model and write its artifact into ``out``.

    Raises:
        ValueError: bad settings or stores (one line naming the value).
        TrainingError: training failed at run time.
    """
    for s in [*stores, *(heldout or [])]:
        if "://" not in s and not Path(s).exists():
            raise ValueError(f"store={s!r} does not exist; create it with `farm simulate --out {s}`")
    if task == "npe" and prior is not None and not (Path(prior) / "restricted_prior.json").is_file():
        raise ValueError(f"prior={prior!r} has no restricted_prior.json; pass the --out directory of `farm train classifier`")
    if not 0.5 <= target_recall <= 1.0:
        raise ValueError(f"target_recall={target_recall} outside [0.5, 1]")
    cfg = TrainConfig(task=task, stores=tuple(stores), out=out, variant=variant, num_workers=workers, epochs=epochs, batch_size=batch_size,
                      learning_rate=learning_rate, patience=patience, val_fraction=val_fraction, seed=seed, progress=not quiet)
    try:
        if task == "npe":
            from inference.datasets import StoreSet
            from inference.npe import resolve_prior

            resolve_prior(StoreSet(stores).priors[0], prior)  # fail before training, not after
        outcome = run_training(cfg, address=address)
        if task == "classifier":
            from inference.restriction import finalize_classifier

            return finalize_classifier(outcome, target_recall=target_recall, heldout=heldout)
        from inference.npe import finalize_npe

        return finalize_npe(outcome, prior_dir=prior)
    except (StoreMismatch, FileNotFoundError) as e:
        raise ValueError(str(e)) from None



def format_metrics(task: str, out: str, metrics: dict[str, Any]) -> str:
    """A few human lines for the terminal (the full metrics are in the manifest)."""
    if task == "classifier":
        v = metrics["validation"]
        lines = [f"restricted prior written to {out} (farm simulate --prior {out})",
                 f"validation: recall {v['recall']:.3f}  precision {v['precision']:.3f}  at threshold logit {metrics['threshold_logit']:.3f}",
                 f"acceptance from the box {metrics['acceptance_rate']:.3f}; in regime: box {metrics['box_in_regime_fraction']:.3f} -> restricted {metrics['restricted_in_regime_fraction']:.3f}"]
        if "heldout" in metrics:
            h = metrics["heldout"]
            lines.insert(2, f"held-out: recall {h['recall']:.3f}  precision {h['precision']:.3f}  ({h['num_samples']} samples)")
        return "\n".join(lines)
    h = metrics["heldout"]
    return "\n".join([f"posterior written to {out} (best epoch {metrics['best_epoch']} of {metrics['epochs_trained']}, val loss {metrics['best_val_loss']:.4f})",
                      f"held-out check on {h['num_observations']} observations: {int(h['level'] * 100)}% interval coverage {h['coverage']:.2f}, mean width {h['relative_width']:.3f} of the prior box"])


__all__ = ["train_command", "format_metrics", "TrainingError"]
