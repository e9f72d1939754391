"""The fingerprints of held-out observations' circuits, for circuit-aware posteriors (issue 25).

A circuit-aware posterior conditions on the fingerprint of the circuit a trace came from, so every
call an evaluation makes must pass it; each observation's (chip, neuron) is looked up in the
circuits store `farm fingerprint` wrote. Circuit-marginal posteriors take no fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


def is_circuit_aware(posterior: Any) -> bool:
    """Whether ``posterior`` needs a fingerprint with every trace (older posteriors: no)."""
    return bool(getattr(posterior, "circuit_aware", False))


def circuit_fingerprints(
    url: str | Path,
    posterior: Any,
    chip: NDArray[np.integer],
    neuron: NDArray[np.integer],
    index: NDArray[np.integer] | None = None,
) -> NDArray[np.int16]:
    """Each observation's fingerprint from the circuits store at ``url``.

    Args:
        url: circuits store (`farm fingerprint --out`); only its completed chips count.
        posterior: checked to take fingerprints recorded at the store's reference settings.
        chip, neuron: (B,) circuit ids of the observations.
        index: (B,) store sample indices, named in the error for an unknown circuit.

    Returns:
        (B, references, time) int16 codes, row b the fingerprint of circuit (chip[b], neuron[b]).

    Raises:
        ValueError: not a circuits store; recorded at other reference settings than the
            posterior's; or an observation's circuit is not in it (one line naming chip:neuron
            and the chips and neurons the store covers).
    """
    from farm.circuits.store import FingerprintStore

    try:
        store = FingerprintStore.open(url)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"circuits={str(url)!r}: {str(e).splitlines()[0]}") from None
    _check_references(str(url), store.references, posterior)
    shape = tuple(int(v) for v in store.group["fingerprint"].shape[2:])
    want = getattr(posterior, "fingerprint_shape", None)
    if want is not None and tuple(want) != shape:
        raise ValueError(
            f"circuits={str(url)!r} holds fingerprints of shape {shape} (references, time); "
            f"the posterior expects {tuple(want)}"
        )
    covered = store.covers(chip, neuron)
    if not covered.all():
        b = int(np.flatnonzero(~covered)[0])
        where = f" (store sample {int(index[b])})" if index is not None else ""
        raise ValueError(
            f"circuit {int(chip[b])}:{int(neuron[b])}{where} is not in circuits store "
            f"{str(url)!r}, which covers {store.coverage()}; fingerprint its chip with "
            f"`farm fingerprint --chip-ids {int(chip[b])}`"
        )
    return store.lookup(chip, neuron)


def _check_references(url: str, recorded: Any, posterior: Any) -> None:
    """The store's reference set must be the one the posterior's fingerprints were taken with."""
    want = getattr(posterior, "circuit_references", None)
    if want is None or recorded.to_dict() == want.to_dict():
        return
    names, want_names = list(recorded.names), list(want.names)
    detail = (
        f"references {names}, the posterior {want_names}"
        if names != want_names
        else f"the references {names} at other settings than the posterior's"
    )
    raise ValueError(
        f"circuits={url!r} was recorded with {detail}; fingerprint the chips again with the "
        "posterior's reference set"
    )


__all__ = ["circuit_fingerprints", "is_circuit_aware"]
