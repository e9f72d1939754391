"""The AdEx kernel: adaptive exponential integrate-and-fire dynamics in BSS-2 hardware time.

Equations (hardware time t in µs, v in mV, w in nA, conductances in µS, C in pF), Brian2-style::

    C dv/dt     = -g_leak (v - v_leak) + g_leak delta_t exp((v - v_t) / delta_t) - w + I(t)  : mV
    tau_w dw/dt = a (v - v_leak) - w                                                   : nA
    on v >= v_threshold:  v <- v_reset,  w <- w + b,  v clamped at v_reset for t_ref
    I(t) = i_stim during [t_pre, t_pre + t_stim), else 0                              : nA

plus temporal noise, a white-noise diffusion on v of ``noise`` mV/sqrt(µs), and the MADC readout:
v sampled every ``steps_per_sample`` steps, ``codes = round((v - adc_v_min) * adc_scale + adc_noise
* N(0, 1))`` clipped to [0, adc_max]. Integration is forward Euler with step ``dt`` (docs/emulator.md
has the convergence test). All randomness comes from ``noise_keys`` through farm.rng, so a row's
trace is a pure function of its inputs, whatever the batch it runs in or the thread that runs it.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from farm.rng import mix64, to_normal_fast

_EXP_ARG_MAX = 30.0  # exp(30) already crosses any threshold within one step; avoids overflow
_EXP_ARG_MIN = -30.0  # exp(-30) ~ 1e-13: below the rounding of v (~600 mV * 2e-16) after dt/C scaling
_ADC_STREAM = np.uint64(0xADC0ADC0ADC0ADC0)


@numba.njit(cache=True, parallel=True, nogil=True)
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
    i_stim_na: float,
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
        c_mem_pf ... t_ref_us: (n,) per-neuron physics (farm.chip.NeuronPhysics).
        noise_keys: (n,) uint64, one key per row; temporal and readout noise derive from it.
        step_on, step_off: integration steps at which the step current switches on and off.
        trace_out: (n, num_samples) int16 ADC codes.
        spike_times_out: (n, S) float32 µs, NaN-padded; the first S spikes of each row.
        spike_count_out: (n,) all spikes; stim_spike_count_out: (n,) spikes during the step.
    """
    n = g_leak_us.shape[0]
    max_spikes = spike_times_out.shape[1]
    sigma_step = noise_mv_per_sqrt_us * math.sqrt(dt_us)
    for i in numba.prange(n):
        c = c_mem_pf[i]
        gl = g_leak_us[i]
        el = v_leak_mv[i]
        vr = v_reset_mv[i]
        vt = v_t_mv[i]
        dT = delta_t_mv[i]
        a = a_us[i]
        b = b_na[i]
        dt_tau_w = dt_us / tau_w_us[i]
        vth = v_threshold_mv[i]
        n_ref = int(round(t_ref_us[i] / dt_us))
        dt_c = dt_us / c
        inv_dT = 1.0 / dT
        gl_dT = gl * dT
        noise_key = mix64(noise_keys[i])
        adc_key = mix64(noise_keys[i] ^ _ADC_STREAM)
        v = el
        w = 0.0
        ref = 0
        count = 0
        stim_count = 0
        step = 0
        for s in range(num_samples):
            # MADC sample at the start of each sample period.
            code = (v - adc_v_min_mv) * adc_codes_per_mv
            if adc_noise_lsb > 0.0:
                code += adc_noise_lsb * to_normal_fast(mix64(adc_key ^ np.uint64(s)))
            code = math.floor(code + 0.5)
            if code < 0.0:
                code = 0.0
            elif code > adc_max_code:
                code = float(adc_max_code)
            trace_out[i, s] = np.int16(code)
            for _ in range(steps_per_sample):
                current = i_stim_na if (step >= step_on and step < step_off) else 0.0
                dw = dt_tau_w * (a * (v - el) - w)
                if ref > 0:
                    ref -= 1
                    v = vr
                else:
                    arg = (v - vt) * inv_dT
                    if arg > _EXP_ARG_MAX:
                        arg = _EXP_ARG_MAX
                    # Far below v_t the exponential term is under float64 resolution of v: skip it.
                    spike_current = gl_dT * math.exp(arg) if arg > _EXP_ARG_MIN else 0.0
                    v += dt_c * (-gl * (v - el) + spike_current - w + current)
                    if sigma_step > 0.0:
                        v += sigma_step * to_normal_fast(mix64(noise_key ^ np.uint64(step)))
                w += dw
                step += 1
                if v >= vth:
                    t_spike = step * dt_us
                    if count < max_spikes:
                        spike_times_out[i, count] = np.float32(t_spike)
                    count += 1
                    if step > step_on and step <= step_off:
                        stim_count += 1
                    v = vr
                    w += b
                    ref = n_ref
        for k in range(min(count, max_spikes), max_spikes):
            spike_times_out[i, k] = np.float32(np.nan)
        spike_count_out[i] = count
        stim_spike_count_out[i] = stim_count
