"""The evaluation report on disk: ``metrics.json`` written and read back, summary tables, comparisons.

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

    return {"bss2_farm": package_version(), "numpy": np.__version__, "torch": torch.__version__, "sbi": sbi.__version__}


def training_info(posterior: Any) -> dict[str, Any]:
    """What the posterior was trained on, from its manifest (stores, sample counts, epochs)."""
    man = getattr(posterior, "manifest", {}) or {}
    met = man.get("metrics", {}) if isinstance(man.get("metrics"), dict) else {}
    out: dict[str, Any] = {k: met[k] for k in ("num_train", "num_val", "best_epoch", "epochs_trained", "best_val_loss") if isinstance(met.get(k), (int, float))}
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
        raise ArtifactError(f"report={str(path)!r} has no {METRICS_FILE}; pass a directory written by `farm evaluate`")
    return read_document(f, EvaluationReport).to_dict()


#: (key in summary, label, format, which is better: "low", "high", "zero" or None)
SUMMARY_ROWS: tuple[tuple[str, str, str, str | None], ...] = (
    ("variant", "variant", "{}", None),
    ("num_train", "training simulations", "{}", None),
    ("epochs_trained", "epochs trained", "{}", None),
    ("num_obs", "held-out observations", "{}", None),
    ("verdict", "calibration verdict", "{}", None),
    ("sbc_failed", "SBC marginals failing", "{}", "low"),
    ("tarp_atc", "TARP ATC (0 ideal, <0 overconf.)", "{:+.3f}", "zero"),
    ("coverage_dev_signed", "coverage - level (signed)", "{:+.3f}", "zero"),
    ("coverage_dev_mean_abs", "|coverage - level|, mean", "{:.3f}", "low"),
    ("hpd_coverage_dev_mean_abs", "|HPD coverage - level|, mean", "{:.3f}", "low"),
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


def _fmt(fmt: str, v: Any) -> str:
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def summary_table(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of one report's headline numbers."""
    s = metrics["summary"]
    return [(label, _fmt(fmt, s.get(key))) for key, label, fmt, _ in SUMMARY_ROWS]


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Side-by-side headline numbers and per-parameter recovery of two reports.

    Returns:
        ``{"columns": [name_a, name_b], "rows": [(label, va, vb, better)], "parameters": [(name, nrmse_a,
        nrmse_b, contraction_a, contraction_b)], "notes": [...]}`` where ``better`` is "A", "B" or "".
    """
    sa, sb = a["summary"], b["summary"]
    rows = []
    for key, label, fmt, better in SUMMARY_ROWS:
        va, vb = sa.get(key), sb.get(key)
        win = ""
        if better and isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va != vb:
            da, db = (abs(va), abs(vb)) if better == "zero" else (va, vb)
            win = ("A" if da < db else "B") if better in ("low", "zero") else ("A" if da > db else "B")
        rows.append((label, _fmt(fmt, va), _fmt(fmt, vb), win))
    params = []
    ra, rb = a["recovery"], b["recovery"]
    for name in a["parameter_names"]:
        params.append((name, ra["nrmse"].get(name), rb["nrmse"].get(name), ra["contraction"].get(name), rb["contraction"].get(name)))
    notes = []
    if a["store"].get("path") != b["store"].get("path"):
        notes.append(f"reports use different held-out stores ({a['store'].get('path')} vs {b['store'].get('path')})")
    if a["posterior"].get("prior_fingerprint") != b["posterior"].get("prior_fingerprint"):
        notes.append("the two posteriors were trained on different priors")
    for m, col in ((a, "A"), (b, "B")):
        if m["summary"].get("verdict") != "calibrated":
            notes.append(f"{col} is not calibrated ({m['summary'].get('verdict')}): read its contraction with care")
    return {"columns": [sa.get("variant", "A"), sb.get("variant", "B")], "rows": rows, "parameters": params, "notes": notes}


__all__ = ["METRICS_FILE", "REPORT_FORMAT_VERSION", "SUMMARY_ROWS", "compare_reports", "load_report", "summary_table", "training_info", "versions", "write_report"]
