"""From a finished NPE training to a posterior artifact, with a quick held-out check.

The artifact is what :func:`inference.load_posterior` rebuilds: ``manifest.json``, ``weights.pt``
and, for a restricted prior, a copy of it in ``prior/`` so the artifact is self-contained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from farm.defaults import PARAMETER_NAMES, PriorBox
from farm.features import FEATURE_NAMES
from farm.prior import AnyPrior, BoxPrior, RestrictedPrior
from inference.artifacts import write_artifact
from inference.datasets import ChunkStream
from inference.posterior import KIND, PRIOR_SUBDIR, AmortizedPosterior, load_posterior

log = logging.getLogger(__name__)


def resolve_prior(store_prior: dict[str, Any] | None, prior_dir: str | Path | None) -> AnyPrior:
    """The prior the training samples came from.

    Args:
        store_prior: the store's ``prior`` attribute (box dict, or restricted with its fingerprint).
        prior_dir: the restricted prior directory (``farm train classifier --out``), if any.

    Raises:
        ValueError: ``prior_dir`` is not the prior the store was simulated from.
    """
    store_prior = store_prior or PriorBox().to_dict()
    if prior_dir is not None:
        prior = RestrictedPrior.load(prior_dir)
        if store_prior.get("type") == "restricted" and store_prior.get("fingerprint") != prior.fingerprint:
            raise ValueError(f"prior={str(prior_dir)!r} has fingerprint {prior.fingerprint}, but the store was simulated from {store_prior.get('fingerprint')}")
        if store_prior.get("type") != "restricted":
            raise ValueError(f"prior={str(prior_dir)!r} given, but the store was simulated from the box prior; omit --prior")
        return prior
    if store_prior.get("type") == "restricted":
        log.warning("store was simulated from restricted prior %s but no --prior was given: the posterior's support is its box", store_prior.get("fingerprint"))
        return BoxPrior(PriorBox.from_dict(store_prior["box"]))
    return BoxPrior(PriorBox.from_dict(store_prior))


def heldout_check(posterior: AmortizedPosterior, outcome: Any, num_obs: int = 100, num_samples: int = 500, level: float = 0.9) -> dict[str, Any]:
    """Coverage and width of central credible intervals on validation observations.

    Returns:
        ``coverage`` (share of true parameters inside their ``level`` interval, per parameter and
        mean) and ``relative_width`` (interval width / prior box width).
    """
    stream = ChunkStream(outcome.stores, outcome.plan, "val", ("theta", "features", "trace"), num_obs)
    batch = next(stream.batches(shuffle=False))
    kw = {"features": batch["features"]} if posterior.accepts_features else {"traces": batch["trace"]}
    s = posterior.sample_batched(num_samples, seed=0, **kw).astype(np.float64)
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2], axis=1)
    covered = (batch["theta"] >= lo) & (batch["theta"] <= hi)
    width = (hi - lo) / (posterior.prior.high - posterior.prior.low)
    return {"level": level, "num_observations": int(len(batch["theta"])), "coverage": float(covered.mean()), "coverage_per_parameter": dict(zip(PARAMETER_NAMES, covered.mean(0).tolist())),
            "relative_width": float(width.mean()), "relative_width_per_parameter": dict(zip(PARAMETER_NAMES, width.mean(0).tolist()))}


def finalize_npe(outcome: Any, prior_dir: str | Path | None = None) -> dict[str, Any]:
    """Write the posterior artifact into ``outcome.config.out`` and return its metrics."""
    cfg, out = outcome.config, Path(outcome.config.out)
    stores, plan = outcome.stores, outcome.plan
    prior = resolve_prior(stores.priors[0], prior_dir)
    if isinstance(prior, RestrictedPrior):
        prior.save(out / PRIOR_SUBDIR)
    model = outcome.best_model()
    history = outcome.state["history"]
    metrics: dict[str, Any] = {"best_val_loss": outcome.state["best_val"], "best_epoch": outcome.state["best_epoch"] + 1, "epochs_trained": len(history),
                               "resumed_at_epochs": outcome.state["resumed_at"], "num_train": plan.num_train, "num_val": plan.num_val, "excluded": plan.flag_counts}
    manifest = {
        "architecture": model.config.to_dict(),
        "parameter_names": list(PARAMETER_NAMES),
        "feature_names": list(FEATURE_NAMES) if model.config.x_field == "features" else [f"cnn_{k}" for k in range(model.embedding.num_features)],
        "standardization": outcome.stats,
        "prior": prior.to_dict(),
        "prior_dir": PRIOR_SUBDIR if isinstance(prior, RestrictedPrior) else None,
        "protocol": stores.protocol.to_dict(),
        "chip_model": stores.chip_model.to_dict(),
        "regime": stores.regime.to_dict(),
        "trace_length": stores.protocol.num_samples,
        "stores": [{"url": u, "prior": p} for u, p in zip(stores.urls, stores.priors)],
        "store_fingerprint": plan.fingerprint,
        "train_config": cfg.identity(),
        "metrics": metrics,
        "history": history,
    }
    write_artifact(out, KIND, model.state_dict(), manifest)
    posterior = load_posterior(out)
    metrics["heldout"] = heldout_check(posterior, outcome)
    write_artifact(out, KIND, model.state_dict(), manifest | {"metrics": metrics})
    return metrics
