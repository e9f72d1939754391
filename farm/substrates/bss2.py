"""The real-chip substrate: the same interface over pynn_brainscales (``HXNeuron`` + MADC).

Untested on a chip (none is reachable from this project's machines); the pure parameter mapping
below is unit-tested. pynn_brainscales ships with the BrainScaleS-2 software stack (the EBRAINS
container or the visionary spack environment), not PyPI, so it is imported only when this
substrate is built. Calibration comes from calix: pass a calibration file through the
``BSS2_CALIBRATION`` environment variable (a ``calix`` neuron calibration result, ``.pbin``).

How a batch runs: the 7 inferred CapMem values are written into ``HXNeuron`` parameters of a
population on the chip's neuron circuits; the held-fixed parameters (leak potential, threshold,
refractory time, capacitance) come from the calibration. The MADC records one neuron per run,
so each row is one run per sweep of the protocol; spikes are recorded for all neurons. A sweep's
step current is the neuron's constant-current source at the sweep's amplitude, switched on at
``t_on_us`` and off at ``t_off_us`` by running three segments (off / on / off); the sweeps of a
row run one after another on the same circuit, like the emulator's. Ramps are refused.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.defaults import (
    MAX_SPIKES,
    NEURONS_PER_CHIP,
    PARAMETER_NAMES,
    ChipModel,
    Protocol,
    Regime,
    Sweep,
)
from farm.errors import FarmInputError
from farm.substrates.base import SubstrateResult, merge_spike_times
from farm.substrates.circuits import quantize_capmem

#: CapMem code of the step current, from the protocol's nA through the emulator's gain model.
I_OFFSET_NA_PER_LSB = 0.1
INSTALL_HINT = (
    "substrate='bss2' needs pynn_brainscales from the BrainScaleS-2 software stack "
    "(EBRAINS container or visionary spack env; "
    "https://electronicvisions.github.io/documentation-brainscales2/); "
    "use --substrate emulator without hardware access"
)


def hxneuron_parameters(theta_lsb: NDArray[np.floating], i_stim_na: float) -> dict[str, Any]:
    """HXNeuron keyword arguments for a population, one value per row for the inferred knobs.

    Args:
        theta_lsb: (n, 7) CapMem values in ``PARAMETER_NAMES`` order (rounded and clipped to
            0..1022).
        i_stim_na: step current amplitude; mapped to ``constant_current_i_offset`` LSB.
    """
    lsb = quantize_capmem(theta_lsb).astype(np.int64)
    params: dict[str, Any] = {name: lsb[:, j].tolist() for j, name in enumerate(PARAMETER_NAMES)}
    params.update(
        exponential_enable_multiplication=False,
        exponential_enable=True,
        adaptation_enable=True,
        adaptation_enable_pulse=True,
        threshold_enable=True,
        constant_current_i_offset=int(np.clip(round(i_stim_na / I_OFFSET_NA_PER_LSB), 0, 1022)),
    )
    return params


def madc_to_codes(v: NDArray[np.floating], adc_max_code: int) -> NDArray[np.int16]:
    """MADC samples (already ADC units in pynn_brainscales) to clipped int16 codes."""
    return np.clip(np.rint(np.asarray(v, dtype=np.float64)), 0, adc_max_code).astype(np.int16)


def resample_trace(
    times_us: NDArray[np.floating], values: NDArray[np.floating], protocol: Protocol
) -> NDArray[np.float64]:
    """One sweep's MADC samples (~30 MSa/s, irregular in time) onto the protocol's grid.

    Resampling is sample-and-hold.
    """
    grid = np.arange(protocol.samples_per_sweep) * protocol.sample_period_us
    pos = np.clip(np.searchsorted(times_us, grid, side="right") - 1, 0, len(values) - 1)
    return np.asarray(values, dtype=np.float64)[pos]


def check_protocol(protocol: Protocol) -> None:
    """Refuse what the chip's constant-current source cannot play: ramps (one value per run)."""
    for k, sweep in enumerate(protocol.sweep_list):
        if sweep.is_ramp:
            raise FarmInputError(
                f"sweep {k} of protocol {protocol.label} is a ramp; "
                "substrate='bss2' plays step sweeps only (constant_current_i_offset)"
            )


class BSS2Substrate:
    """One physical BrainScaleS-2 chip reached through pynn_brainscales."""

    name = "bss2"

    def __init__(
        self, protocol: Protocol | None = None, chip_model: ChipModel | None = None
    ) -> None:
        try:
            import pynn_brainscales.brainscales2 as pynn  # noqa: F401
        except ImportError:
            raise FarmInputError(INSTALL_HINT) from None
        self.protocol = protocol or Protocol()
        self.chip_model = chip_model or ChipModel()
        check_protocol(self.protocol)
        self._pynn = pynn
        self._calibration = os.environ.get("BSS2_CALIBRATION")

    def run(
        self,
        theta_lsb: NDArray[np.float32],
        chip: NDArray[np.int16],
        neuron: NDArray[np.int16],
        noise_keys: NDArray[np.uint64],
    ) -> SubstrateResult:
        """Each row runs every sweep on neuron circuit ``neuron % 512`` of this chip.

        The noise is the chip's own.
        """
        p = self.protocol
        n, t = theta_lsb.shape[0], p.samples_per_sweep
        trace = np.empty((n, p.num_samples), dtype=np.int16)
        per_sweep_times, per_sweep_counts = [], []
        for k, sweep in enumerate(p.sweep_list):
            codes, times, counts = self._run_sweep(theta_lsb, sweep)
            trace[:, k * t : (k + 1) * t] = codes
            per_sweep_times.append(times + np.float32(k * p.duration_us))
            per_sweep_counts.append(counts)
        if p.num_sweeps == 1:
            return SubstrateResult(
                trace=trace, spike_times=per_sweep_times[0], spike_count=per_sweep_counts[0]
            )
        return SubstrateResult(
            trace=trace,
            spike_times=merge_spike_times(per_sweep_times),
            spike_count=per_sweep_counts[Regime.reference_sweep(p)],
        )

    def _run_sweep(
        self, theta_lsb: NDArray[np.float32], sweep: Sweep
    ) -> tuple[NDArray[np.int16], NDArray[np.float32], NDArray[np.int32]]:
        """One sweep for every row: the neuron's constant-current source at the sweep's amplitude,
        switched on at ``t_on_us`` and off at ``t_off_us`` by running three segments."""
        pynn = self._pynn
        p = self.protocol
        n = theta_lsb.shape[0]
        params = hxneuron_parameters(theta_lsb, sweep.amplitude_na)
        trace = np.empty((n, p.samples_per_sweep), dtype=np.int16)
        spike_times = np.full((n, MAX_SPIKES), np.nan, dtype=np.float32)
        counts = np.zeros(n, dtype=np.int32)
        setup_kwargs: dict[str, Any] = {}
        if self._calibration:
            from pynn_brainscales.brainscales2 import helper

            setup_kwargs["initial_config"] = helper.chip_from_file(self._calibration)
        for row in range(n):
            pynn.setup(**setup_kwargs)
            row_params = {k: (v[row] if isinstance(v, list) else v) for k, v in params.items()}
            pop = pynn.Population(
                1,
                pynn.cells.HXNeuron(**row_params, constant_current_enable=False),
                initial_values={},
            )
            pop.record(["v", "spikes"])
            # Hardware time is 1000x biological: pynn_brainscales takes biological ms, so µs map
            # to ms.
            pynn.run(sweep.t_on_us)
            pop.set(constant_current_enable=True)
            pynn.run(sweep.t_off_us - sweep.t_on_us)
            pop.set(constant_current_enable=False)
            pynn.run(sweep.duration_us - sweep.t_off_us)
            block = pop.get_data()
            seg = block.segments[-1]
            sig = seg.irregularlysampledsignals[0]
            trace[row] = madc_to_codes(
                resample_trace(np.asarray(sig.times, dtype=np.float64), np.asarray(sig).ravel(), p),
                self.chip_model.adc_max_code,
            )
            spikes = np.asarray(seg.spiketrains[0], dtype=np.float64)
            in_stim = spikes[(spikes > sweep.t_on_us) & (spikes <= sweep.t_off_us)]
            counts[row] = in_stim.size
            k = min(spikes.size, MAX_SPIKES)
            spike_times[row, :k] = spikes[:k]
            pynn.end()
        return trace, spike_times, counts


__all__ = [
    "BSS2Substrate",
    "check_protocol",
    "hxneuron_parameters",
    "madc_to_codes",
    "resample_trace",
    "INSTALL_HINT",
    "NEURONS_PER_CHIP",
]
