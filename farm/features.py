"""Handcrafted summary statistics of a membrane trace, from the ADC codes alone.

Why from the trace alone: a lab's observation is an MADC recording, so the statistics the
handcrafted posterior is trained on must be computable from exactly that. Spikes are found as
reset events: a drop of at least ``SPIKE_DROP_CODES`` between consecutive samples (the membrane
never falls that fast passively; readout noise is ~3 codes). The same function runs in the farm,
in training and at inference, so statistics stay consistent even where detection is imperfect.

Undefined statistics get documented fill values (not NaN), so every row is usable:
fewer than 2 spikes -> mean ISI = step duration, CV = 0; fewer than 3 -> adaptation index = 0;
no spike -> first-spike latency = step duration, AHP depth = 0.

A multi-sweep protocol gets every statistic per sweep (``feature_names``: ``spike_count@s0``, ...),
each computed on its own sweep's window exactly as for one step.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from farm.defaults import ChipModel, Protocol, Regime

FEATURE_NAMES: tuple[str, ...] = (
    "spike_count",
    "mean_isi_us",
    "cv_isi",
    "adaptation_index",
    "first_spike_latency_us",
    "v_rest_mv",
    "v_mean_stim_mv",
    "v_std_stim_mv",
    "ahp_depth_mv",
    "time_to_steady_state_us",
    "v_mean_post_mv",
)
FEATURE_UNITS: dict[str, str] = {
    "spike_count": "1",
    "mean_isi_us": "us",
    "cv_isi": "1",
    "adaptation_index": "1",
    "first_spike_latency_us": "us",
    "v_rest_mv": "mV",
    "v_mean_stim_mv": "mV",
    "v_std_stim_mv": "mV",
    "ahp_depth_mv": "mV",
    "time_to_steady_state_us": "us",
    "v_mean_post_mv": "mV",
}
SPIKE_DROP_CODES = 25
_AHP_WINDOW = 5
_SMOOTH = 5


@numba.njit(cache=True, parallel=True)
def _summarize(
    codes: NDArray[np.int16],
    mv_per_code: float,
    v_min_mv: float,
    s_on: int,
    s_off: int,
    dt_s: float,
    drop: int,
    out: NDArray[np.float32],
) -> None:
    n, t = codes.shape
    stim_len = (s_off - s_on) * dt_s
    for i in numba.prange(n):
        # resting potential before the step
        acc = 0.0
        for k in range(s_on):
            acc += codes[i, k]
        v_rest = v_min_mv + mv_per_code * acc / max(s_on, 1)
        # spikes during the step
        nsp = 0
        first = -1.0
        last = -1.0
        isi_sum = 0.0
        isi_sq = 0.0
        prev_isi = -1.0
        adapt = 0.0
        n_adapt = 0
        ahp_acc = 0.0
        for k in range(s_on + 1, min(s_off + 1, t)):
            if codes[i, k - 1] - codes[i, k] >= drop:
                tk = k * dt_s
                if nsp == 0:
                    first = tk
                else:
                    isi = tk - last
                    isi_sum += isi
                    isi_sq += isi * isi
                    if prev_isi > 0.0:
                        adapt += (isi - prev_isi) / (isi + prev_isi)
                        n_adapt += 1
                    prev_isi = isi
                last = tk
                nsp += 1
                vmin = 1e9
                for j in range(k, min(k + _AHP_WINDOW, t)):
                    if codes[i, j] < vmin:
                        vmin = codes[i, j]
                ahp_acc += v_rest - (v_min_mv + mv_per_code * vmin)
        # membrane statistics during the step
        m = 0.0
        m2 = 0.0
        for k in range(s_on, s_off):
            v = v_min_mv + mv_per_code * codes[i, k]
            m += v
            m2 += v * v
        cnt = s_off - s_on
        m /= cnt
        var = max(m2 / cnt - m * m, 0.0)
        # time to steady state: smoothed membrane first within 10 % of its final level's deviation
        tail = min(100, cnt)
        v_final = 0.0
        for k in range(s_off - tail, s_off):
            v_final += v_min_mv + mv_per_code * codes[i, k]
        v_final /= tail
        tol = 0.1 * abs(v_final - v_rest) + 2.0 * mv_per_code
        t_ss = stim_len
        for k in range(s_on, s_off - _SMOOTH):
            sm = 0.0
            for j in range(k, k + _SMOOTH):
                sm += v_min_mv + mv_per_code * codes[i, j]
            if abs(sm / _SMOOTH - v_final) <= tol:
                t_ss = (k - s_on) * dt_s
                break
        post = 0.0
        for k in range(s_off, t):
            post += v_min_mv + mv_per_code * codes[i, k]
        post = post / max(t - s_off, 1)
        n_isi = nsp - 1
        mean_isi = isi_sum / n_isi if n_isi >= 1 else stim_len
        cv = 0.0
        if n_isi >= 2:
            var_isi = max(isi_sq / n_isi - mean_isi * mean_isi, 0.0)
            cv = math.sqrt(var_isi) / mean_isi
        out[i, 0] = nsp
        out[i, 1] = mean_isi
        out[i, 2] = cv
        out[i, 3] = adapt / n_adapt if n_adapt > 0 else 0.0
        out[i, 4] = (first - s_on * dt_s) if nsp > 0 else stim_len
        out[i, 5] = v_rest
        out[i, 6] = m
        out[i, 7] = math.sqrt(var)
        out[i, 8] = ahp_acc / nsp if nsp > 0 else 0.0
        out[i, 9] = t_ss
        out[i, 10] = post


def feature_names(protocol: Protocol | None = None) -> tuple[str, ...]:
    """Names of the statistics ``summarize`` returns under ``protocol``.

    One sweep: ``FEATURE_NAMES`` as they always were. Several: every statistic per sweep, sweep by
    sweep, named ``<statistic>@s<k>`` (k from 0, the ``sweep`` coordinate of the store).
    """
    protocol = protocol or Protocol()
    if protocol.num_sweeps == 1:
        return FEATURE_NAMES
    return tuple(f"{name}@s{k}" for k in range(protocol.num_sweeps) for name in FEATURE_NAMES)


def feature_units(protocol: Protocol | None = None) -> dict[str, str]:
    """Units of each name of ``feature_names(protocol)``."""
    return {name: FEATURE_UNITS[name.split("@")[0]] for name in feature_names(protocol)}


def spike_count_column(protocol: Protocol | None = None) -> int:
    """Column of ``summarize``'s output that holds the regime's spike count.

    The count is that of ``Regime.reference_sweep``.
    """
    protocol = protocol or Protocol()
    return Regime.reference_sweep(protocol) * len(FEATURE_NAMES) + FEATURE_NAMES.index(
        "spike_count"
    )


def summarize(
    trace_codes: NDArray[np.integer],
    protocol: Protocol | None = None,
    chip: ChipModel | None = None,
) -> NDArray[np.float32]:
    """Handcrafted statistics, ``feature_names(protocol)`` order.

    Args:
        trace_codes: (n, T) or (T,) MADC codes, T = protocol.num_samples (all sweeps, one after
            another).
        protocol: the stimulus the traces were recorded under (default protocol if None).
        chip: its ADC range converts codes to mV (default chip if None).

    Returns:
        (n, 11 * sweeps) float32 statistics.
    """
    protocol = protocol or Protocol()
    chip = chip or ChipModel()
    codes = np.asarray(trace_codes)
    if codes.ndim == 1:
        codes = codes[None, :]
    if codes.ndim != 2 or codes.shape[1] != protocol.num_samples:
        raise ValueError(
            f"trace shape {np.shape(trace_codes)} must be (n, {protocol.num_samples}) ADC codes"
        )
    if not np.issubdtype(codes.dtype, np.integer):
        if not np.all(np.isfinite(codes)):
            raise ValueError("trace contains NaN or inf; it must hold ADC codes")
        codes = np.rint(codes)
    codes = np.ascontiguousarray(np.clip(codes, -32768, 32767).astype(np.int16))
    f, t = len(FEATURE_NAMES), protocol.samples_per_sweep
    out = np.empty((codes.shape[0], f * protocol.num_sweeps), dtype=np.float32)
    mv_per_code = (chip.adc_v_max_mv - chip.adc_v_min_mv) / chip.adc_max_code
    for k, sweep in enumerate(protocol.sweep_list):
        s_on = int(round(sweep.t_on_us / protocol.sample_period_us))
        s_off = int(round(sweep.t_off_us / protocol.sample_period_us))
        part = (
            codes
            if protocol.num_sweeps == 1
            else np.ascontiguousarray(codes[:, k * t : (k + 1) * t])
        )
        dest = out if protocol.num_sweeps == 1 else np.empty((codes.shape[0], f), dtype=np.float32)
        _summarize(
            part,
            mv_per_code,
            chip.adc_v_min_mv,
            s_on,
            s_off,
            protocol.sample_period_us,
            SPIKE_DROP_CODES,
            dest,
        )
        if dest is not out:
            out[:, k * f : (k + 1) * f] = dest
    return out
