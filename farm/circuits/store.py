"""The circuits store: one fingerprint per (chip, neuron), a Zarr v3 group xarray opens as is.

Layout: ``fingerprint`` (chip, neuron, reference, time) int16 ADC codes, one Zarr chunk per chip;
coordinates ``chip`` and ``neuron`` hold the ids (so ``ds.fingerprint.sel(chip=c, neuron=n)`` is
one circuit's (reference, time) array), ``reference`` the reference names, ``time`` µs. A chip is
the unit of work: its chunk is written by one actor, then flagged in ``chip_done`` (one tiny
chunk per flag, written after the data), like the sample store's ``chunk_done``. A killed run
leaves unflagged chips, which the next run records again, bit for bit.

The store's identity (seed, chips, neurons, reference set, chip model, substrate, versions) is
fixed at creation; a run with other settings is refused with one line naming the first that
differs. Its ``format_version`` differs from a sample store's, so `farm simulate` and training
refuse it instead of misreading it. Creation goes through ``farm.store.paths`` (a marker first,
nothing foreign touched) under ``farm.store.lock`` (one writer).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from farm.circuits.references import FINGERPRINT_VERSION, ReferenceSet
from farm.defaults import EMULATOR_VERSION, NEURONS_PER_CHIP, NUM_EMULATED_CHIPS, ChipModel
from farm.errors import FarmInputError
from farm.store.paths import (
    PathState,
    begin_creation,
    check_parent_writable,
    classify,
    end_creation,
    filesystem,
)
from farm.store.spec import MAX_SEED, normalise_json
from farm.substrates.circuits import format_chip_ids
from farm.versions import package_version

#: A sample store reads format_version "1"; this value keeps the two kinds apart.
FINGERPRINT_FORMAT_VERSION = "fingerprint-1"
#: Attributes that must match for a run to resume a store.
IDENTITY_KEYS = (
    "format_version",
    "fingerprint_version",
    "emulator_version",
    "substrate",
    "seed",
    "chip_ids",
    "neurons",
    "references",
    "protocol",
    "chip_model",
)
_COMPRESSORS = (
    zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
    zarr.codecs.Crc32cCodec(),
)


class FingerprintMismatch(FarmInputError):
    """The path holds a fingerprint store made with other settings, or no fingerprint store."""


@dataclass(frozen=True, slots=True)
class FingerprintSpec:
    """What a fingerprint run records: the identity of every fingerprint in the store.

    Args:
        seed: root of the noise streams (``farm.circuits.record.fingerprint_keys``).
        chip_ids, neurons: the circuits, each sorted and unique.
        references: the reference set.
        chip_model: the emulated chips' physics (its pool is not used: chips are ``chip_ids``).
        substrate: ``emulator`` or ``bss2``.
    """

    seed: int
    chip_ids: tuple[int, ...]
    neurons: tuple[int, ...]
    references: ReferenceSet
    chip_model: ChipModel
    substrate: str = "emulator"

    def __post_init__(self) -> None:
        if not 0 <= int(self.seed) <= MAX_SEED:
            raise FarmInputError(f"seed={self.seed} must be in [0, 2**64 - 1]")
        for name, ids, limit in (
            ("chip_ids", self.chip_ids, NUM_EMULATED_CHIPS),
            ("neurons", self.neurons, NEURONS_PER_CHIP),
        ):
            ids = tuple(int(i) for i in ids)
            if not ids or ids != tuple(sorted(set(ids))) or ids[0] < 0 or ids[-1] >= limit:
                raise FarmInputError(
                    f"{name} must be sorted, distinct ids in [0, {limit - 1}], got "
                    f"{_short(list(ids))}"
                )
            object.__setattr__(self, name, ids)

    def identity(self) -> dict[str, Any]:
        return normalise_json(
            {
                "format_version": FINGERPRINT_FORMAT_VERSION,
                "fingerprint_version": FINGERPRINT_VERSION,
                "emulator_version": EMULATOR_VERSION,
                "substrate": self.substrate,
                "seed": int(self.seed),
                "chip_ids": list(self.chip_ids),
                "neurons": list(self.neurons),
                "references": self.references.to_dict(),
                "protocol": self.references.protocol.to_dict(),
                "chip_model": self.chip_model.to_dict(),
            }
        )


class FingerprintStore:
    """A circuits store at a local path or fsspec URL."""

    def __init__(self, url: str, group: zarr.Group) -> None:
        self.url = url
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)

    @classmethod
    def open(cls, url: str | Path, mode: str = "r") -> FingerprintStore:
        """Open an existing, complete-created store (``mode='r+'`` for writers)."""
        url = _normalise(url)
        try:
            group = zarr.open_group(url, mode=mode, zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            raise FileNotFoundError(
                f"store={url!r} does not exist; create it with `farm fingerprint --out {url}`"
            ) from None
        if group.attrs.get("format_version") != FINGERPRINT_FORMAT_VERSION:
            raise FingerprintMismatch(
                f"store={url!r} is not a circuits store (format_version="
                f"{group.attrs.get('format_version')!r}); make one with `farm fingerprint`"
            )
        return cls(url, group)

    @classmethod
    def create_or_resume(cls, url: str | Path, spec: FingerprintSpec) -> FingerprintStore:
        """Create the store of ``spec`` at ``url``, or reopen it to resume.

        Raises:
            StoreRefused: ``url`` holds something the farm did not make (nothing touched).
            FingerprintMismatch: a store made with other settings, or a sample store.
        """
        url = _normalise(url)
        state = classify(url)
        if state is not PathState.STORE:
            check_parent_writable(url)
            try:
                begin_creation(url, state)
                cls._create(url, spec)
                end_creation(url)
            except OSError as e:
                raise FingerprintMismatch(
                    f"out={url!r} cannot be created: {e.strerror or e}; choose a writable --out"
                ) from None
        store = cls.open(url, mode="r+")
        store._check_identity(spec)
        return store

    @staticmethod
    def _create(url: str, spec: FingerprintSpec) -> None:
        refs = spec.references
        num_chips, num_neurons = len(spec.chip_ids), len(spec.neurons)
        num_refs, num_t = len(refs.references), refs.samples_per_reference
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the creation marker is "not a Zarr node"
            g = zarr.open_group(url, mode="a", zarr_format=3)  # the location holds the marker
        time_us = np.arange(num_t, dtype=np.float32) * np.float32(refs.sample_period_us)
        coords: tuple[tuple[str, NDArray[Any], Any, dict[str, Any]], ...] = (
            ("chip", np.array(spec.chip_ids, dtype=np.int16), "int16", {"long_name": "chip id"}),
            ("neuron", np.array(spec.neurons, dtype=np.int16), "int16", {"long_name": "neuron"}),
            ("reference", np.array(refs.names, dtype=object), str, {}),
            ("time", time_us, "float32", {"units": "us"}),
        )
        for name, values, dtype, attrs in coords:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # str arrays are not yet in the Zarr v3 spec
                arr = g.create_array(
                    name, shape=(len(values),), dtype=dtype, dimension_names=(name,)
                )
                arr[:] = values
            for key, value in attrs.items():
                arr.attrs[key] = value
        g.create_array(
            "fingerprint",
            shape=(num_chips, num_neurons, num_refs, num_t),
            chunks=(1, num_neurons, num_refs, num_t),
            dtype="int16",
            fill_value=-1,
            dimension_names=("chip", "neuron", "reference", "time"),
            compressors=list(_COMPRESSORS),
            attributes={"units": "ADC code (MADC, 10 bit)"},
        )
        g.create_array(
            "chip_done",
            shape=(num_chips,),
            chunks=(1,),
            dtype="uint8",
            fill_value=0,
            dimension_names=("chip",),
            compressors=[zarr.codecs.Crc32cCodec()],
            attributes={"long_name": "1 once the chip's fingerprints are written"},
        )
        g.attrs.update(
            spec.identity()
            | {
                "kind": "circuit fingerprints",
                "reference_names": list(refs.names),
                "units": {"fingerprint": "ADC code (MADC, 10 bit)", "time": "us (hardware time)"},
                "created_by": f"bss2-farm {package_version()}",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the marker; consolidated v3 is not in the spec
            zarr.consolidate_metadata(url, zarr_format=3)

    def _check_identity(self, spec: FingerprintSpec) -> None:
        want = spec.identity()
        for key in IDENTITY_KEYS:
            have = self.attrs.get(key)
            if have != want[key]:
                raise FingerprintMismatch(
                    f"store={self.url!r} was made with {key}={_short(have)}; this run has "
                    f"{key}={_short(want[key])}: use another --out, or the store's own settings"
                )

    # ------------------------------------------------------------------ layout
    @property
    def chip_ids(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.attrs["chip_ids"])

    @property
    def neurons(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.attrs["neurons"])

    @property
    def seed(self) -> int:
        return int(self.attrs["seed"])

    @property
    def references(self) -> ReferenceSet:
        return ReferenceSet.from_dict(self.attrs["references"])

    def done_mask(self) -> NDArray[np.bool_]:
        """(chips,) True where a chip's fingerprints are written and flagged."""
        return np.asarray(self.group["chip_done"][:], dtype=np.uint8) == 1

    def pending_chips(self) -> list[int]:
        """Positions (along ``chip``) of the chips still to record."""
        return [int(k) for k in np.flatnonzero(~self.done_mask())]

    def lookup(self, chip: Any, neuron: Any) -> NDArray[np.int16]:
        """Fingerprints of circuits (chip[i], neuron[i]): (n, references, time) int16 codes.

        Raises:
            FingerprintMismatch: a circuit outside the store, or on a chip not yet recorded;
                the message names the first such circuit and what the store covers.
        """
        c, n, cp, npos, ok = self._positions(chip, neuron)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise FingerprintMismatch(
                f"circuit {c[i]}:{n[i]} is not in circuits store {self.url!r}, which covers "
                f"{self.coverage()}; fingerprint it with `farm fingerprint`"
            )
        arr = self.group["fingerprint"]
        out = np.empty((c.size, *arr.shape[2:]), dtype=np.int16)
        for pos in np.unique(cp):
            rows = cp == pos
            out[rows] = np.asarray(arr[int(pos)])[npos[rows]]
        return out

    def covers(self, chip: Any, neuron: Any) -> NDArray[np.bool_]:
        """(n,) True where circuit (chip[i], neuron[i]) has a recorded fingerprint."""
        return self._positions(chip, neuron)[4]

    def coverage(self) -> str:
        """The recorded circuits in words: ``chips 0-7 x neurons 0-511``."""
        chips = [c for c, d in zip(self.chip_ids, self.done_mask(), strict=True) if d]
        return (
            f"chips {format_chip_ids(chips) or 'none'} x neurons "
            f"{format_chip_ids(list(self.neurons))}"
        )

    def _positions(self, chip: Any, neuron: Any) -> tuple[NDArray[np.int64], ...]:
        c = np.atleast_1d(np.asarray(chip, dtype=np.int64))
        n = np.atleast_1d(np.asarray(neuron, dtype=np.int64))
        if c.shape != n.shape or c.ndim != 1:
            raise FarmInputError(f"chip {c.shape} and neuron {n.shape} must be (n,) id arrays")
        chips, neurons = np.asarray(self.chip_ids), np.asarray(self.neurons)
        cp = np.clip(np.searchsorted(chips, c), 0, len(chips) - 1)
        npos = np.clip(np.searchsorted(neurons, n), 0, len(neurons) - 1)
        ok = (chips[cp] == c) & (neurons[npos] == n) & self.done_mask()[cp]
        return c, n, cp, npos, ok

    # ------------------------------------------------------------------ writing
    def write_chip(self, position: int, codes: NDArray[np.int16]) -> None:
        """Write one chip's (neurons, references, time) codes; no done flag."""
        arr = self.group["fingerprint"].with_config({"write_empty_chunks": True})
        if codes.shape != arr.shape[1:]:
            raise ValueError(
                f"chip {position} needs codes of shape {arr.shape[1:]}, got {codes.shape}"
            )
        arr[position] = codes

    def mark_done(self, position: int) -> None:
        self.group["chip_done"][position] = 1

    def unflag(self, positions: list[int]) -> None:
        """Clear the done flags of chips so the next run records them again (`farm verify`)."""
        for k in positions:
            self.group["chip_done"][k] = 0

    def describe(self) -> dict[str, Any]:
        """Layout and completeness, for the command line's summary."""
        done = self.done_mask()
        return {
            "store": self.url,
            "kind": "circuit fingerprints",
            "chips": len(self.chip_ids),
            "chips_done": int(done.sum()),
            "neurons_per_chip": len(self.neurons),
            "references": list(self.attrs.get("reference_names", [])),
            "samples_per_reference": int(self.group["fingerprint"].shape[-1]),
            "complete": bool(done.all()),
            "seed": self.seed,
            "substrate": self.attrs.get("substrate"),
        }


def is_fingerprint_store(url: str | Path) -> bool:
    """Whether ``url`` holds a circuits store (reads only its root ``zarr.json``)."""
    fs, path = filesystem(_normalise(url))
    try:
        meta = json.loads(fs.cat_file(f"{path.rstrip('/')}/zarr.json"))
    except (OSError, ValueError):
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attrs, dict) and attrs.get("format_version") == FINGERPRINT_FORMAT_VERSION


def open_fingerprints(url: str | Path, complete_only: bool = True):  # -> xarray.Dataset
    """The store as an xarray Dataset; by default only the chips whose flag is set."""
    import xarray as xr

    store = FingerprintStore.open(url)
    ds = xr.open_zarr(store.url, consolidated=None, chunks=None)
    if complete_only and not store.done_mask().all():
        ds = ds.isel(chip=np.flatnonzero(store.done_mask()))
    return ds


def _normalise(url: str | Path) -> str:
    text = str(url)
    return text.removeprefix("file://") if text.startswith("file://") else text


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "FINGERPRINT_FORMAT_VERSION",
    "FingerprintMismatch",
    "FingerprintSpec",
    "FingerprintStore",
    "is_fingerprint_store",
    "open_fingerprints",
]
