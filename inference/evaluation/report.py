"""The evaluation report on disk: ``metrics.json`` written and read back, tables, comparisons.

Reading needs no posterior and no torch: ``farm compare`` works on two report directories alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from farm.versions import package_version
from inference.documents import REPORT_FORMAT_VERSION, EvaluationReport, read_document
from inference.errors import ArtifactError

METRICS_FILE = "metrics.json"


def versions() -> dict[str, str]:
    """Versions of what produced the numbers (bss2-farm, numpy, torch, sbi)."""
    import sbi
    import torch

    return {
        "bss2_farm": package_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "sbi": sbi.__version__,
    }


def training_info(posterior: Any) -> dict[str, Any]:
    """What the posterior was trained on, from its manifest (stores, sample counts, epochs)."""
    man = getattr(posterior, "manifest", {}) or {}
    met = man.get("metrics", {}) if isinstance(man.get("metrics"), dict) else {}
    out: dict[str, Any] = {
        k: met[k]
        for k in ("num_train", "num_val", "best_epoch", "epochs_trained", "best_val_loss")
        if isinstance(met.get(k), (int, float))
    }
    history = man.get("history")
    if (
        isinstance(history, list)
        and history
        and all(
            isinstance(h, dict) and isinstance(h.get("epoch_seconds"), (int, float))
            for h in history
        )
    ):
        out["train_seconds"] = float(
            sum(h["epoch_seconds"] for h in history)
        )  # training epochs only, no start-up
    stores = man.get("stores")
    if isinstance(stores, list):
        out["stores"] = [s.get("url") if isinstance(s, dict) else str(s) for s in stores]
    return out


def write_report(outdir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics.json`` (NaN kept as JSON ``NaN``, as the report always wrote it)."""
    path = Path(outdir) / METRICS_FILE
    path.write_text(json.dumps(metrics, indent=2, allow_nan=True))
    return path


def load_report(path: str | Path) -> dict[str, Any]:
    """Read ``metrics.json`` of a report directory (or the file itself).

    Raises:
        ArtifactError: (a ValueError) not an evaluation report, or of another format version.
    """
    p = Path(path)
    f = p / METRICS_FILE if p.is_dir() else p
    if not f.is_file():
        raise ArtifactError(
            f"report={str(path)!r} has no {METRICS_FILE}; "
            "pass a directory written by `farm evaluate`"
        )
    return read_document(f, EvaluationReport).to_dict()


#: (key in summary, label, format, which is better: "low", "high", "zero" or None)
SUMMARY_ROWS: tuple[tuple[str, str, str, str | None], ...] = (
    ("variant", "variant", "{}", None),
    ("estimator", "estimator", "{}", None),
    ("num_train", "training simulations", "{}", None),
    ("epochs_trained", "epochs trained", "{}", None),
    ("train_seconds", "training time [s]", "{:.0f}", None),
    ("num_obs", "held-out observations", "{}", None),
    ("verdict", "calibration verdict", "{}", None),
    ("sbc_failed", "SBC marginals failing", "{}", "low"),
    ("tarp_atc", "TARP ATC (0 ideal, <0 overconf.)", "{:+.3f}", "zero"),
    ("coverage_dev_signed", "coverage - level (signed)", "{:+.3f}", "zero"),
    ("coverage_dev_mean_abs", "|coverage - level|, mean", "{:.3f}", "low"),
    ("hpd_coverage_dev_mean_abs", "|HPD coverage - level|, mean", "{:.3f}", "low"),
    ("lc2st_rejected", "L-C2ST observations rejected", "{}", "low"),
    ("chip_overlap", "test chips seen in training", "{}", None),
    ("nrmse_mean", "NRMSE (/ prior std)", "{:.3f}", "low"),
    ("std_ratio_mean", "posterior / prior std", "{:.3f}", "low"),
    ("contraction_mean", "contraction", "{:.3f}", "high"),
    ("z_robust_std_mean", "z-score std, robust (1 ideal)", "{:.2f}", None),
    ("z_outside_2", "share of |z| > 2 (~0.05 ideal)", "{:.3f}", None),
    ("ppc_trace_rmse_mv", "predictive trace RMSE [mV]", "{:.2f}", "low"),
    ("ppc_prior_trace_rmse_mv", "  prior predictive [mV]", "{:.2f}", None),
    ("ppc_spike_count_error", "|spike count error|", "{:.2f}", "low"),
    ("ppc_spike_count_coverage_90", "count in 90% predictive", "{:.2f}", None),
)

#: The own-circuit check's rows (``inference.evaluation.own_circuit``), each for the observations'
#: own circuits and for random ones: (summary key suffix, label, format, which is better on own
#: circuits). On random circuits none is "better": a posterior that ignores the circuit looks
#: fine there (issue 25).
OWN_CIRCUIT_ROWS: tuple[tuple[str, str, str, str | None], ...] = (
    ("error_ratio", "|spike count error| / oracle's", "{:.1f}", "low"),
    ("spike_count_error", "posterior |spike count error|", "{:.2f}", "low"),
    ("oracle_error", "oracle (true theta) |error|", "{:.2f}", None),
    ("within", "posterior reruns within +-2 spikes", "{:.2f}", "high"),
    ("oracle_within", "oracle reruns within +-2 spikes", "{:.2f}", None),
)
#: summary key prefix -> label prefix of the two circuit kinds
CIRCUIT_KINDS = (("own_circuit", "own circuit"), ("random_circuit", "random circuits"))


def _fmt(fmt: str, v: Any) -> str:
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _summary_value(s: dict[str, Any], key: str) -> Any:
    """A summary entry; reports written before ``estimator`` existed are all NSF."""
    return s.get(key, "nsf" if key == "estimator" else None)


def summary_table(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of one report's headline numbers."""
    s = metrics["summary"]
    return [(label, _fmt(fmt, _summary_value(s, key))) for key, label, fmt, _ in SUMMARY_ROWS]


def own_circuit_table(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, own circuit, random circuits) rows of the own-circuit check; [] if it did not run."""
    s = metrics["summary"]
    if s.get("own_circuit_error_ratio") is None:
        return []
    return [
        (label, *(_fmt(fmt, s.get(f"{prefix}_{key}")) for prefix, _ in CIRCUIT_KINDS))
        for key, label, fmt, _ in OWN_CIRCUIT_ROWS
    ]


def _all_rows() -> list[tuple[str, str, str, str | None]]:
    """``SUMMARY_ROWS``, then the own-circuit rows for own circuits and for random ones."""
    rows = list(SUMMARY_ROWS)
    for prefix, kind in CIRCUIT_KINDS:
        for key, label, fmt, better in OWN_CIRCUIT_ROWS:
            own = prefix == "own_circuit"
            rows.append((f"{prefix}_{key}", f"{kind}: {label}", fmt, better if own else None))
    return rows


def _column_name(report: dict[str, Any]) -> str:
    s = report["summary"]
    est = _summary_value(s, "estimator")
    return str(s.get("variant", "?")) if est == "nsf" else f"{s.get('variant', '?')} ({est})"


def compare_reports(*reports: dict[str, Any]) -> dict[str, Any]:
    """Side-by-side headline numbers and per-parameter recovery of two or more reports.

    Returns:
        ``{"columns": [name per report], "rows": [(label, v_A, v_B, ..., better)], "parameters":
        [(name, nrmse_A, nrmse_B, ..., contraction_A, contraction_B, ...)], "notes": [...]}`` where
        ``better`` is the letter ("A", "B", ...) of the best report on that row, or "".

    Raises:
        ValueError: fewer than two reports.
    """
    if len(reports) < 2:
        raise ValueError(f"{len(reports)} report(s) given; compare needs two or more")
    letters = [chr(ord("A") + i) if i < 26 else f"R{i + 1}" for i in range(len(reports))]
    summaries = [r["summary"] for r in reports]
    rows = []
    for key, label, fmt, better in _all_rows():
        values = [_summary_value(s, key) for s in summaries]
        win = ""
        numeric = [
            v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        ]
        if better and len(numeric) == len(values) and len(set(values)) > 1:
            score = [
                abs(v) if better == "zero" else (-v if better == "high" else v) for v in values
            ]
            best = min(score)
            if score.count(best) == 1:
                win = letters[score.index(best)]
        rows.append((label, *(_fmt(fmt, v) for v in values), win))
    params = []
    for name in reports[0]["parameter_names"]:
        nrmse = [r["recovery"]["nrmse"].get(name) for r in reports]
        contraction = [r["recovery"]["contraction"].get(name) for r in reports]
        params.append((name, *nrmse, *contraction))
    notes = []
    stores = [r["store"].get("path") for r in reports]
    if len(set(stores)) > 1:
        notes.append(f"reports use different held-out stores ({' vs '.join(map(str, stores))})")
    if len({r["posterior"].get("prior_fingerprint") for r in reports}) > 1:
        notes.append(
            f"the {len(reports)} posteriors were trained on different priors"
            if len(reports) > 2
            else "the two posteriors were trained on different priors"
        )
    own = [r.get("own_circuit") or {} for r in reports]
    own_sizes = sorted({(o["num_obs"], o.get("num_draws")) for o in own if o.get("num_obs")})
    if len(own_sizes) > 1:
        notes.append(
            "own-circuit checks differ in size (observations x draws: "
            f"{', '.join(f'{n}x{d}' for n, d in own_sizes)})"
        )
    for s, col in zip(summaries, letters):
        if s.get("verdict") != "calibrated":
            notes.append(
                f"{col} is not calibrated ({s.get('verdict')}): read its contraction with care"
            )
    return {
        "columns": [_column_name(r) for r in reports],
        "rows": rows,
        "parameters": params,
        "notes": notes,
    }


__all__ = [
    "METRICS_FILE",
    "REPORT_FORMAT_VERSION",
    "CIRCUIT_KINDS",
    "OWN_CIRCUIT_ROWS",
    "SUMMARY_ROWS",
    "compare_reports",
    "load_report",
    "own_circuit_table",
    "summary_table",
    "training_info",
    "versions",
    "write_report",
]
