"""Substrates by name: which ones exist, whether one can run here, and building one.

The backends are imported only when built (the hardware one needs pynn_brainscales, which only
the BrainScaleS-2 software stack ships). The interface they implement is ``farm.substrates.base``.
"""

from __future__ import annotations

import importlib.util

from farm.defaults import ChipModel, Protocol
from farm.errors import FarmInputError
from farm.substrates.base import Substrate

SUBSTRATES: tuple[str, ...] = ("emulator", "bss2")


def check_available(name: str) -> None:
    """Raise a one-line FarmInputError if substrate ``name`` is unknown or cannot run here."""
    if name not in SUBSTRATES:
        raise FarmInputError(f"substrate={name!r} unknown; choose one of {', '.join(SUBSTRATES)}")
    if name == "bss2" and importlib.util.find_spec("pynn_brainscales") is None:
        from farm.substrates.bss2 import INSTALL_HINT

        raise FarmInputError(INSTALL_HINT)


def get_substrate(
    name: str, protocol: Protocol | None = None, chip_model: ChipModel | None = None
) -> Substrate:
    """Build a substrate by name; the hardware backend is imported only when asked for."""
    protocol = protocol or Protocol()
    chip_model = chip_model or ChipModel()
    if name == "emulator":
        from farm.substrates.emulator import EmulatorSubstrate

        return EmulatorSubstrate(protocol, chip_model)
    if name == "bss2":
        from farm.substrates.bss2 import BSS2Substrate

        return BSS2Substrate(protocol, chip_model)
    raise FarmInputError(f"substrate={name!r} unknown; choose one of {', '.join(SUBSTRATES)}")
