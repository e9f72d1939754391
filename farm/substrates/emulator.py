"""The emulated BSS-2 chip: the default substrate, a thin wrapper around the AdEx kernel."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from farm.defaults import MAX_SPIKES, ChipModel, Protocol, Regime
from farm.kernel import rng
from farm.kernel.adex import integrate_adex, stimulus_waveform
from farm.substrates.base import SubstrateResult, merge_spike_times
from farm.substrates.circuits import neuron_physics


class EmulatorSubstrate:
    """One emulator instance: any (chip, neuron) of the emulated pool, mismatch and noise on."""

    name = "emulator"

    def __init__(
        self, protocol: Protocol | None = None, chip_model: ChipModel | None = None
    ) -> None:
        self.protocol = protocol or Protocol()
        self.chip_model = chip_model or ChipModel()

    def run(
        self,
        theta_lsb: NDArray[np.float32],
        chip: NDArray[np.int16],
        neuron: NDArray[np.int16],
        noise_keys: NDArray[np.uint64],
    ) -> SubstrateResult:
        """Every sweep of the protocol on the same circuits (same mismatch), with fresh noise each.

        The trace is the sweeps' codes one after another, (n, sweeps * T); ``spike_count`` is the
        count of ``Regime.reference_sweep`` and ``spike_times`` are on the flat time axis (sweep k
        starts at k * duration).
        """
        p, m = self.protocol, self.chip_model
        ph = neuron_physics(theta_lsb, chip, neuron, m)
        n, t = ph.g_leak_us.shape[0], p.samples_per_sweep
        keys = np.ascontiguousarray(noise_keys, dtype=np.uint64)
        sweeps = p.sweep_list
        trace = np.empty((n, len(sweeps) * t), dtype=np.int16)
        times, counts = [], []
        for k, sw in enumerate(sweeps):
            step_on, step_off = int(round(sw.t_on_us / p.dt_us)), int(round(sw.t_off_us / p.dt_us))
            wave = stimulus_waveform(
                sw.amplitude_na, sw.amplitude_end_na, step_on, step_off, t * p.steps_per_sample
            )
            part = trace[:, k * t : (k + 1) * t] if len(sweeps) > 1 else trace
            out = np.empty((n, t), dtype=np.int16) if len(sweeps) > 1 else trace
            spike_times = np.empty((n, MAX_SPIKES), dtype=np.float32)
            total = np.empty(n, dtype=np.int32)
            stim = np.empty(n, dtype=np.int32)
            integrate_adex(
                ph.c_mem_pf,
                ph.g_leak_us,
                ph.v_leak_mv,
                ph.v_reset_mv,
                ph.v_t_mv,
                ph.delta_t_mv,
                ph.a_us,
                ph.b_na,
                ph.tau_w_us,
                ph.v_threshold_mv,
                ph.t_ref_us,
                rng.sweep_keys(keys, k),
                wave,
                p.dt_us,
                step_on,
                step_off,
                p.steps_per_sample,
                t,
                m.noise_mv_per_sqrt_us,
                m.adc_v_min_mv,
                m.adc_max_code / (m.adc_v_max_mv - m.adc_v_min_mv),
                m.adc_noise_lsb,
                m.adc_max_code,
                out,
                spike_times,
                total,
                stim,
            )
            if out is not part:
                part[:] = out
            times.append(spike_times + np.float32(k * p.duration_us))
            counts.append(stim)
        if len(sweeps) == 1:
            return SubstrateResult(trace=trace, spike_times=times[0], spike_count=counts[0])
        return SubstrateResult(
            trace=trace,
            spike_times=merge_spike_times(times),
            spike_count=counts[Regime.reference_sweep(p)],
        )
