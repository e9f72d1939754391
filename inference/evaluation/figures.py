"""The figures of an evaluation report, drawn from what ``inference.evaluation.metrics`` computed.

Nothing here computes a metric (as in sbi, where the SBC plots only read ``run_sbc``'s output),
so each figure shows what ``metrics.json`` holds. ``inference.evaluation.plots`` draws each figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.defaults import PARAMETER_PHYSICS
from farm.features import feature_names, spike_count_column
from inference.diagnostics.calibration import RecoveryResult
from inference.evaluation import plots
from inference.evaluation.metrics import Calibration, HeldOut, PredictiveCheck


def draw_figures(
    outdir: Path,
    posterior: Any,
    held: HeldOut,
    samples: NDArray[np.float32],
    cal: Calibration,
    rec: RecoveryResult,
    ppc: PredictiveCheck | None,
    num_ppc_plot: int,
) -> dict[str, str]:
    """Write the report's PNGs into ``outdir``; returns figure name -> file name."""
    names = tuple(posterior.parameter_names)
    variant = str(posterior.variant)
    tag = f"{variant} posterior, {held.theta.shape[0]} held-out observations"
    low, high = np.asarray(posterior.prior.low), np.asarray(posterior.prior.high)
    var_ratio = rec.post_std**2 / cal.prior_std**2
    z = (rec.post_mean - held.theta) / np.maximum(rec.post_std, 1e-12)
    sbc = cal.sbc
    figures = {
        "sbc_ranks": plots.plot_sbc_ranks(
            sbc.hist,
            sbc.bin_edges,
            sbc.ks_pvals,
            names,
            outdir / "sbc_ranks.png",
            title=f"SBC rank histograms: {tag}",
        ).name,
        "coverage": plots.plot_coverage(
            cal.levels,
            cal.marginal,
            names,
            cal.tarp.alpha,
            cal.tarp.ecp,
            outdir / "coverage.png",
            hpd=cal.hpd,
            title=f"Expected coverage: {tag}",
        ).name,
        "recovery": plots.plot_recovery(
            held.theta,
            rec.post_mean,
            rec.post_std,
            names,
            low,
            high,
            rec.nrmse,
            rec.contraction,
            outdir / "recovery.png",
            physics=PARAMETER_PHYSICS,
            title=f"Parameter recovery: {tag}",
        ).name,
        "contraction_z": plots.plot_contraction_z(
            1.0 - var_ratio,
            z,
            names,
            outdir / "contraction_z.png",
            title=f"Posterior contraction vs z-score: {tag}",
        ).name,
    }
    idx = ppc.index if ppc is not None else np.empty(0, dtype=np.int64)
    pair_obs = (
        int(idx[min(2, idx.size - 1)]) if idx.size else 0
    )  # a mid spike count among the plotted ones
    figures["pair"] = plots.plot_pair(
        samples[pair_obs],
        held.theta[pair_obs],
        names,
        low,
        high,
        outdir / "pair.png",
        title=f"{variant} posterior of store sample {held.index[pair_obs]} "
        f"({int(held.spike_count[pair_obs])} spikes in the step)",
    ).name
    if ppc is not None:
        figures.update(_ppc_figures(outdir, posterior, held, ppc, num_ppc_plot))
    return figures


def _ppc_figures(
    outdir: Path, posterior: Any, held: HeldOut, ppc: PredictiveCheck, num_ppc_plot: int
) -> dict[str, str]:
    """Predictive traces and statistic discrepancies of the first ``num_ppc_plot`` observations."""
    kp = min(num_ppc_plot, ppc.index.size)
    if not kp:
        return {}
    variant, protocol = str(posterior.variant), posterior.protocol
    sc = spike_count_column(protocol)
    pr, base = ppc.posterior, ppc.prior
    time_us = np.arange(ppc.obs_mv.shape[1]) * protocol.sample_period_us
    labels = [
        f"store sample {held.index[ppc.index[i]]}: {int(ppc.obs_features[i, sc])} spikes observed, "
        f"trace RMSE {pr.trace_rmse[i]:.1f} mV (prior predictive {base.trace_rmse[i]:.1f} mV)"
        for i in range(kp)
    ]
    return {
        "ppc_traces": plots.plot_ppc(
            time_us,
            ppc.obs_mv[:kp],
            ppc.pred_mv[:kp],
            ppc.obs_features[:kp, sc],
            ppc.pred_features[:kp, :, sc],
            (protocol.stim_on_us, protocol.stim_off_us),
            outdir / "ppc_traces.png",
            title=f"Posterior-predictive check ({variant}): "
            f"{ppc.num_samples} simulations per observation",
            labels=labels,
        ).name,
        "ppc_features": plots.plot_feature_z(
            pr.feature_z[:kp],
            feature_names(protocol),
            outdir / "ppc_features.png",
            title=f"Summary-statistic discrepancy, posterior predictive ({variant}); grey: |z| < 2",
        ).name,
    }


__all__ = ["draw_figures"]
