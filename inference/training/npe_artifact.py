"""From a finished NPE training to a posterior artifact, with a quick held-out check.

The artifact is what :func:`inference.load_posterior` rebuilds: ``manifest.json``, ``weights.pt``
and, for a restricted prior, a copy of it in ``prior/`` so the artifact is self-contained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from farm.defaults import PARAMETER_NAMES, PriorBox
from farm.errors import FarmInputError
from farm.features import feature_names, spike_count_column
from farm.prior import AnyPrior, BoxPrior, RestrictedPrior
from inference.artifacts import write_artifact
from inference.data.datasets import ChunkStream
from inference.diagnostics.misspecification import KNNDetector, trace_reasons
from inference.diagnostics.trace_artifact import BLOCK as TRACE_BLOCK
from inference.diagnostics.trace_artifact import (
    MAX_REFERENCE,
    joint_quantile,
    save_trace_check,
    trace_windows,
)
from inference.diagnostics.trace_check import TraceDetector
from inference.nets.embeddings import CIRCUIT_FEATURES, model_input
from inference.posteriors.amortized import KIND, PRIOR_SUBDIR, AmortizedPosterior, load_amortized
from inference.posteriors.circuit_side import DETECTOR_FILE
from inference.training.outcome import TrainOutcome

log = logging.getLogger(__name__)


def resolve_prior(store_prior: dict[str, Any] | None, prior_dir: str | Path | None) -> AnyPrior:
    """The prior the training samples came from.

    Args:
        store_prior: the store's ``prior`` attribute (box dict, or restricted with its fingerprint).
        prior_dir: the restricted prior directory (``farm train classifier --out``), if any.

    Raises:
        FarmInputError: ``prior_dir`` is not the prior the store was simulated from (a ValueError).
    """
    store_prior = store_prior or PriorBox().to_dict()
    if prior_dir is not None:
        prior = RestrictedPrior.load(prior_dir)
        if (
            store_prior.get("type") == "restricted"
            and store_prior.get("fingerprint") != prior.fingerprint
        ):
            raise FarmInputError(
                f"prior={str(prior_dir)!r} has fingerprint {prior.fingerprint}, but the store was "
                f"simulated from {store_prior.get('fingerprint')}"
            )
        if store_prior.get("type") != "restricted":
            raise FarmInputError(
                f"prior={str(prior_dir)!r} given, but the store was simulated from the box prior; "
                "omit --prior"
            )
        return prior
    if store_prior.get("type") == "restricted":
        log.warning(
            "store was simulated from restricted prior %s but no --prior was given: the "
            "posterior's support is its box",
            store_prior.get("fingerprint"),
        )
        return BoxPrior(PriorBox.from_dict(store_prior["box"]))
    return BoxPrior(PriorBox.from_dict(store_prior))


def heldout_check(
    posterior: AmortizedPosterior,
    outcome: TrainOutcome,
    num_obs: int = 200,
    num_samples: int = 500,
    level: float = 0.9,
) -> dict[str, Any]:
    """Coverage and width of central credible intervals on test-split observations.

    Why the test split: validation rows chose the best epoch (early stopping), so coverage on
    them is optimistic; test rows took no part in training.

    Returns:
        ``coverage`` (share of true parameters inside their ``level`` interval, per parameter and
        mean) and ``relative_width`` (interval width / prior box width).
    """
    fields = ("theta", "features", "trace", *_circuit(posterior))
    stream = ChunkStream(outcome.stores, outcome.plan, "test", fields, num_obs)
    batch = next(stream.batches(shuffle=False), None)
    if batch is None:
        return {"split": "test", "level": level, "num_observations": 0}
    if posterior.circuit_aware:  # the rows' own fresh fingerprints, already as statistics
        x = torch.from_numpy(
            np.ascontiguousarray(model_input(batch, posterior.model.x_fields), dtype=np.float32)
        )
        s = posterior._draw(posterior._embed(x), num_samples, 0)[0].astype(np.float64)
    else:
        kw = (
            {"features": batch["features"]}
            if posterior.accepts_features
            else {"traces": batch["trace"]}
        )
        s = posterior.sample_batched(num_samples, seed=0, **kw).astype(np.float64)
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2], axis=1)
    covered = (batch["theta"] >= lo) & (batch["theta"] <= hi)
    width = (hi - lo) / (posterior.prior.high - posterior.prior.low)
    return {
        "split": "test",
        "level": level,
        "num_observations": int(len(batch["theta"])),
        "coverage": float(covered.mean()),
        "coverage_per_parameter": dict(zip(PARAMETER_NAMES, covered.mean(0).tolist(), strict=True)),
        "relative_width": float(width.mean()),
        "relative_width_per_parameter": dict(
            zip(PARAMETER_NAMES, width.mean(0).tolist(), strict=True)
        ),
    }


def _circuit(posterior: AmortizedPosterior) -> tuple[str, ...]:
    """The ``circuit`` field, for a circuit-aware posterior's batches."""
    return ("circuit",) if posterior.circuit_aware else ()


def _in_regime_rows(
    posterior: AmortizedPosterior,
    outcome: TrainOutcome,
    split: str,
    limit: int,
    circuit_only: bool = False,
) -> np.ndarray:
    """Summaries (embedding outputs) of up to ``limit`` in-regime rows of a split, chunk order.

    ``circuit_only``: the rows' fingerprint statistics instead (the fingerprint check's input).
    """
    return _in_regime(posterior, outcome, split, limit, circuit_only)[0]


def _in_regime(
    posterior: AmortizedPosterior,
    outcome: TrainOutcome,
    split: str,
    limit: int,
    circuit_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``_in_regime_rows`` and the (n, T) int16 ADC codes of the same rows, in the same order."""
    fields = ("features", "trace", *_circuit(posterior))
    stream = ChunkStream(outcome.stores, outcome.plan, split, fields, 1024)
    out: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    count = 0
    for batch in stream.batches(shuffle=False):
        keep = posterior.regime.contains(
            batch["features"][:, spike_count_column(posterior.protocol)]
        )
        if circuit_only:  # the statistics themselves: no embedding pass
            rows = np.asarray(batch["circuit"][keep], dtype=np.float32)
        elif len(x := model_input(batch, posterior.model.x_fields)[keep]):
            with torch.inference_mode():
                rows = posterior.model.embedding(
                    torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                ).numpy()
        else:
            continue
        if len(rows):
            out.append(rows)
            codes.append(np.asarray(batch["trace"][keep], dtype=np.int16))
            count += len(rows)
        if count >= limit:
            break
    if not out:
        return np.empty((0, 0), np.float32), np.empty((0, 0), np.int16)
    return np.concatenate(out)[:limit], np.concatenate(codes)[:limit]


def calibrate_misspecification(
    posterior: AmortizedPosterior,
    outcome: TrainOutcome,
    num_reference: int = 5000,
    num_calibration: int = 2000,
    target: float = 0.05,
) -> tuple[KNNDetector | None, TraceCheck | None]:
    """The summary-space and trace-space checks, reference from in-regime training rows, their
    thresholds from in-regime test rows.

    Why the test split: validation rows chose the best epoch, so the embedding has seen their
    influence and scores them slightly lower than fresh data; test rows took no part in training,
    so their quantile gives the false-alarm rate a fresh observation meets. Both checks are
    thresholded at one quantile of their own calibration scores, the smallest whose union (with
    the regime, flat and rail reasons) flags at most ``target`` of the calibration rows
    (``joint_quantile``); without a trace check, the summary check's is 95 %.
    Returns None (with a warning) for a check that cannot be calibrated: too few in-regime test
    rows, or a protocol the trace statistics do not read (``trace_windows``).
    """
    ref, ref_traces = _in_regime(posterior, outcome, "train", num_reference)
    cal, cal_traces = _in_regime(posterior, outcome, "test", num_calibration)
    if len(ref) < 10 or len(cal) < 20:
        log.warning(
            "only %d training / %d test rows in the regime: no misspecification score is stored",
            len(ref),
            len(cal),
        )
        return None, None
    detector = KNNDetector.fit(ref, cal, k=10, quantile=1 - target)
    trace = _trace_check(posterior, ref_traces, cal_traces)
    if trace is None:
        return detector, None
    in_regime = np.full(len(cal_traces), posterior.regime.min_spikes)  # rows chosen in regime
    own = np.array(
        [
            bool(r)  # the flat and rail reasons, which a served answer adds
            for r in trace_reasons(
                cal_traces, in_regime, posterior.regime, posterior.chip_model.adc_max_code
            )
        ]
    )
    q = joint_quantile(detector.calibration_scores, own, trace.detector.calibration_scores, target)
    return detector.with_quantile(q), replace(trace, detector=trace.detector.with_quantile(q))


@dataclass(frozen=True)
class TraceCheck:
    """A fitted trace-space check and the traces it was fitted on (stored beside it)."""

    detector: TraceDetector
    reference: np.ndarray
    calibration: np.ndarray


def _trace_check(
    posterior: AmortizedPosterior, reference: np.ndarray, calibration: np.ndarray
) -> TraceCheck | None:
    """The trace-space check on up to ``MAX_REFERENCE`` reference traces, spread evenly over the
    in-regime training rows read (a deterministic choice, not the first chunks' chips only)."""
    windows = trace_windows(posterior.protocol)
    if windows is None:
        log.info(
            "protocol %s: no trace-space check (one step sweep only)", posterior.protocol.label
        )
        return None
    pick = np.linspace(0, len(reference) - 1, min(len(reference), MAX_REFERENCE))
    reference = reference[np.unique(np.rint(pick).astype(np.int64))]
    try:
        detector = TraceDetector.fit(reference, calibration, *windows)
    except ValueError as e:
        log.warning("no trace-space check is stored: %s", e)
        return None
    return TraceCheck(detector, reference, calibration)


def calibrate_circuit_check(
    posterior: AmortizedPosterior, outcome: TrainOutcome
) -> KNNDetector | None:
    """The fingerprint check: training rows' statistics as reference, test rows' threshold.

    Why 99 %: a fingerprint is recorded once per circuit and every answer for that circuit rests
    on it, so a false alarm repeats on every query; the 1 % level keeps that rare, while a
    fingerprint of another chip model or references lies far beyond it.
    """
    ref = _in_regime_rows(posterior, outcome, "train", 5000, circuit_only=True)
    cal = _in_regime_rows(posterior, outcome, "test", 2000, circuit_only=True)
    if len(ref) < 10 or len(cal) < 100:
        log.warning("only %d / %d rows: no fingerprint check is stored", len(ref), len(cal))
        return None
    return KNNDetector.fit(ref, cal, k=10, quantile=0.99)


def summary_names(model: Any, protocol: Any) -> list[str]:
    """Names of the embedding's outputs: the named statistics, ``cnn_k`` per learned one, then
    ``circuit_k`` per circuit summary of a circuit-aware posterior."""
    names = list(feature_names(protocol)) if "features" in model.config.x_fields else []
    circuit = CIRCUIT_FEATURES if model.config.x_fields[-1] == "circuit" else 0
    learned = model.embedding.num_features - len(names) - circuit
    return names + [f"cnn_{k}" for k in range(learned)] + [f"circuit_{k}" for k in range(circuit)]


def finalize_npe(outcome: TrainOutcome, prior_dir: str | Path | None = None) -> dict[str, Any]:
    """Write the posterior artifact into ``outcome.config.out`` and return its metrics."""
    cfg, out = outcome.config, Path(outcome.config.out)
    stores, plan = outcome.stores, outcome.plan
    prior = resolve_prior(stores.priors[0], prior_dir)
    if isinstance(prior, RestrictedPrior):
        prior.save(out / PRIOR_SUBDIR)
    model = outcome.best_model()
    history = outcome.state["history"]
    metrics: dict[str, Any] = outcome.summary() | {
        "splits": plan.splits(),
        "excluded": plan.flag_counts,
    }
    manifest = {
        "architecture": model.config.to_dict(),
        "parameter_names": list(PARAMETER_NAMES),
        "feature_names": summary_names(model, stores.protocol),
        "standardization": outcome.stats,
        "prior": prior.to_dict(),
        "prior_dir": PRIOR_SUBDIR if isinstance(prior, RestrictedPrior) else None,
        "protocol": stores.protocol.to_dict(),
        "chip_model": stores.chip_model.to_dict(),
        "training_chip_ids": [int(c) for c in stores.chip_model.pool],
        "regime": stores.regime.to_dict(),
        "trace_length": stores.protocol.num_samples,
        "stores": [{"url": u, "prior": p} for u, p in zip(stores.urls, stores.priors, strict=True)],
        "store_fingerprint": plan.fingerprint,
        "train_config": cfg.identity(),
        "metrics": metrics,
        "history": history,
    }
    circuits = plan.extra.get("circuits")
    if circuits:
        manifest["circuits"] = {
            k: circuits[k] for k in ("circuits", "names", "references", "identity")
        }
    write_artifact(out, KIND, model.state_dict(), manifest)
    posterior = load_amortized(out)  # the artifact just written: one posterior, never an ensemble
    metrics["heldout"] = heldout_check(posterior, outcome)
    detector, trace = calibrate_misspecification(posterior, outcome)
    if detector is not None:
        manifest["misspecification"] = detector.save(out)
        metrics["misspecification"] = detector.meta()
    if trace is not None:
        manifest[TRACE_BLOCK] = save_trace_check(
            trace.detector, trace.reference, trace.calibration, out
        )
        metrics["trace_check"] = trace.detector.meta()
    if circuits and (check := calibrate_circuit_check(posterior, outcome)) is not None:
        manifest["circuits"]["misspecification"] = check.save(out, DETECTOR_FILE)
        metrics["circuit_check"] = check.meta()
    write_artifact(out, KIND, model.state_dict(), manifest | {"metrics": metrics})
    return metrics
