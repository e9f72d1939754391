"""The AdEx kernel: adaptive exponential integrate-and-fire dynamics in BSS-2 hardware time.

Equations (hardware time t in µs, v in mV, w in nA, conductances in µS, C in pF), Brian2-style::

    C dv/dt     = -g_leak (v - v_leak) + g_leak delta_t exp((v - v_t) / delta_t) - w + I(t)  : mV
    tau_w dw/dt = a (v - v_leak) - w                                                   : nA
    on v >= v_threshold:  v <- v_reset,  w <- w + b,  v clamped at v_reset for t_ref
    I(t) = i_stim during [t_on, t_off) (a step, or a linear ramp), else 0             : nA

plus temporal noise, a white-noise diffusion on v of ``noise`` mV/sqrt(µs), and the MADC readout:
v sampled every ``steps_per_sample`` steps,
``codes = round((v - adc_v_min) * adc_scale + adc_noise * N(0, 1))`` clipped to [0, adc_max].
Integration is forward Euler with step ``dt`` (docs/emulator.md has the convergence test). All
randomness comes from ``noise_keys`` through farm.kernel.rng, so a row's trace is a pure function
of its inputs, whatever the batch it runs in or the thread that runs it.

Speed: each thread advances ``LANES`` neurons in lockstep, and the step itself is explicit SIMD
(farm.kernel.simd_step: one vector instruction per float operation for 4 lanes on AVX2, a
vectorised copy of glibc's exp, branch-free refractory clamp); the rare spike resets run in scalar
code. Each neuron still sees the same float operations in the same order: traces are bit-identical
to the one-neuron-at-a-time loop on any x86-64 (tests/test_kernel.py checks a baseline SSE2 build
too). No fastmath: it would reorder and fuse float operations.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from farm.kernel.expm import TABLE as _EXP_TABLE
from farm.kernel.rng import mix64, to_normal_fast
from farm.kernel.simd_step import (
    DT_C,
    DT_TAU_W,
    G_LEAK,
    G_LEAK_DELTA_T,
    INV_DELTA_T,
    LANES,
    PARAM_ROWS,
    V_LEAK,
    V_RESET,
    V_T,
    V_THRESHOLD,
    A,
    euler_step,
)

_ADC_STREAM = np.uint64(0xADC0ADC0ADC0ADC0)
#: sha256 of farm/kernel/simd_step.py, farm/kernel/expm.py and farm/kernel/rng.py (in that
#: order), whose code numba compiles into this module's kernels. Numba's on-disk cache watches
#: only this file, so a change to one of them must change this line too (tests/test_kernel.py
#: checks), or a stale compiled kernel keeps running.
INLINED_SOURCES_SHA256 = "6b1aa19ab2716dcaca0da636f8dde7a7e4cdd4096d3736062b429683556cd08e"


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _integrate_lanes(
    i0: int,
    m: int,
    c_mem_pf: NDArray[np.float64],
    g_leak_us: NDArray[np.float64],
    v_leak_mv: NDArray[np.float64],
    v_reset_mv: NDArray[np.float64],
    v_t_mv: NDArray[np.float64],
    delta_t_mv: NDArray[np.float64],
    a_us: NDArray[np.float64],
    b_na: NDArray[np.float64],
    tau_w_us: NDArray[np.float64],
    v_threshold_mv: NDArray[np.float64],
    t_ref_us: NDArray[np.float64],
    noise_keys: NDArray[np.uint64],
    i_wave_na: NDArray[np.float64],
    dt_us: float,
    step_on: int,
    step_off: int,
    steps_per_sample: int,
    num_samples: int,
    noise_mv_per_sqrt_us: float,
    adc_v_min_mv: float,
    adc_codes_per_mv: float,
    adc_noise_lsb: float,
    adc_max_code: int,
    trace_out: NDArray[np.int16],
    spike_times_out: NDArray[np.float32],
    spike_count_out: NDArray[np.int32],
    stim_spike_count_out: NDArray[np.int32],
) -> None:
    """Rows i0 .. i0+m-1 (m <= LANES) advanced together, step by step; see integrate_adex."""
    max_spikes = spike_times_out.shape[1]
    sigma_step = noise_mv_per_sqrt_us * math.sqrt(dt_us)
    # Lane state and constants as (row, lane) arrays: farm.kernel.simd_step loads each row as one
    # vector.
    state = np.empty((2, LANES))  # v, w
    params = np.empty((len(PARAM_ROWS), LANES))
    b = np.empty(LANES)
    noise_key = np.empty(LANES, dtype=np.uint64)
    adc_key = np.empty(LANES, dtype=np.uint64)
    n_ref = np.empty(LANES, dtype=np.int64)
    ref = np.zeros(LANES, dtype=np.int64)
    count = np.zeros(LANES, dtype=np.int64)
    stim_count = np.zeros(LANES, dtype=np.int64)
    for k in range(LANES):
        # Lanes past the last row (m < LANES) repeat it; their results are never written.
        i = i0 + min(k, m - 1)
        params[V_LEAK, k] = v_leak_mv[i]
        params[V_T, k] = v_t_mv[i]
        params[INV_DELTA_T, k] = 1.0 / delta_t_mv[i]
        params[G_LEAK, k] = g_leak_us[i]
        params[G_LEAK_DELTA_T, k] = g_leak_us[i] * delta_t_mv[i]
        params[DT_C, k] = dt_us / c_mem_pf[i]
        params[A, k] = a_us[i]
        params[DT_TAU_W, k] = dt_us / tau_w_us[i]
        params[V_RESET, k] = v_reset_mv[i]
        params[V_THRESHOLD, k] = v_threshold_mv[i]
        b[k] = b_na[i]
        n_ref[k] = int(round(t_ref_us[i] / dt_us))
        noise_key[k] = mix64(noise_keys[i])
        adc_key[k] = mix64(noise_keys[i] ^ _ADC_STREAM)
        state[0, k] = v_leak_mv[i]
        state[1, k] = 0.0
    step = 0
    for s in range(num_samples):
        # MADC sample at the start of each sample period.
        us = np.uint64(s)
        for k in range(LANES):
            code = (state[0, k] - adc_v_min_mv) * adc_codes_per_mv
            if adc_noise_lsb > 0.0:
                code += adc_noise_lsb * to_normal_fast(mix64(adc_key[k] ^ us))
            code = math.floor(code + 0.5)
            if code < 0.0:
                code = 0.0
            elif code > adc_max_code:
                code = float(adc_max_code)
            if k < m:
                trace_out[i0 + k, s] = np.int16(code)
        for _ in range(steps_per_sample):
            current = i_wave_na[step]
            ustep = np.uint64(step)
            step += 1
            if euler_step(state, params, noise_key, ref, _EXP_TABLE, current, ustep, sigma_step):
                # Spike: reset the lanes that crossed (rare, so scalar).
                t_spike = step * dt_us
                in_stim = step > step_on and step <= step_off
                for k in range(LANES):
                    if state[0, k] >= params[V_THRESHOLD, k]:
                        c = count[k]
                        if c < max_spikes and k < m:
                            spike_times_out[i0 + k, c] = np.float32(t_spike)
                        count[k] = c + 1
                        if in_stim:
                            stim_count[k] += 1
                        state[0, k] = params[V_RESET, k]
                        state[1, k] += b[k]
                        ref[k] = n_ref[k]
    for k in range(m):
        i = i0 + k
        for j in range(min(count[k], max_spikes), max_spikes):
            spike_times_out[i, j] = np.float32(np.nan)
        spike_count_out[i] = count[k]
        stim_spike_count_out[i] = stim_count[k]


def stimulus_waveform(
    amplitude_na: float, amplitude_end_na: float | None, step_on: int, step_off: int, num_steps: int
) -> NDArray[np.float64]:
    """The current at every Euler step of one sweep, a step or a ramp.

    A step is ``amplitude_na`` in [step_on, step_off) and 0 elsewhere; a ramp goes linearly from
    ``amplitude_na`` to ``amplitude_end_na`` over the same window.

    A step's values are the very floats the kernel used before waveforms existed (the amplitude
    and 0.0), so `step` traces stay bit-identical.
    """
    wave = np.zeros(num_steps, dtype=np.float64)
    if amplitude_end_na is None:
        wave[step_on:step_off] = amplitude_na
    else:
        k = np.arange(step_off - step_on, dtype=np.float64)
        wave[step_on:step_off] = amplitude_na + (amplitude_end_na - amplitude_na) * k / max(
            step_off - step_on - 1, 1
        )
    return wave


@numba.njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def integrate_adex(
    c_mem_pf: NDArray[np.float64],
    g_leak_us: NDArray[np.float64],
    v_leak_mv: NDArray[np.float64],
    v_reset_mv: NDArray[np.float64],
    v_t_mv: NDArray[np.float64],
    delta_t_mv: NDArray[np.float64],
    a_us: NDArray[np.float64],
    b_na: NDArray[np.float64],
    tau_w_us: NDArray[np.float64],
    v_threshold_mv: NDArray[np.float64],
    t_ref_us: NDArray[np.float64],
    noise_keys: NDArray[np.uint64],
    i_wave_na: NDArray[np.float64],
    dt_us: float,
    step_on: int,
    step_off: int,
    steps_per_sample: int,
    num_samples: int,
    noise_mv_per_sqrt_us: float,
    adc_v_min_mv: float,
    adc_codes_per_mv: float,
    adc_noise_lsb: float,
    adc_max_code: int,
    trace_out: NDArray[np.int16],
    spike_times_out: NDArray[np.float32],
    spike_count_out: NDArray[np.int32],
    stim_spike_count_out: NDArray[np.int32],
) -> None:
    """Integrate n neurons over the protocol; writes the four ``*_out`` arrays in place.

    Args:
        c_mem_pf ... t_ref_us: (n,) per-neuron physics (farm.substrates.circuits.NeuronPhysics).
        noise_keys: (n,) uint64, one key per row; temporal and readout noise derive from it.
        i_wave_na: (num_samples * steps_per_sample,) float64, the stimulus current at each Euler
            step (``stimulus_waveform``: a step or a ramp; 0 outside [step_on, step_off)).
        step_on, step_off: integration steps at which the current switches on and off (spikes in
            between count as during the stimulus).
        trace_out: (n, num_samples) int16 ADC codes.
        spike_times_out: (n, S) float32 µs, NaN-padded; the first S spikes of each row.
        spike_count_out: (n,) all spikes; stim_spike_count_out: (n,) spikes during the step.
    """
    n = g_leak_us.shape[0]
    for blk in numba.prange((n + LANES - 1) // LANES):
        i0 = blk * LANES
        _integrate_lanes(
            i0,
            min(LANES, n - i0),
            c_mem_pf,
            g_leak_us,
            v_leak_mv,
            v_reset_mv,
            v_t_mv,
            delta_t_mv,
            a_us,
            b_na,
            tau_w_us,
            v_threshold_mv,
            t_ref_us,
            noise_keys,
            i_wave_na,
            dt_us,
            step_on,
            step_off,
            steps_per_sample,
            num_samples,
            noise_mv_per_sqrt_us,
            adc_v_min_mv,
            adc_codes_per_mv,
            adc_noise_lsb,
            adc_max_code,
            trace_out,
            spike_times_out,
            spike_count_out,
            stim_spike_count_out,
        )
