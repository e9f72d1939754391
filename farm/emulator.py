"""The emulated BSS-2 chip: the default substrate, a thin wrapper around the AdEx kernel."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from farm.adex import integrate_adex
from farm.chip import neuron_physics
from farm.defaults import MAX_SPIKES, ChipModel, Protocol
from farm.substrate_base import SubstrateResult


class EmulatorSubstrate:
    """One emulator instance: any (chip, neuron) of the emulated pool, mismatch and noise on."""

    name = "emulator"

    def __init__(self, protocol: Protocol | None = None, chip_model: ChipModel | None = None) -> None:
        self.protocol = protocol or Protocol()
        self.chip_model = chip_model or ChipModel()

    def run(self, theta_lsb: NDArray[np.float32], chip: NDArray[np.int16], neuron: NDArray[np.int16], noise_keys: NDArray[np.uint64]) -> SubstrateResult:
        p, m = self.protocol, self.chip_model
        ph = neuron_physics(theta_lsb, chip, neuron, m)
        n = ph.g_leak_us.shape[0]
        trace = np.empty((n, p.num_samples), dtype=np.int16)
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
            np.ascontiguousarray(noise_keys, dtype=np.uint64),
            p.i_stim_na,
            p.dt_us,
            int(round(p.stim_on_us / p.dt_us)),
            int(round(p.stim_off_us / p.dt_us)),
            p.steps_per_sample,
            p.num_samples,
            m.noise_mv_per_sqrt_us,
            m.adc_v_min_mv,
            m.adc_max_code / (m.adc_v_max_mv - m.adc_v_min_mv),
            m.adc_noise_lsb,
            m.adc_max_code,
            trace,
            spike_times,
            total,
            stim,
        )
        return SubstrateResult(trace=trace, spike_times=spike_times, spike_count=stim)
