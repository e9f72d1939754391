"""Neuron ids from `--neurons` text, in the syntax `--chip-ids` uses (``0-511``, ``1,5,9``)."""

from __future__ import annotations

from farm.defaults import NEURONS_PER_CHIP
from farm.substrates.circuits import parse_id_ranges


def parse_neuron_ids(text: str) -> tuple[int, ...]:
    """Neuron ids from a range ``0-63``, a list ``1,5,9``, or both ``0-3,9``; sorted, unique."""
    top = NEURONS_PER_CHIP - 1
    return parse_id_ranges(
        text, name="neurons", top=top, example="0-63", where="the chip's neurons"
    )


__all__ = ["parse_neuron_ids"]
