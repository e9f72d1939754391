"""The interface every substrate (emulated or real BSS-2 chip) implements, and what a run returns.

It imports no substrate: the emulator and the hardware backend import it, and the registry in
``farm.substrates.registry`` imports them, so no import runs in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol as TypingProtocol
from typing import runtime_checkable

import numpy as np
from numpy.typing import NDArray

from farm.defaults import ChipModel, Protocol


@dataclass(frozen=True, slots=True)
class SubstrateResult:
    """What one run of the protocol returns, per neuron row.

    trace: (n, T) int16 MADC codes; spike_times: (n, S) float32 µs, NaN-padded;
    spike_count: (n,) int32 spikes during the step current (of ``Regime.reference_sweep`` for
    several sweeps).
    """

    trace: NDArray[np.int16]
    spike_times: NDArray[np.float32]
    spike_count: NDArray[np.int32]


def merge_spike_times(per_sweep: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    """Spike times of several sweeps (each (n, S), NaN-padded) as one (n, S) array.

    The merged times are on the flat time axis.
    """
    allt = np.concatenate(per_sweep, axis=1)
    order = np.argsort(
        np.isnan(allt), axis=1, kind="stable"
    )  # real times first, each sweep's in order
    return np.ascontiguousarray(np.take_along_axis(allt, order, axis=1)[:, : per_sweep[0].shape[1]])


@runtime_checkable
class Substrate(TypingProtocol):
    """Configure a batch of neurons with CapMem parameters, run the step protocol, read out.

    ``chip`` and ``neuron`` name the circuit each row runs on and ``noise_keys`` its temporal
    noise stream; an emulator honours them exactly, real hardware maps them onto its own chip.
    """

    name: str
    protocol: Protocol
    chip_model: ChipModel

    def run(
        self,
        theta_lsb: NDArray[np.float32],
        chip: NDArray[np.int16],
        neuron: NDArray[np.int16],
        noise_keys: NDArray[np.uint64],
    ) -> SubstrateResult: ...
