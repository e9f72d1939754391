"""From a trained regime classifier to the restricted prior `farm simulate --prior` reads.

The threshold is the largest logit that keeps ``target_recall`` of the in-regime validation
samples (sbi's ``RestrictionEstimator`` calls the complement ``allowed_false_negatives``). The
artifact is farm.prior.RestrictedPrior's numpy MLP; its acceptance rate is measured on box draws.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from farm.defaults import ChipModel, PriorBox, Protocol, Regime
from farm.prior import BoxPrior, RestrictedPrior
from farm.simulate import simulate_indices
from farm.substrates.registry import get_substrate
from inference.artifacts import jsonable, write_artifact
from inference.data.datasets import ChunkStream, DataPlan, StoreSet, plan_data
from inference.nets.classifier import RegimeClassifier
from inference.training.outcome import TrainOutcome

KIND = "restriction_classifier"


@torch.no_grad()
def predict_logits(
    model: RegimeClassifier, stores: StoreSet, plan: DataPlan, split: str = "val"
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Classifier logits and true in-regime labels of one split's good rows.

    Returns:
        (logits (n,) float64, labels (n,) bool).
    """
    logits, labels = [], []
    for b in ChunkStream(stores, plan, split, ("theta", "label"), 4096).batches(shuffle=False):
        logits.append(model(torch.from_numpy(b["theta"])).double().numpy())
        labels.append(b["label"] > 0.5)
    return np.concatenate(logits), np.concatenate(labels)


def threshold_for_recall(
    logits: NDArray[np.floating], labels: NDArray[np.bool_], target_recall: float
) -> float:
    """Largest logit threshold t with mean(logit >= t | in regime) >= target_recall.

    Args:
        logits: (n,) classifier logits; labels: (n,) true in-regime flags.
        target_recall: share of in-regime samples the restricted prior must keep, in (0, 1].
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall={target_recall} outside (0, 1]")
    pos = np.sort(np.asarray(logits, dtype=np.float64)[np.asarray(labels, dtype=bool)])
    if pos.size == 0:
        raise ValueError(
            "no in-regime sample in the validation split; simulate a larger pilot store"
        )
    k = int(math.floor((1.0 - target_recall) * pos.size))
    return float(pos[min(k, pos.size - 1)])


def classification_metrics(
    logits: NDArray[np.floating], labels: NDArray[np.bool_], threshold: float
) -> dict[str, float]:
    """Recall, precision, accuracy and accepted share at ``threshold`` (keep: logit >= it)."""
    keep = np.asarray(logits) >= threshold
    y = np.asarray(labels, dtype=bool)
    tp = float(np.sum(keep & y))
    return {
        "recall": tp / max(float(y.sum()), 1.0),
        "precision": tp / max(float(keep.sum()), 1.0),
        "accuracy": float(np.mean(keep == y)),
        "accepted_fraction": float(keep.mean()),
        "base_in_regime_fraction": float(y.mean()),
        "num_samples": int(y.size),
    }


def to_restricted_prior(
    model: RegimeClassifier,
    box: PriorBox,
    threshold_logit: float,
    num_draws: int = 100_000,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> RestrictedPrior:
    """Export the torch MLP as farm's numpy RestrictedPrior; acceptance on ``num_draws`` draws."""
    weights, biases = model.export_numpy()
    mean = model.input_mean.double().numpy()
    std = model.input_std.double().numpy()
    probe = RestrictedPrior(box, weights, biases, mean, std, threshold_logit, 1.0)
    draws = BoxPrior(box).sample(num_draws, seed=seed + 7919)
    acceptance = float(np.mean(probe.logit(draws) >= threshold_logit))
    if acceptance <= 0.0:
        raise ValueError(
            f"threshold_logit={threshold_logit:g} accepts none of {num_draws} box draws"
        )
    return RestrictedPrior(box, weights, biases, mean, std, threshold_logit, acceptance, meta)


def simulated_in_regime_fraction(
    prior: BoxPrior,
    protocol: Protocol,
    chip_model: ChipModel,
    regime: Regime,
    num_sims: int = 2000,
    seed: int = 12345,
) -> float:
    """Share of fresh simulations from ``prior`` in the regime (the paper's 2 % -> 38 %)."""
    batch = simulate_indices(
        prior, seed, np.arange(num_sims), get_substrate("emulator", protocol, chip_model)
    )
    sc = batch.spike_count
    return float(np.mean(regime.contains(sc)))


def finalize_classifier(
    outcome: TrainOutcome,
    target_recall: float = 0.99,
    heldout: list[str] | None = None,
    num_check_sims: int = 2000,
) -> dict[str, Any]:
    """Write the restricted prior (restricted_prior.json + weights.npz) and the classifier into out.

    Args:
        outcome: the TrainOutcome of a ``classifier`` run.
        target_recall: share of in-regime validation samples the threshold keeps.
        heldout: optional stores simulated from the box prior to report recall/precision on.
        num_check_sims: fresh simulations from the restricted prior to measure its in-regime share.

    Returns:
        The metrics written into both manifests.
    """
    cfg, out = outcome.config, Path(outcome.config.out)
    model: RegimeClassifier = outcome.best_model()
    stores, plan = outcome.stores, outcome.plan
    logits, labels = predict_logits(model, stores, plan, "val")
    threshold = threshold_for_recall(logits, labels, target_recall)
    metrics: dict[str, Any] = {
        "target_recall": target_recall,
        "threshold_logit": threshold,
        "validation": classification_metrics(logits, labels, threshold),
        "splits": plan.splits(),
    }
    if plan.num_test:  # the threshold was chosen on val: test rows say what recall it really keeps
        metrics["test"] = classification_metrics(
            *predict_logits(model, stores, plan, "test"), threshold
        )
    if heldout:
        hs = StoreSet(heldout)
        hplan = plan_data(hs, val_fraction=0.49, test_fraction=0.0)
        hl, hy = [], []
        for split in ("train", "val"):
            a, b = predict_logits(model, hs, hplan, split)
            hl.append(a)
            hy.append(b)
        metrics["heldout"] = classification_metrics(
            np.concatenate(hl), np.concatenate(hy), threshold
        ) | {"stores": hs.urls}
    box = PriorBox.from_dict(_box_dict(stores.priors[0]))
    prior = to_restricted_prior(model, box, threshold, seed=cfg.seed)
    metrics["acceptance_rate"] = prior.acceptance_rate
    metrics["box_in_regime_fraction"] = simulated_in_regime_fraction(
        BoxPrior(box), stores.protocol, stores.chip_model, stores.regime, num_check_sims
    )
    metrics["restricted_in_regime_fraction"] = simulated_in_regime_fraction(
        prior, stores.protocol, stores.chip_model, stores.regime, num_check_sims
    )
    history = outcome.state["history"]
    common = {
        "regime": stores.regime.to_dict(),
        "protocol": stores.protocol.to_dict(),
        "chip_model": stores.chip_model.to_dict(),
        "stores": [{"url": u} for u in stores.urls],
        "store_fingerprint": plan.fingerprint,
        "excluded": plan.flag_counts,
    }
    prior.meta = jsonable(
        {
            "metrics": metrics,
            "regime": stores.regime.to_dict(),
            "store_fingerprint": plan.fingerprint,
            "trained_by": "farm train classifier",
        }
    )
    prior.save(out)
    write_artifact(
        out,
        KIND,
        model.state_dict(),
        {
            **common,
            "architecture": model.config.to_dict(),
            "prior": box.to_dict(),
            "restricted_prior": {
                "fingerprint": prior.fingerprint,
                "files": ["restricted_prior.json", "weights.npz"],
            },
            "train_config": cfg.identity(),
            "metrics": metrics | outcome.summary(),
            "history": history,
        },
    )
    return metrics


def _box_dict(prior_attr: dict[str, Any] | None) -> dict[str, Any]:
    if not prior_attr:
        return PriorBox().to_dict()
    return prior_attr.get("box", prior_attr)
