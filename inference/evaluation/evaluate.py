"""`farm evaluate`: a posterior + a held-out store -> metrics.json and figures.

The held-out store must be simulated from the prior the posterior was trained on (another seed),
so that its (theta, trace) pairs are draws from the joint distribution SBC and TARP assume. This
module runs the steps; ``inference.evaluation.metrics`` computes the numbers,
``inference.evaluation.figures`` draws them and ``inference.evaluation.report`` writes and reads
the report (``compare_reports`` needs no posterior and no torch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inference.diagnostics import calibration as dg
from inference.evaluation.circuits import circuit_fingerprints, is_circuit_aware
from inference.evaluation.figures import draw_figures
from inference.evaluation.local import chip_overlap, local_calibration
from inference.evaluation.metrics import (
    Calibration,
    HeldOut,
    calibration,
    load_held_out,
    named,
    predictive_check,
    prior_fingerprint,
    sample_all,
)
from inference.evaluation.own_circuit import own_circuit_check
from inference.evaluation.report import (
    METRICS_FILE,
    REPORT_FORMAT_VERSION,
    compare_reports,
    load_report,
    own_circuit_table,
    summary_table,
    training_info,
    versions,
    write_report,
)


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of an evaluation.

    Args:
        num_obs: held-out observations for SBC, TARP, coverage and recovery.
        num_samples: posterior samples per observation (ranks resolve 1 / num_samples).
        num_ppc: observations given posterior-predictive simulations (figures show the first
            ``num_ppc_plot``).
        num_ppc_samples: posterior samples simulated per predictive-check observation.
        num_ppc_plot: predictive-check observations drawn in the figure.
        num_own_circuit: observations (the first held-out ones) whose draws and truth are rerun
            on their own circuit and on random ones (``inference.evaluation.own_circuit``; 0: off).
        num_own_circuit_samples: posterior draws rerun per own-circuit observation.
        hpd: also compute HPD expected coverage from ``log_prob`` of every sample (one call per
            observation, each costing about as much as drawing the samples; off by default).
        num_hpd: observations (the first ones) used for HPD coverage.
        c2st: also run sbi's C2ST between prior and data-averaged posterior (about 1 s per
            parameter).
        lc2st: also run sbi's L-C2ST, local calibration at a few observations
            (``inference.evaluation.local``).
        seed: selects observations and seeds posterior sampling and predictive simulations (the
            own-circuit reruns' noise seeds derive from it).
    """

    num_obs: int = 500
    num_samples: int = 500
    num_ppc: int = 40
    num_ppc_samples: int = 20
    num_ppc_plot: int = 4
    num_own_circuit: int = 40
    num_own_circuit_samples: int = 20
    hpd: bool = False
    num_hpd: int = 200
    c2st: bool = True
    lc2st: bool = False  # off until measured <= ~20 s at demo sizes (docs/evaluation.md)
    seed: int = 0
    #: Allowed range of each size (front ends check their options against it).
    LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "num_obs": (10, 100_000),
        "num_samples": (10, 10_000),
        "num_ppc": (0, 10_000),
        "num_ppc_samples": (2, 1_000),
        "num_ppc_plot": (0, 10),
        "num_own_circuit": (0, 10_000),
        "num_own_circuit_samples": (1, 1_000),
        "num_hpd": (10, 100_000),
    }

    def __post_init__(self) -> None:
        for name, (lo, hi) in self.LIMITS.items():
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ValueError(f"{name}={v} outside [{lo}, {hi}]")
        for name in ("num_ppc_samples", "num_own_circuit_samples"):
            if getattr(self, name) > self.num_samples:
                raise ValueError(
                    f"{name}={getattr(self, name)} exceeds num_samples={self.num_samples}"
                )
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")


def evaluate(
    posterior: Any,
    store: str | Path,
    out: str | Path,
    config: EvalConfig | None = None,
    *,
    circuits: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate an amortized posterior on a held-out store; write ``metrics.json`` and PNG figures.

    Args:
        posterior: an ``AmortizedPosterior`` (or anything with its ``sample_batched`` /
            ``log_prob`` / ``prior`` / ``protocol`` / ``chip_model`` / ``parameter_names`` /
            ``variant`` interface).
        store: held-out store simulated from the posterior's prior with a seed not used in training.
        out: report directory (created).
        config: sizes; defaults if None.
        circuits: circuits store (`farm fingerprint`) holding the fingerprint of every held-out
            observation's circuit; required for a circuit-aware posterior, whose every call then
            gets the observation's fingerprint, and unused for a circuit-marginal one.
        log: progress callback (one line per step).

    Returns:
        The metrics dictionary written to ``out/metrics.json``.

    Raises:
        ValueError: bad input, one line: traces of another length; a circuit-aware posterior
            without ``circuits``; a circuits store of other references or without an
            observation's circuit.
    """
    cfg = config or EvalConfig()
    say = log or (lambda _m: None)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()

    held = load_held_out(store, cfg.num_obs, cfg.seed)
    if held.trace.shape[1] != int(posterior.trace_length):
        raise ValueError(
            f"store traces have {held.trace.shape[1]} samples "
            f"but the posterior expects {posterior.trace_length}"
        )
    held = _with_fingerprints(held, posterior, circuits)
    n = held.theta.shape[0]
    say(f"{n} held-out observations from {held.path}")
    samples = sample_all(
        posterior, held.trace, cfg.num_samples, cfg.seed, say, fingerprints=held.fingerprints
    )
    timing["sampling"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    cal = calibration(
        posterior,
        held,
        samples,
        cfg.num_samples,
        hpd=cfg.hpd,
        num_hpd=cfg.num_hpd,
        c2st=cfg.c2st,
        seed=cfg.seed,
    )
    timing["calibration"] = time.perf_counter() - t1
    say(
        f"calibration: {cal.verdict['verdict']} (TARP ATC {cal.tarp.atc:+.3f}, "
        f"{len(cal.verdict['sbc_failed'])} SBC marginals failed)"
    )
    rec = dg.recovery(held.theta, samples, cal.prior_std)
    local = None
    if cfg.lc2st:
        t_l = time.perf_counter()
        local = local_calibration(held.theta, held.features, samples, seed=cfg.seed)
        timing["lc2st"] = time.perf_counter() - t_l
        say(
            f"local calibration (L-C2ST): {local['num_rejected']} of "
            f"{len(local['observations'])} observations rejected at alpha={local['alpha']}"
        )

    t2 = time.perf_counter()
    ppc = predictive_check(posterior, held, samples, cfg.num_ppc, cfg.num_ppc_samples, cfg.seed)
    if ppc is not None:
        say(
            f"predictive checks: trace RMSE {ppc.metrics['trace_rmse_mv']:.1f} mV "
            f"vs {ppc.metrics['prior_trace_rmse_mv']:.1f} mV from the prior"
        )
    timing["ppc"] = time.perf_counter() - t2

    t_o = time.perf_counter()
    own = own_circuit_check(
        posterior, held, samples, cfg.num_own_circuit, cfg.num_own_circuit_samples, cfg.seed
    )
    if own["num_obs"]:
        say(
            f"own-circuit check: spike-count error {own['own']['error_ratio']:.1f}x the oracle's "
            f"on the observations' circuits, {own['random']['error_ratio']:.1f}x on random ones"
        )
    timing["own_circuit"] = time.perf_counter() - t_o

    t3 = time.perf_counter()
    figures = draw_figures(outdir, posterior, held, samples, cal, rec, ppc, cfg.num_ppc_plot)
    timing["figures"] = time.perf_counter() - t3
    timing["total"] = time.perf_counter() - t0
    metrics = _report(
        posterior,
        held,
        cfg,
        cal,
        rec,
        ppc.metrics if ppc is not None else {"num_obs": 0},
        figures,
        timing,
    )
    _add_local_sections(metrics, posterior, held, local)
    _add_own_circuit(metrics, own, circuits)
    write_report(outdir, metrics)
    return metrics


def _with_fingerprints(held: HeldOut, posterior: Any, circuits: str | Path | None) -> HeldOut:
    """``held`` with each row's fingerprint when the posterior is circuit-aware, else as is."""
    if not is_circuit_aware(posterior):
        return held
    if circuits is None:
        raise ValueError(
            "the posterior is circuit-aware: give the circuits store of the held-out store's "
            "chips with --circuits circuits.zarr (circuits= in Python)"
        )
    if held.chip is None or held.neuron is None:
        raise ValueError(
            f"store={held.path!r} records no chip and neuron per row, so a circuit-aware "
            "posterior cannot be given the observations' fingerprints"
        )
    fps = circuit_fingerprints(circuits, posterior, held.chip, held.neuron, held.index)
    return replace(held, fingerprints=fps)


#: summary key suffix -> key in an ``own_circuit`` metrics block (``own`` or ``random``)
_OWN_SUMMARY = {
    "error_ratio": "error_ratio",
    "spike_count_error": "posterior_error",
    "oracle_error": "oracle_error",
    "within": "posterior_within",
    "oracle_within": "oracle_within",
}


def _add_own_circuit(
    metrics: dict[str, Any], own: dict[str, Any], circuits: str | Path | None
) -> None:
    """The ``own_circuit`` section and its ``own_circuit_*`` / ``random_circuit_*`` summary keys."""
    metrics["own_circuit"] = own
    metrics["store"]["circuits"] = None if circuits is None else str(circuits)
    for block, prefix in (("own", "own_circuit"), ("random", "random_circuit")):
        for key, source in _OWN_SUMMARY.items():
            metrics["summary"][f"{prefix}_{key}"] = own[block][source] if block in own else None


def _report(
    posterior: Any,
    held: HeldOut,
    cfg: EvalConfig,
    cal: Calibration,
    rec: dg.RecoveryResult,
    ppc_metrics: dict[str, Any],
    figures: dict[str, str],
    timing: dict[str, float],
) -> dict[str, Any]:
    """The ``metrics.json`` document (kind ``evaluation_report``) from the computed numbers."""
    names = tuple(posterior.parameter_names)
    variant = str(posterior.variant)
    estimator = str(getattr(posterior, "estimator", "nsf"))
    n = held.theta.shape[0]
    store_fp = prior_fingerprint(held.attrs.get("prior"))
    post_fp = posterior.prior.fingerprint
    prior_matches = store_fp == post_fp
    warnings_list: list[str] = []
    if not prior_matches:
        warnings_list.append(
            f"store prior {store_fp} differs from the posterior's prior {post_fp}: "
            "SBC/TARP assume truths drawn from the training prior"
        )
    sbc_res, tarp_res, verdict, levels, marg, hpd = (
        cal.sbc,
        cal.tarp,
        cal.verdict,
        cal.levels,
        cal.marginal,
        cal.hpd,
    )
    marg_dev = dg.coverage_deviation(levels, marg)
    hpd_dev = dg.coverage_deviation(levels, hpd) if hpd is not None else None
    training = training_info(posterior)
    summary = {
        "variant": variant,
        "estimator": estimator,
        "num_train": training.get("num_train"),
        "epochs_trained": training.get("epochs_trained"),
        "train_seconds": training.get("train_seconds"),
        "num_obs": n,
        "num_samples": cfg.num_samples,
        "verdict": verdict["verdict"],
        "sbc_failed": len(verdict["sbc_failed"]),
        "sbc_min_ks_pval": float(sbc_res.ks_pvals.min()),
        "tarp_atc": tarp_res.atc,
        "coverage_dev_signed": marg_dev["signed"],
        "coverage_dev_mean_abs": marg_dev["mean_abs"],
        "hpd_coverage_dev_mean_abs": hpd_dev["mean_abs"] if hpd_dev else None,
        "nrmse_mean": float(rec.nrmse.mean()),
        "std_ratio_mean": float(rec.std_ratio.mean()),
        "contraction_mean": float(rec.contraction.mean()),
        "z_robust_std_mean": float(rec.z_robust_std.mean()),
        "z_outside_2": float(rec.z_outside_2.mean()),
        "ppc_trace_rmse_mv": ppc_metrics.get("trace_rmse_mv"),
        "ppc_prior_trace_rmse_mv": ppc_metrics.get("prior_trace_rmse_mv"),
        "ppc_spike_count_error": ppc_metrics.get("spike_count_error"),
        "ppc_spike_count_coverage_90": ppc_metrics.get("spike_count_coverage_90"),
    }
    metrics: dict[str, Any] = {
        "kind": "evaluation_report",
        "format_version": REPORT_FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "posterior": {
            "variant": variant,
            "estimator": estimator,
            "fingerprint": str(posterior.fingerprint),
            "prior_fingerprint": post_fp,
            "circuit_aware": is_circuit_aware(posterior),
            "training": training,
        },
        "store": {
            "path": held.path,
            "seed": held.attrs.get("seed"),
            "num_sims": held.attrs.get("num_sims"),
            "num_excluded": held.num_excluded,
            "prior_fingerprint": store_fp,
            "prior_matches": prior_matches,
        },
        "config": asdict(cfg),
        "parameter_names": list(names),
        "summary": summary,
        "verdict": verdict,
        "sbc": {
            "ks_pvals": named(names, sbc_res.ks_pvals),
            "failed": [names[d] for d in verdict["sbc_failed"]],
            "bin_edges": sbc_res.bin_edges.tolist(),
            "hist": {nm: sbc_res.hist[d].tolist() for d, nm in enumerate(names)},
            "c2st_dap": named(names, cal.c2st) if cal.c2st is not None else None,
        },
        "tarp": {
            "atc": tarp_res.atc,
            "ks_pval": tarp_res.ks_pval,
            "alpha": tarp_res.alpha.tolist(),
            "ecp": tarp_res.ecp.tolist(),
        },
        "coverage": {
            "levels": levels.tolist(),
            "marginal": {nm: marg[:, d].tolist() for d, nm in enumerate(names)},
            "marginal_deviation": marg_dev,
            "hpd": hpd.tolist() if hpd is not None else None,
            "hpd_deviation": hpd_dev,
        },
        "recovery": {
            key: named(names, getattr(rec, key))
            for key in (
                "nrmse",
                "std_ratio",
                "contraction",
                "z_mean",
                "z_std",
                "z_robust_std",
                "z_outside_2",
                "r2",
            )
        }
        | {"prior_std": named(names, cal.prior_std)},
        "ppc": ppc_metrics,
        "figures": figures,
        "warnings": warnings_list,
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
    }
    return metrics


def _add_local_sections(
    metrics: dict[str, Any], posterior: Any, held: HeldOut, local: dict[str, Any] | None
) -> None:
    """L-C2ST and chip sections: ``lc2st``, ``chips`` and, for unseen chips, ``new_chips``."""
    s = metrics["summary"]
    metrics["lc2st"] = local
    s["lc2st_rejected"] = None if local is None else local["num_rejected"]
    s["lc2st_min_pval"] = None if local is None else local["min_p_value"]
    chips = chip_overlap(getattr(posterior, "manifest", {}) or {}, held.attrs)
    metrics["chips"] = chips
    s["chip_overlap"] = chips["overlap"]
    if chips["overlap"] != "full":
        metrics["warnings"].append(chips["note"])
    if (
        chips["overlap"] == "none"
    ):  # the whole evaluation is on unseen chips: its calibration, labelled as such
        metrics["new_chips"] = {
            "test_chip_ids": chips["test_chip_ids"],
            "training_chip_ids": chips["training_chip_ids"],
        } | {
            k: s[k]
            for k in (
                "verdict",
                "sbc_failed",
                "tarp_atc",
                "coverage_dev_mean_abs",
                "nrmse_mean",
                "lc2st_rejected",
            )
        }


__all__ = [
    "METRICS_FILE",
    "REPORT_FORMAT_VERSION",
    "EvalConfig",
    "HeldOut",
    "compare_reports",
    "evaluate",
    "load_held_out",
    "load_report",
    "own_circuit_table",
    "summary_table",
]
