"""`farm evaluate` / `farm compare`: a posterior + a held-out store -> metrics.json and figures.

The held-out store must be simulated from the prior the posterior was trained on (another seed),
so that its (theta, trace) pairs are draws from the joint distribution SBC and TARP assume. The
report is plain JSON (with versions and fingerprints) plus PNGs; ``compare_reports`` reads two
reports back, so the comparison of variants needs no posterior and no torch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

from farm.defaults import PARAMETER_PHYSICS, ChipModel
from farm.features import FEATURE_NAMES
from farm.simulate import simulate_theta
from inference import diagnostics as dg
from inference.datasets import quality_flags
from inference import plots

REPORT_FORMAT_VERSION = "1"
METRICS_FILE = "metrics.json"
_BATCH = 100  # observations per sample_batched call: bounds memory at 100 x num_samples x 7


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of an evaluation.

    Args:
        num_obs: held-out observations for SBC, TARP, coverage and recovery.
        num_samples: posterior samples per observation (ranks resolve 1 / num_samples).
        num_ppc: observations given posterior-predictive simulations (figures show the first ``num_ppc_plot``).
        num_ppc_samples: posterior samples simulated per predictive-check observation.
        num_ppc_plot: predictive-check observations drawn in the figure.
        hpd: also compute HPD expected coverage from ``log_prob`` of every sample (one call per
            observation, each costing about as much as drawing the samples; off by default).
        num_hpd: observations (the first ones) used for HPD coverage.
        c2st: also run sbi's C2ST between prior and data-averaged posterior (about 1 s per parameter).
        seed: selects observations and seeds posterior sampling and predictive simulations.
    """

    num_obs: int = 500
    num_samples: int = 500
    num_ppc: int = 40
    num_ppc_samples: int = 20
    num_ppc_plot: int = 4
    hpd: bool = False
    num_hpd: int = 200
    c2st: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name, lo, hi in (("num_obs", 10, 100_000), ("num_samples", 10, 10_000), ("num_ppc", 0, 10_000), ("num_ppc_samples", 2, 1_000), ("num_ppc_plot", 0, 10), ("num_hpd", 10, 100_000)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ValueError(f"{name}={v} outside [{lo}, {hi}]")
        if self.num_ppc_samples > self.num_samples:
            raise ValueError(f"num_ppc_samples={self.num_ppc_samples} exceeds num_samples={self.num_samples}")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")


@dataclass(frozen=True)
class HeldOut:
    """The observations an evaluation runs on, read from a store."""

    theta: NDArray[np.float32]  # (N, 7)
    trace: NDArray[np.int16]  # (N, T)
    features: NDArray[np.float32]  # (N, F)
    spike_count: NDArray[np.int32]  # (N,)
    index: NDArray[np.int64]  # sample index in the store
    attrs: dict[str, Any]
    path: str
    num_excluded: int = 0  # rows skipped by the training quality filter (NaN, saturated, flat)


def load_held_out(store: str | Path, num_obs: int, seed: int = 0) -> HeldOut:
    """Read ``num_obs`` completed samples (a seeded random subset, sorted) from a store.

    Rows the trainer excludes (``inference.datasets.quality_flags``: NaN, saturated, flat traces)
    are skipped here too, so the held-out set follows the distribution the posterior was fit to.

    Raises:
        ValueError: the store is missing, unreadable or has fewer than 10 completed samples.
    """
    from farm.store import StoreMismatch, open_dataset

    try:
        ds = open_dataset(str(store))
    except (StoreMismatch, FileNotFoundError, KeyError) as e:
        raise ValueError(f"store={str(store)!r} is not a readable store from `farm simulate`: {e}") from None
    n = int(ds.sizes["sample"])
    if n < 10:
        raise ValueError(f"store={str(store)!r} has {n} completed samples; evaluation needs at least 10")
    order = np.random.default_rng(seed).permutation(n)
    chip = ChipModel.from_dict(ds.attrs["chip_model"]) if isinstance(ds.attrs.get("chip_model"), dict) else ChipModel()
    keep: list[NDArray[np.int64]] = []
    excluded = 0
    for start in range(0, n, 4 * max(num_obs, 256)):  # read in slices until num_obs usable rows are found
        cand = order[start : start + 4 * max(num_obs, 256)]
        sub = ds.isel(sample=np.sort(cand))
        flags = quality_flags(np.asarray(sub["trace"].values), np.asarray(sub["theta"].values), np.asarray(sub["features"].values), chip.adc_max_code)
        bad = np.logical_or.reduce(list(flags.values()))
        excluded += int(bad.sum())
        keep.append(cand[~np.isin(cand, np.sort(cand)[bad])])  # random order kept: the first num_obs are a random subset
        if sum(k.size for k in keep) >= num_obs:
            break
    take = np.sort(np.concatenate(keep)[:num_obs]) if keep else np.empty(0, dtype=np.int64)
    if take.size < 10:
        raise ValueError(f"store={str(store)!r} has {take.size} usable samples ({excluded} excluded as NaN/saturated/flat); evaluation needs at least 10")
    sub = ds.isel(sample=take)
    index = np.asarray(sub["sample"].values, dtype=np.int64) if "sample" in sub.coords else take.astype(np.int64)
    return HeldOut(
        theta=np.asarray(sub["theta"].values, dtype=np.float32),
        trace=np.asarray(sub["trace"].values, dtype=np.int16),
        features=np.asarray(sub["features"].values, dtype=np.float32),
        spike_count=np.asarray(sub["spike_count"].values, dtype=np.int32),
        index=index,
        attrs=dict(ds.attrs),
        path=str(store),
        num_excluded=excluded,
    )


def _codes_to_mv(codes: NDArray[np.integer], chip: ChipModel) -> NDArray[np.float64]:
    return chip.adc_v_min_mv + np.asarray(codes, dtype=np.float64) * (chip.adc_v_max_mv - chip.adc_v_min_mv) / chip.adc_max_code


def _named(names: tuple[str, ...], values: NDArray[np.floating]) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, np.asarray(values).ravel())}


def _sample_all(posterior: Any, trace: NDArray[np.int16], num_samples: int, seed: int, log: Callable[[str], None]) -> NDArray[np.float32]:
    out = np.empty((trace.shape[0], num_samples, len(posterior.parameter_names)), dtype=np.float32)
    for b, start in enumerate(range(0, trace.shape[0], _BATCH)):
        stop = min(start + _BATCH, trace.shape[0])
        out[start:stop] = posterior.sample_batched(num_samples, traces=trace[start:stop], seed=seed + b)
        log(f"sampled {stop}/{trace.shape[0]} observations")
    return out


def _hpd_log_probs(posterior: Any, trace: NDArray[np.int16], theta: NDArray[np.float32], samples: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    lps = np.empty(samples.shape[:2], dtype=np.float64)
    lpt = np.empty(theta.shape[0], dtype=np.float64)
    for i in range(theta.shape[0]):
        lp = posterior.log_prob(np.concatenate([theta[i : i + 1], samples[i]]), trace=trace[i])
        lpt[i], lps[i] = lp[0], lp[1:]
    return lps, lpt


def _prior_fingerprint(prior_attr: Any) -> str | None:
    if not isinstance(prior_attr, dict):
        return None
    if prior_attr.get("type") == "restricted":
        return prior_attr.get("fingerprint")
    from farm.prior import BoxPrior
    from farm.defaults import PriorBox

    try:
        return BoxPrior(PriorBox.from_dict(prior_attr)).fingerprint
    except (KeyError, ValueError, TypeError):
        return None


def _versions() -> dict[str, str]:
    import sbi
    import torch

    from farm.store import package_version

    return {"bss2_farm": package_version(), "numpy": np.__version__, "torch": torch.__version__, "sbi": sbi.__version__}


def evaluate(posterior: Any, store: str | Path, out: str | Path, config: EvalConfig | None = None, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate an amortized posterior on a held-out store; write ``metrics.json`` and PNG figures.

    Args:
        posterior: an ``AmortizedPosterior`` (or anything with its ``sample_batched`` / ``log_prob`` /
            ``prior`` / ``protocol`` / ``chip_model`` / ``parameter_names`` / ``variant`` interface).
        store: held-out store simulated from the posterior's prior with a seed not used in training.
        out: report directory (created).
        config: sizes; defaults if None.
        log: progress callback (one line per step).

    Returns:
        The metrics dictionary written to ``out/metrics.json``.
    """
    cfg = config or EvalConfig()
    say = log or (lambda _m: None)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    names = tuple(posterior.parameter_names)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()

    held = load_held_out(store, cfg.num_obs, cfg.seed)
    if held.trace.shape[1] != int(posterior.trace_length):
        raise ValueError(f"store traces have {held.trace.shape[1]} samples but the posterior expects {posterior.trace_length}")
    store_fp = _prior_fingerprint(held.attrs.get("prior"))
    post_fp = posterior.prior.fingerprint
    prior_matches = store_fp == post_fp
    warnings_list: list[str] = []
    if not prior_matches:
        warnings_list.append(f"store prior {store_fp} differs from the posterior's prior {post_fp}: SBC/TARP assume truths drawn from the training prior")
    n = held.theta.shape[0]
    say(f"{n} held-out observations from {held.path}")

    samples = _sample_all(posterior, held.trace, cfg.num_samples, cfg.seed, say)
    timing["sampling"] = time.perf_counter() - t0
    variant = str(posterior.variant)
    tag = f"{variant} posterior, {n} held-out observations"

    # calibration
    t1 = time.perf_counter()
    sbc_res = dg.sbc(held.theta, samples)
    tarp_res = dg.tarp(held.theta, samples, seed=cfg.seed)
    levels = dg.DEFAULT_LEVELS
    marg = dg.marginal_coverage(sbc_res.ranks, cfg.num_samples, levels)
    hpd = None
    if cfg.hpd:
        k = min(cfg.num_hpd, n)
        lps, lpt = _hpd_log_probs(posterior, held.trace[:k], held.theta[:k], samples[:k])
        hpd = dg.hpd_coverage(lps, lpt, levels, seed=cfg.seed)
    prior_draws = posterior.prior.sample(max(20_000, n), seed=cfg.seed + 7).astype(np.float64)
    prior_std = prior_draws.std(axis=0)
    c2st = dg.c2st_dap(prior_draws[:n], samples[:, 0, :]) if cfg.c2st else None
    verdict = dg.verdict(sbc_res, tarp_res)
    timing["calibration"] = time.perf_counter() - t1
    say(f"calibration: {verdict['verdict']} (TARP ATC {tarp_res.atc:+.3f}, {len(verdict['sbc_failed'])} SBC marginals failed)")

    # recovery
    rec = dg.recovery(held.theta, samples, prior_std)
    var_ratio = rec.post_std**2 / prior_std**2
    z = (rec.post_mean - held.theta) / np.maximum(rec.post_std, 1e-12)

    # posterior-predictive checks through the farm simulator
    t2 = time.perf_counter()
    chip = posterior.chip_model
    protocol = posterior.protocol
    ppc_metrics: dict[str, Any] = {"num_obs": 0}
    ppc_idx = _ppc_choice(held.spike_count, cfg.num_ppc)
    if ppc_idx.size:
        m = cfg.num_ppc_samples
        theta_pred = samples[ppc_idx, :m, :].reshape(-1, len(names))
        pred = simulate_theta(theta_pred, seed=cfg.seed + 1_000_003, protocol=protocol, chip_model=chip)
        theta_prior = posterior.prior.sample(ppc_idx.size * m, seed=cfg.seed + 11)
        prior_pred = simulate_theta(theta_prior, seed=cfg.seed + 2_000_003, protocol=protocol, chip_model=chip)
        k = ppc_idx.size
        obs_mv = _codes_to_mv(held.trace[ppc_idx], chip)
        pred_mv = _codes_to_mv(pred.trace, chip).reshape(k, m, -1)
        prior_mv = _codes_to_mv(prior_pred.trace, chip).reshape(k, m, -1)
        obs_feat = held.features[ppc_idx]
        sc = FEATURE_NAMES.index("spike_count")
        pr = dg.predictive_discrepancy(obs_mv, pred_mv, obs_feat, pred.features.reshape(k, m, -1), spike_index=sc)
        base = dg.predictive_discrepancy(obs_mv, prior_mv, obs_feat, prior_pred.features.reshape(k, m, -1), spike_index=sc)
        ppc_metrics = {
            "num_obs": int(k),
            "num_samples": int(m),
            "store_index": held.index[ppc_idx].tolist(),
            "trace_rmse_mv": float(pr.trace_rmse.mean()),
            "prior_trace_rmse_mv": float(base.trace_rmse.mean()),
            "trace_rmse_ratio": float(pr.trace_rmse.mean() / base.trace_rmse.mean()),
            "spike_count_error": float(pr.spike_count_error.mean()),
            "prior_spike_count_error": float(base.spike_count_error.mean()),
            "spike_count_coverage_90": float(pr.spike_count_coverage.mean()),
            "feature_abs_z_median": _named(FEATURE_NAMES, np.median(np.abs(pr.feature_z), axis=0)),
            "per_obs_trace_rmse_mv": pr.trace_rmse.tolist(),
        }
        kp = min(cfg.num_ppc_plot, k)
        figs_ppc = {}
        if kp:
            time_us = np.arange(obs_mv.shape[1]) * protocol.sample_period_us
            labels = [f"store sample {held.index[ppc_idx[i]]}: {int(obs_feat[i, sc])} spikes observed, trace RMSE {pr.trace_rmse[i]:.1f} mV (prior predictive {base.trace_rmse[i]:.1f} mV)" for i in range(kp)]
            figs_ppc["ppc_traces"] = plots.plot_ppc(time_us, obs_mv[:kp], pred_mv[:kp], obs_feat[:kp, sc], pred.features.reshape(k, m, -1)[:kp, :, sc], (protocol.stim_on_us, protocol.stim_off_us), outdir / "ppc_traces.png", title=f"Posterior-predictive check ({variant}): {m} simulations per observation", labels=labels).name
            figs_ppc["ppc_features"] = plots.plot_feature_z(pr.feature_z[:kp], FEATURE_NAMES, outdir / "ppc_features.png", title=f"Summary-statistic discrepancy, posterior predictive ({variant}); grey: |z| < 2").name
        ppc_metrics["figures"] = figs_ppc
        say(f"predictive checks: trace RMSE {ppc_metrics['trace_rmse_mv']:.1f} mV vs {ppc_metrics['prior_trace_rmse_mv']:.1f} mV from the prior")
    timing["ppc"] = time.perf_counter() - t2

    # figures
    t3 = time.perf_counter()
    low, high = np.asarray(posterior.prior.low), np.asarray(posterior.prior.high)
    figures = {
        "sbc_ranks": plots.plot_sbc_ranks(sbc_res.hist, sbc_res.bin_edges, sbc_res.ks_pvals, names, outdir / "sbc_ranks.png", title=f"SBC rank histograms: {tag}").name,
        "coverage": plots.plot_coverage(levels, marg, names, tarp_res.alpha, tarp_res.ecp, outdir / "coverage.png", hpd=hpd, title=f"Expected coverage: {tag}").name,
        "recovery": plots.plot_recovery(held.theta, rec.post_mean, rec.post_std, names, low, high, rec.nrmse, rec.contraction, outdir / "recovery.png", physics=PARAMETER_PHYSICS, title=f"Parameter recovery: {tag}").name,
        "contraction_z": plots.plot_contraction_z(1.0 - var_ratio, z, names, outdir / "contraction_z.png", title=f"Posterior contraction vs z-score: {tag}").name,
    }
    pair_obs = int(ppc_idx[min(2, ppc_idx.size - 1)]) if ppc_idx.size else 0  # a mid spike count among the plotted ones
    figures["pair"] = plots.plot_pair(samples[pair_obs], held.theta[pair_obs], names, low, high, outdir / "pair.png", title=f"{variant} posterior of store sample {held.index[pair_obs]} ({int(held.spike_count[pair_obs])} spikes in the step)").name
    figures.update(ppc_metrics.pop("figures", {}))
    timing["figures"] = time.perf_counter() - t3
    timing["total"] = time.perf_counter() - t0

    marg_dev = dg.coverage_deviation(levels, marg)
    hpd_dev = dg.coverage_deviation(levels, hpd) if hpd is not None else None
    training = _training_info(posterior)
    summary = {
        "variant": variant,
        "num_train": training.get("num_train"),
        "epochs_trained": training.get("epochs_trained"),
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
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "posterior": {"variant": variant, "fingerprint": str(posterior.fingerprint), "prior_fingerprint": post_fp, "training": training},
        "store": {"path": held.path, "seed": held.attrs.get("seed"), "num_sims": held.attrs.get("num_sims"), "num_excluded": held.num_excluded, "prior_fingerprint": store_fp, "prior_matches": prior_matches},
        "config": asdict(cfg),
        "parameter_names": list(names),
        "summary": summary,
        "verdict": verdict,
        "sbc": {
            "ks_pvals": _named(names, sbc_res.ks_pvals),
            "failed": [names[d] for d in verdict["sbc_failed"]],
            "bin_edges": sbc_res.bin_edges.tolist(),
            "hist": {nm: sbc_res.hist[d].tolist() for d, nm in enumerate(names)},
            "c2st_dap": _named(names, c2st) if c2st is not None else None,
        },
        "tarp": {"atc": tarp_res.atc, "ks_pval": tarp_res.ks_pval, "alpha": tarp_res.alpha.tolist(), "ecp": tarp_res.ecp.tolist()},
        "coverage": {
            "levels": levels.tolist(),
            "marginal": {nm: marg[:, d].tolist() for d, nm in enumerate(names)},
            "marginal_deviation": marg_dev,
            "hpd": hpd.tolist() if hpd is not None else None,
            "hpd_deviation": hpd_dev,
        },
        "recovery": {key: _named(names, getattr(rec, key)) for key in ("nrmse", "std_ratio", "contraction", "z_mean", "z_std", "z_robust_std", "z_outside_2", "r2")} | {"prior_std": _named(names, prior_std)},
        "ppc": ppc_metrics,
        "figures": figures,
        "warnings": warnings_list,
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
    }
    (outdir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=True))
    return metrics


def _ppc_choice(spike_count: NDArray[np.integer], k: int) -> NDArray[np.int64]:
    """k observations spread over the spike counts seen (spiking ones first), deterministic."""
    if k == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(spike_count, kind="stable")
    spiking = order[spike_count[order] > 0]
    pool = spiking if spiking.size >= k else order
    pick = pool[np.unique(np.linspace(0, pool.size - 1, min(k, pool.size)).round().astype(np.int64))]
    # interleave so that the first few (the plotted ones) already span low to high counts
    if pick.size > 2:
        step = max(1, pick.size // 4)
        first = pick[::step][:4]
        pick = np.concatenate([first, np.setdiff1d(pick, first, assume_unique=True)])
    return pick.astype(np.int64)


def _training_info(posterior: Any) -> dict[str, Any]:
    """What the posterior was trained on, from its manifest (stores, sample counts, epochs)."""
    man = getattr(posterior, "manifest", {}) or {}
    met = man.get("metrics", {}) if isinstance(man.get("metrics"), dict) else {}
    out: dict[str, Any] = {k: met[k] for k in ("num_train", "num_val", "best_epoch", "epochs_trained", "best_val_loss") if isinstance(met.get(k), (int, float))}
    stores = man.get("stores")
    if isinstance(stores, list):
        out["stores"] = [s.get("url") if isinstance(s, dict) else str(s) for s in stores]
    return out


# ----------------------------------------------------------------------------- reading reports
def load_report(path: str | Path) -> dict[str, Any]:
    """Read ``metrics.json`` of a report directory (or the file itself).

    Raises:
        ValueError: not an evaluation report, or of another format version.
    """
    p = Path(path)
    f = p / METRICS_FILE if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"report={str(path)!r} has no {METRICS_FILE}; pass a directory written by `farm evaluate`")
    try:
        m = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e.msg})") from None
    if m.get("kind") != "evaluation_report" or m.get("format_version") != REPORT_FORMAT_VERSION:
        raise ValueError(f"{f}: kind={m.get('kind')!r} format_version={m.get('format_version')!r}; expected evaluation_report v{REPORT_FORMAT_VERSION}")
    return m


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
