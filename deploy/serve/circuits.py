"""Which circuit an HTTP observation came from: its `fingerprint`, or `circuit` from a store.

A circuit-aware posterior (``farm train npe --circuits``) conditions on the circuit's fingerprint,
the (references, time) recording of ``farm fingerprint``. A request brings it in one of two ways:
the array itself (``fingerprint``), or ``circuit: {chip, neuron}``, which the replica resolves in
the circuits store it was started with (``farm serve --circuits circuits.zarr``). The store is read
once when the replica starts and held in memory (int16: 2.4 MB per chip of 512 neurons), so a
lookup never waits on storage.

Why apart from the service: ``farm serve`` checks the store against the posterior before Ray
starts, the replica checks it again (``serve run`` reaches it without the command line), and each
rule of the request becomes one 422 line; all of it is testable without Serve. Everything here
reads the posterior through ``getattr(posterior, "circuit_aware", False)``, so posteriors trained
without circuits (and artifacts older than the field) keep working unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from deploy.serve.http_errors import RequestRejected
from farm.substrates.circuits import format_chip_ids


def circuit_aware(posterior: Any) -> bool:
    """Whether ``posterior`` reads a circuit fingerprint (False for older posteriors)."""
    return bool(getattr(posterior, "circuit_aware", False))


def fingerprint_shape(posterior: Any) -> tuple[int, int] | None:
    """(references, samples per reference) of the posterior's fingerprints; None if marginal."""
    shape = getattr(posterior, "fingerprint_shape", None) if circuit_aware(posterior) else None
    return None if shape is None else (int(shape[0]), int(shape[1]))


def reference_names(posterior: Any) -> list[str]:
    """The reference settings a fingerprint must be taken at, by name ([] if marginal)."""
    refs = getattr(posterior, "circuit_references", None) if circuit_aware(posterior) else None
    return [] if refs is None else list(refs.names)


def _shape_text(posterior: Any) -> str:
    r, t = fingerprint_shape(posterior) or (0, 0)
    names = reference_names(posterior)
    return f"({r}, {t})" + (f" (references {', '.join(names)})" if names else "")


@dataclass(frozen=True)
class CircuitTable:
    """The fingerprints of a circuits store, in memory: what `circuit` requests resolve through.

    Args:
        chips, neurons: the ids the store covers (every chip recorded with every neuron).
        codes: (chips, neurons, references, time) int16 ADC codes.
        url: where it was read from (for the command line; never sent to clients).
    """

    chips: tuple[int, ...]
    neurons: tuple[int, ...]
    codes: NDArray[np.int16]
    url: str = ""

    @classmethod
    def load(cls, url: str, posterior: Any) -> CircuitTable:
        """Read the complete chips of the store at ``url`` for ``posterior``.

        Raises:
            ValueError: one line: the posterior is circuit-marginal, the store is missing, holds
                no complete chip, or was taken at other reference settings than the posterior's.
        """
        from farm.circuits.store import FingerprintStore, open_fingerprints
        from farm.errors import FarmInputError

        if not circuit_aware(posterior):
            raise ValueError(
                f"--circuits {url} given, but the posterior is circuit-marginal (trained without "
                "`farm train npe --circuits`): it reads no fingerprint; drop --circuits"
            )
        try:
            store = FingerprintStore.open(url)
            ds = open_fingerprints(url)
        except (FileNotFoundError, FarmInputError) as e:
            raise ValueError(str(e).splitlines()[0]) from None
        want = getattr(posterior, "circuit_references", None)
        if want is not None and store.references.to_dict() != want.to_dict():
            have, need = list(store.references.names), list(want.names)
            what = (
                f"references {have}"
                if have != need
                else "the same reference names with other settings"
            )
            raise ValueError(
                f"circuits store {url} was recorded at {what}; the posterior needs its training "
                f"references {need}: record the chips again with this farm's `farm fingerprint`"
            )
        if ds.sizes["chip"] == 0:
            raise ValueError(
                f"circuits store {url} has no completely recorded chip yet; finish it with "
                "`farm fingerprint` (re-running the same command resumes)"
            )
        codes = np.asarray(ds["fingerprint"].values, dtype=np.int16)
        shape = fingerprint_shape(posterior)
        if shape is not None and codes.shape[2:] != shape:
            raise ValueError(
                f"circuits store {url} holds fingerprints of shape {codes.shape[2:]}; "
                f"the posterior reads {_shape_text(posterior)}"
            )
        chips = tuple(int(c) for c in ds["chip"].values)
        neurons = tuple(int(n) for n in ds["neuron"].values)
        return cls(chips=chips, neurons=neurons, codes=codes, url=str(url))

    def covers(self) -> str:
        """What the store holds, in the words of ``FingerprintStore.coverage``: ``chips 0-7 x
        neurons 0-511``."""
        return f"chips {format_chip_ids(self.chips)} x neurons {format_chip_ids(self.neurons)}"

    def fingerprint(self, chip: int, neuron: int) -> NDArray[np.int16]:
        """One circuit's (references, time) codes.

        Raises:
            KeyError: the store does not hold ``chip:neuron``.
        """
        try:
            return self.codes[self.chips.index(int(chip)), self.neurons.index(int(neuron))]
        except ValueError:
            raise KeyError(f"{chip}:{neuron}") from None

    def describe(self) -> dict[str, Any]:
        """For /info: the ids a `circuit` request may name."""
        return {"chips": list(self.chips), "neurons": list(self.neurons)}


@dataclass(frozen=True)
class Resolved:
    """A request's circuit information as the posterior takes it.

    Args:
        keywords: ``{"fingerprint": (R, T) int16}`` for a circuit-aware posterior, else ``{}``.
        circuit: (chip, neuron) when the request named its circuit (for /predictive), else None.
    """

    keywords: dict[str, NDArray[np.int16]]
    circuit: tuple[int, int] | None = None


def resolve(
    posterior: Any,
    table: CircuitTable | None,
    fingerprint: Any = None,
    circuit: Any = None,
) -> Resolved:
    """The fingerprint keyword for a request's ``fingerprint`` or ``circuit`` field.

    Args:
        posterior: the served posterior.
        table: the replica's circuits store (None: started without ``--circuits``).
        fingerprint: the request's (references, time) codes, or None.
        circuit: the request's ``{chip, neuron}`` (an object with those attributes), or None.

    Raises:
        RequestRejected: one 422 line naming the field: a circuit-marginal posterior sent either
            field, a circuit-aware one sent neither or both, a fingerprint of the wrong shape, a
            `circuit` without ``--circuits``, or a circuit the store does not hold.
    """
    if not circuit_aware(posterior):
        for name, value in (("fingerprint", fingerprint), ("circuit", circuit)):
            if value is not None:
                raise RequestRejected(
                    name,
                    "this posterior is circuit-marginal (trained without `farm train npe "
                    f"--circuits`) and reads no circuit; drop `{name}`",
                )
        return Resolved({})
    if fingerprint is not None and circuit is not None:
        raise RequestRejected("fingerprint", "give exactly one of `fingerprint` or `circuit`")
    if fingerprint is not None:
        return Resolved({"fingerprint": checked_fingerprint(posterior, fingerprint)})
    if circuit is None:
        r, t = fingerprint_shape(posterior) or (0, 0)
        how = (
            f"or its `circuit` {{chip, neuron}} in this service's circuits store ({table.covers()})"
            if table is not None
            else "(`circuit` needs a service started with --circuits)"
        )
        raise RequestRejected(
            "fingerprint",
            "missing; this posterior is circuit-aware: give the trace's circuit, as its "
            f"`fingerprint` ({r} x {t} ADC codes from `farm fingerprint`) {how}",
        )
    chip, neuron = int(circuit.chip), int(circuit.neuron)
    if table is None:
        raise RequestRejected(
            "circuit",
            f"{chip}:{neuron} cannot be looked up: this service was started without a circuits "
            "store; start it with `farm serve --circuits circuits.zarr`, or send the circuit's "
            "`fingerprint`",
        )
    try:
        codes = table.fingerprint(chip, neuron)
    except KeyError:
        raise RequestRejected(
            "circuit",
            f"chip:neuron {chip}:{neuron} is not in this service's circuits store "
            f"({table.covers()}); send its `fingerprint`, or fingerprint its chip with "
            "`farm fingerprint`",
        ) from None
    return Resolved({"fingerprint": codes}, (chip, neuron))


def checked_fingerprint(posterior: Any, fingerprint: Any) -> NDArray[np.int16]:
    """A request's fingerprint as (R, T) int16, or the 422 naming the expected shape."""
    want = fingerprint_shape(posterior)
    try:
        codes = np.asarray(fingerprint, dtype=np.int16)
    except (ValueError, TypeError):  # ragged: references of unequal length
        raise RequestRejected(
            "fingerprint",
            f"is not one list of codes per reference of equal length; expected shape "
            f"{_shape_text(posterior)}",
        ) from None
    if want is not None and codes.shape != want:
        raise RequestRejected(
            "fingerprint",
            f"shape {codes.shape} differs from this posterior's fingerprint shape "
            f"{_shape_text(posterior)}",
        )
    return codes


__all__ = [
    "CircuitTable",
    "Resolved",
    "checked_fingerprint",
    "circuit_aware",
    "fingerprint_shape",
    "reference_names",
    "resolve",
]
