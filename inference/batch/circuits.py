"""`farm infer --circuits`: each trace's circuit fingerprint, for a circuit-aware posterior.

A posterior trained with `farm train npe --circuits` answers "which parameters give this trace on
THIS circuit", so every trace goes in with the fingerprint of the circuit it was recorded on,
looked up by its (chip, neuron) in the circuits store of `farm fingerprint` (issue 25). Everything
is checked here, before the output store exists: that the posterior needs the store, that the
store was recorded at the posterior's reference settings, and that it covers every trace's circuit.
A circuit-marginal posterior reads no fingerprint, so ``--circuits`` does not change its answers:
the run goes on without reading the store (the command line says so in one line), which lets one
command line answer a recording with a marginal and a circuit-aware posterior side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.circuits.store import IDENTITY_KEYS, FingerprintMismatch, FingerprintStore
from farm.errors import FarmInputError
from farm.substrates.circuits import format_chip_ids
from inference.batch.observations import Observations


def circuit_aware(posterior: Any) -> bool:
    """Whether ``posterior`` reads a circuit fingerprint (False for older posteriors too)."""
    return bool(getattr(posterior, "circuit_aware", False))


def open_checked(
    circuits: str | None, posterior: Any, obs: Observations, who: str
) -> FingerprintStore | None:
    """The circuits store a run reads, checked against the posterior and every trace.

    Args:
        circuits: ``--circuits`` (None: not given).
        posterior: the loaded posterior; obs: the traces; who: how messages name the posterior.

    Returns:
        The open store for a circuit-aware posterior; None for a circuit-marginal one (which
        reads no fingerprint, whether ``--circuits`` was given or not).

    Raises:
        FarmInputError: one line: a circuit-aware posterior without ``--circuits``; a store that
            is missing or no circuits store; recorded at other reference settings than the
            posterior's; traces without chip/neuron ids; a trace's circuit it does not cover.
    """
    if not circuit_aware(posterior):
        return None
    if circuits is None:
        raise FarmInputError(
            f"posterior {who} is circuit-aware: give --circuits CIRCUITS.zarr, the "
            "`farm fingerprint` store of the chips the traces were recorded on"
        )
    try:
        store = FingerprintStore.open(absolute(circuits))
    except (FileNotFoundError, FingerprintMismatch) as e:
        if isinstance(e, FileNotFoundError) and not _local_path_exists(circuits):
            raise FarmInputError(
                f"circuits={circuits!r} does not exist; record the traces' chips there with "
                f"`farm fingerprint --chip-ids IDS --out {circuits}`"
            ) from None
        raise FarmInputError(
            f"circuits={circuits!r} holds no circuits store; give the store `farm fingerprint "
            "--out` wrote for the traces' chips"
        ) from None
    want = posterior.circuit_references
    if want is not None and store.references.to_dict() != want.to_dict():
        have, need = list(store.references.names), list(want.names)
        what = f"references {have}" if have != need else "its references with other settings"
        raise FarmInputError(
            f"circuits={circuits!r} was recorded at {what}; posterior {who} needs its training "
            f"references {need}: record the chips again with this farm's `farm fingerprint`"
        )
    if not obs.has_ids:
        raise FarmInputError(
            f"store={obs.source!r} has no chip/neuron id for every trace; --circuits matches "
            "traces to circuits by them: give a store with `chip` and `neuron` arrays"
        )
    pairs = np.unique(np.stack([obs.chip, obs.neuron], axis=1).astype(np.int64), axis=0)
    covered = store.covers(pairs[:, 0], pairs[:, 1])
    if not covered.all():
        missing = pairs[~covered]
        c, n = (int(v) for v in missing[0])
        chips = format_chip_ids(sorted({int(v) for v in pairs[:, 0]}))
        raise FarmInputError(
            f"circuits={circuits!r} does not cover circuit {c}:{n} of store={obs.source!r} "
            f"({len(missing)} of its {len(pairs)} circuits missing); it covers "
            f"{store.coverage()}: fingerprint the traces' chips (`farm fingerprint --chip-ids "
            f"{chips}`) into a circuits store"
        )
    return store


def identity(store: FingerprintStore | None) -> dict[str, Any] | None:
    """What a resumed run's circuits store must match: where it lies, how it was recorded, when.

    ``created_at`` too: a store recorded again at the same path on real hardware holds other
    fingerprints (the emulator's are a pure function of the identity, the chip's are not).
    """
    if store is None:
        return None
    keys = ("url", *IDENTITY_KEYS, "created_at")
    return {k: store.url if k == "url" else store.attrs.get(k) for k in keys}


def fingerprints(
    store: FingerprintStore | None, chip: NDArray[Any] | None, neuron: NDArray[Any] | None
) -> NDArray[np.int16] | None:
    """(B, references, time) fingerprints of a block's circuits; None without a store."""
    if store is None or chip is None or neuron is None:
        return None
    return store.lookup(chip, neuron)


def _local_path_exists(url: str) -> bool:
    """Whether ``url`` is a local path that exists (an empty folder, say); False for URLs."""
    text = url.removeprefix("file://")
    return "://" not in text and Path(text).exists()


def absolute(url: str) -> str:
    """Actors open the store themselves: a relative path could name another folder there."""
    text = url.removeprefix("file://") if url.startswith("file://") else url
    return text if "://" in text else str(Path(text).absolute())


__all__ = ["absolute", "circuit_aware", "fingerprints", "identity", "open_checked"]
