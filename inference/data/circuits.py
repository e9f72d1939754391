"""The circuit input of each training row: a fresh fingerprint of its circuit, as statistics.

Why fresh and per row: the circuits store holds one recording per circuit, what a lab records
once, with its own noise; a posterior trained on that one realisation would learn its noise. Each
training row gets its own recording of its circuit instead (the same references, substrate and
chip model, noise keyed by the row's store seed and sample index: the same bits on every run),
so the posterior learns what a fingerprint says about a circuit whatever its noise.

The statistics are cached under ``<out>/circuit-inputs`` (one array per store, chunked as the
store, a done flag per chunk): epochs and resumed runs read them instead of recording again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from farm.circuits.record import build_substrates, record_fingerprints
from farm.circuits.statistics import fingerprint_statistics, statistic_names
from farm.circuits.store import FingerprintMismatch, FingerprintStore
from farm.defaults import ChipModel
from farm.errors import FarmInputError
from farm.run.progress import ProgressBar
from inference.data.datasets import DataPlan, StoreSet
from inference.data.splits import split_of

#: Where the cache lives inside the training's ``--out``.
CACHE_DIR = "circuit-inputs"
#: Bump when the cached statistics' bits change (recording, statistics).
CACHE_VERSION = "1"
#: ChipModel fields that only say which chips a store drew from, not how a circuit behaves.
_POOL_FIELDS = ("num_chips", "chip_ids")


@dataclass(frozen=True)
class CircuitInputs:
    """What a training run knows of its circuit inputs; travels to workers in the data plan.

    Args:
        circuits: the circuits store (`farm fingerprint --out`).
        cache: the cache group of per-row statistics.
        names: the statistics' names (``farm.circuits.statistics.statistic_names``).
        mean, std: their standardisation, fitted on the training split.
        references: the reference set, as stored (``ReferenceSet.to_dict``).
        identity: the circuits store's identity attributes (seed, chips, references, ...).
    """

    circuits: str
    cache: str
    names: list[str]
    mean: list[float]
    std: list[float]
    references: dict[str, Any]
    identity: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CircuitInputs:
        return cls(**d)


def physics(model: ChipModel) -> dict[str, Any]:
    """A chip model's physics: everything but which chips it draws from."""
    return {k: v for k, v in model.to_dict().items() if k not in _POOL_FIELDS}


def open_circuits(url: str, stores: StoreSet) -> FingerprintStore:
    """The circuits store, checked against the training stores.

    Raises:
        FarmInputError: a missing store, another substrate, emulator version or chip physics,
            or a training circuit the store does not cover (named, with what it covers).
    """
    try:
        fp = FingerprintStore.open(url)
    except FileNotFoundError as e:
        raise FarmInputError(str(e)) from None
    first = stores.stores[0].attrs
    for key in ("substrate", "emulator_version"):
        if fp.attrs.get(key) != first.get(key):
            raise FingerprintMismatch(
                f"circuits={url!r} was recorded with {key}={fp.attrs.get(key)!r}, the training "
                f"stores with {first.get(key)!r}; fingerprint with the stores' settings"
            )
    if physics(ChipModel.from_dict(fp.attrs["chip_model"])) != physics(stores.chip_model):
        raise FingerprintMismatch(
            f"circuits={url!r} was recorded with another chip model than the training stores "
            "(fab seed, mismatch or readout); fingerprint with the stores' --chip-model"
        )
    for store_url, store in zip(stores.urls, stores.stores, strict=True):
        chip = np.asarray(store.group["chip"][:], dtype=np.int64)
        neuron = np.asarray(store.group["neuron"][:], dtype=np.int64)
        placed = chip >= 0  # rows not yet simulated hold -1
        pairs = np.unique(np.stack([chip[placed], neuron[placed]], axis=1), axis=0)
        covered = fp.covers(pairs[:, 0], pairs[:, 1])
        if not covered.all():
            c, n = pairs[np.flatnonzero(~covered)[0]]
            raise FingerprintMismatch(
                f"circuits={url!r} does not cover circuit {c}:{n} of store={store_url!r} "
                f"({int((~covered).sum())} of its {len(pairs)} circuits missing); it covers "
                f"{fp.coverage()}: fingerprint the stores' chips (`farm fingerprint --chip-ids`)"
            )
    return fp


def build_circuit_inputs(
    stores: StoreSet, plan: DataPlan, circuits: str, out: str | Path, progress: bool = False
) -> CircuitInputs:
    """Record a fresh fingerprint for every row of every completed chunk, keep its statistics.

    Resumes: chunks flagged in the cache are kept when the cache's identity (stores, circuits
    store, version) is unchanged; otherwise the cache is rebuilt.
    """
    fp = open_circuits(circuits, stores)
    refs = fp.references
    names = list(statistic_names(refs))
    substrates = build_substrates(
        str(stores.stores[0].attrs.get("substrate", "emulator")), refs, stores.chip_model
    )
    cache = str(Path(out) / CACHE_DIR)
    identity = {
        "cache_version": CACHE_VERSION,
        "stores": stores.fingerprint,
        "circuits": {k: fp.attrs.get(k) for k in ("seed", "references", "chip_model", "substrate")},
    }
    group = zarr.open_group(cache, mode="a", zarr_format=3)
    if group.attrs.get("identity") != identity:
        group = zarr.open_group(cache, mode="w", zarr_format=3)  # the farm's own cache: rebuilt
        for k, s in enumerate(stores.stores):
            group.create_array(
                f"store{k}",
                shape=(s.num_sims, len(names)),
                chunks=(s.chunk_size, len(names)),
                dtype="float32",
                fill_value=np.nan,
            )
            group.create_array(
                f"done{k}",
                shape=(s.num_chunks,),
                chunks=(s.num_chunks,),
                dtype="uint8",
                fill_value=0,
            )
        group.attrs["identity"] = identity
    done = {k: np.asarray(group[f"done{k}"][:]) for k in range(len(stores.stores))}
    todo = [r for r in stores.chunks if not done[r.store][r.chunk]]
    with ProgressBar(
        sum(r.stop - r.start for r in todo), 0, progress, "fingerprints", "rows"
    ) as bar:
        for ref in todo:
            store = stores.stores[ref.store]
            chip = np.asarray(store.group["chip"][ref.start : ref.stop])
            neuron = np.asarray(store.group["neuron"][ref.start : ref.stop])
            codes = record_fingerprints(
                substrates,
                refs,
                store.seed,
                chip,
                neuron,
                sample_index=np.arange(ref.start, ref.stop),
            )
            group[f"store{ref.store}"][ref.start : ref.stop] = fingerprint_statistics(
                codes, refs, stores.chip_model
            )
            group[f"done{ref.store}"][ref.chunk] = 1
            bar.advance(ref.stop - ref.start)
    mean, std = _train_moments(stores, plan, group)
    return CircuitInputs(
        circuits,
        cache,
        names,
        mean,
        std,
        refs.to_dict(),
        {k: fp.attrs.get(k) for k in ("seed", "chip_ids", "neurons", "references", "substrate")},
    )


def _train_moments(
    stores: StoreSet, plan: DataPlan, group: zarr.Group
) -> tuple[list[float], list[float]]:
    """Mean and std of the statistics over the training split's good rows."""
    total = square = None
    count = 0
    for ref in stores.chunks:
        index = np.arange(ref.start, ref.stop)
        keep = split_of(index, plan.val_fraction, plan.test_fraction) == 0
        bad = plan.excluded.get(f"{ref.store}:{ref.chunk}")
        if bad:
            keep &= ~np.isin(index, np.asarray(bad))
        x = np.asarray(group[f"store{ref.store}"][ref.start : ref.stop], dtype=np.float64)[keep]
        total = x.sum(0) if total is None else total + x.sum(0)
        square = (x**2).sum(0) if square is None else square + (x**2).sum(0)
        count += len(x)
    m = total / max(count, 1)
    sd = np.sqrt(np.maximum(square / max(count, 1) - m**2, 0.0))
    return m.tolist(), np.where(sd > 1e-6, sd, 1.0).tolist()


def open_cache(inputs: CircuitInputs, num_stores: int) -> list[zarr.Array]:
    """The cached statistics arrays, one per store, for reading."""
    group = zarr.open_group(inputs.cache, mode="r", zarr_format=3)
    return [group[f"store{k}"] for k in range(num_stores)]


__all__ = ["CACHE_DIR", "CircuitInputs", "build_circuit_inputs", "open_cache", "open_circuits"]
