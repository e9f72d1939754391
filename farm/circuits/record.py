"""Recording fingerprints: every reference on every given circuit, as a pure function of the seed.

No Ray, no Zarr: the actor calls ``record_fingerprints`` on one chip's neurons and the store
writes what it returns. The temporal noise of (circuit, reference) comes from its own counter-based
stream, so a circuit's fingerprint is the same bits whichever actor records it, in any order,
after any retry.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from farm.circuits.references import ReferenceSet
from farm.defaults import NEURONS_PER_CHIP, NUM_EMULATED_CHIPS, ChipModel
from farm.errors import FarmInputError
from farm.kernel import rng
from farm.substrates.base import Substrate
from farm.substrates.registry import get_substrate

#: The fingerprint's noise stream, independent of the sample streams in ``farm.kernel.rng``.
STREAM_FINGERPRINT = 0xF19E
#: The stream of the fresh recordings training pairs with each sample (one per sample index).
STREAM_SAMPLE_FINGERPRINT = 0xF19F
#: Reference slots per circuit in the noise index: a set may hold at most this many references.
MAX_REFERENCES = 64


def fingerprint_keys(
    seed: int, chip: NDArray[np.integer], neuron: NDArray[np.integer], reference: int
) -> NDArray[np.uint64]:
    """Noise keys of reference ``reference`` on circuits (chip, neuron): (n,) uint64.

    key = H(H(seed, stream), (chip * 512 + neuron) * MAX_REFERENCES + reference).
    """
    if not 0 <= reference < MAX_REFERENCES:
        raise FarmInputError(f"reference={reference} outside [0, {MAX_REFERENCES - 1}]")
    circuit = np.asarray(chip, dtype=np.int64) * NEURONS_PER_CHIP + np.asarray(
        neuron, dtype=np.int64
    )
    return rng.stream_keys(
        int(seed), rng.as_indices(circuit * MAX_REFERENCES + reference), STREAM_FINGERPRINT
    )


def sample_fingerprint_keys(
    seed: int, index: NDArray[np.integer], reference: int
) -> NDArray[np.uint64]:
    """Noise keys of reference ``reference`` recorded beside samples ``index`` of a store.

    Why per sample and not per circuit: a lab records a circuit once, with its own noise, so a
    posterior must learn from many noise realisations of each circuit's fingerprint, not one.
    key = H(H(seed, stream), index * MAX_REFERENCES + reference).
    """
    if not 0 <= reference < MAX_REFERENCES:
        raise FarmInputError(f"reference={reference} outside [0, {MAX_REFERENCES - 1}]")
    idx = np.asarray(index, dtype=np.int64)
    return rng.stream_keys(
        int(seed), rng.as_indices(idx * MAX_REFERENCES + reference), STREAM_SAMPLE_FINGERPRINT
    )


def build_substrates(
    name: str, references: ReferenceSet, chip_model: ChipModel
) -> tuple[Substrate, ...]:
    """One substrate per reference (each plays its own one-sweep protocol)."""
    if len(references.references) > MAX_REFERENCES:
        raise FarmInputError(
            f"a reference set holds at most {MAX_REFERENCES} references, "
            f"got {len(references.references)}"
        )
    return tuple(
        get_substrate(name, references.reference_protocol(k), chip_model)
        for k in range(len(references.references))
    )


def record_fingerprints(
    substrates: tuple[Substrate, ...],
    references: ReferenceSet,
    seed: int,
    chip: NDArray[np.integer],
    neuron: NDArray[np.integer],
    sample_index: NDArray[np.integer] | None = None,
) -> NDArray[np.int16]:
    """Every reference on every circuit (chip[i], neuron[i]).

    Args:
        substrates: ``build_substrates`` of the same reference set.
        chip, neuron: (n,) circuit ids.
        sample_index: None records the circuit's own fingerprint (the circuits store's noise);
            (n,) sample indices record a fresh one per sample (``sample_fingerprint_keys``).

    Returns:
        (n, references, samples_per_reference) int16 ADC codes.
    """
    chip16 = np.ascontiguousarray(chip, dtype=np.int16)
    neuron16 = np.ascontiguousarray(neuron, dtype=np.int16)
    n = chip16.shape[0]
    if neuron16.shape != (n,):
        raise FarmInputError(f"chip has {n} ids but neuron has {neuron16.shape[0]}")
    if n and (chip16.min() < 0 or chip16.max() >= NUM_EMULATED_CHIPS):
        raise FarmInputError(f"chip ids outside [0, {NUM_EMULATED_CHIPS - 1}]")
    if n and (neuron16.min() < 0 or neuron16.max() >= NEURONS_PER_CHIP):
        raise FarmInputError(f"neuron ids outside [0, {NEURONS_PER_CHIP - 1}]")
    theta = references.theta
    out = np.empty((n, theta.shape[0], references.samples_per_reference), dtype=np.int16)
    for k, substrate in enumerate(substrates):
        rows = np.ascontiguousarray(np.broadcast_to(theta[k], (n, theta.shape[1])))
        keys = (
            fingerprint_keys(seed, chip16, neuron16, k)
            if sample_index is None
            else sample_fingerprint_keys(seed, sample_index, k)
        )
        out[:, k, :] = substrate.run(rows, chip16, neuron16, keys).trace
    return out


__all__ = [
    "MAX_REFERENCES",
    "STREAM_FINGERPRINT",
    "STREAM_SAMPLE_FINGERPRINT",
    "build_substrates",
    "fingerprint_keys",
    "record_fingerprints",
    "sample_fingerprint_keys",
]
