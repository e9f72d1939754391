"""The interface every substrate (emulated or real BSS-2 chip) implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol as TypingProtocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from farm.defaults import ChipModel, Protocol

SUBSTRATES: tuple[str, ...] = ("emulator", "bss2")


@dataclass(frozen=True, slots=True)
class SubstrateResult:
    """What one run of the protocol returns, per neuron row.

    trace: (n, T) int16 MADC codes; spike_times: (n, S) float32 µs, NaN-padded;
    spike_count: (n,) int32 spikes during the step current.
    """

    trace: NDArray[np.int16]
    spike_times: NDArray[np.float32]
    spike_count: NDArray[np.int32]


@runtime_checkable
class Substrate(TypingProtocol):
    """Configure a batch of neurons with CapMem parameters, run the step protocol, read out.

    ``chip`` and ``neuron`` name the circuit each row runs on and ``noise_keys`` its temporal
    noise stream; an emulator honours them exactly, real hardware maps them onto its own chip.
    """

    name: str
    protocol: Protocol
    chip_model: ChipModel

    def run(self, theta_lsb: NDArray[np.float32], chip: NDArray[np.int16], neuron: NDArray[np.int16], noise_keys: NDArray[np.uint64]) -> SubstrateResult: ...


def check_available(name: str) -> None:
    """Raise a one-line ValueError if substrate ``name`` is unknown or cannot run here."""
    if name not in SUBSTRATES:
        raise ValueError(f"substrate={name!r} unknown; choose one of {', '.join(SUBSTRATES)}")
    if name == "bss2":
        import importlib.util

        if importlib.util.find_spec("pynn_brainscales") is None:
            from farm.bss2 import INSTALL_HINT

            raise ValueError(INSTALL_HINT)


def get_substrate(name: str, protocol: Protocol | None = None, chip_model: ChipModel | None = None) -> Substrate:
    """Build a substrate by name; the hardware backend is imported only when asked for."""
    protocol = protocol or Protocol()
    chip_model = chip_model or ChipModel()
    if name == "emulator":
        from farm.emulator import EmulatorSubstrate

        return EmulatorSubstrate(protocol, chip_model)
    if name == "bss2":
        from farm.bss2 import BSS2Substrate

        return BSS2Substrate(protocol, chip_model)
    raise ValueError(f"substrate={name!r} unknown; choose one of {', '.join(SUBSTRATES)}")
