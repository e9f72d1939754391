"""The simulation store: a Zarr v3 group that xarray opens as a labelled dataset.

The store knows chunks, completion flags and the settings it was made with; it knows nothing
about AdEx. Work items are whole store chunks along ``sample``: a chunk is written by exactly one
worker, then flagged in ``chunk_done`` (one tiny Zarr chunk per flag, written atomically after the
data). A killed run leaves unflagged chunks, which the next run recomputes. Since sample i is a
pure function of (seed, i), recomputation writes the same bytes: no gaps, no duplicates.
(Anchor: swyft's ``ZarrStore`` with its per-row ``sim_status``.) What the rows hold (names, dtypes,
labelled axes) arrives as a ``farm.store.schema.StoreSchema`` built by the simulation side.

Crash safety: creation writes a marker first (``farm.store.paths``) and removes it last; growing a
store resizes the arrays first, resets flags next, and publishes the new ``num_sims`` together with
the consolidated metadata last, in one atomic write of the group's ``zarr.json``. Readers see the
published layout, writers the real arrays (the next run repairs a cut growth). New stores crc32c
every chunk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.core.sync import sync

from farm.defaults import STORE_FORMAT_VERSION, Protocol, Regime
from farm.errors import FarmInputError
from farm.store.paths import (
    PathState,
    begin_creation,
    check_parent_writable,
    classify,
    end_creation,
)
from farm.store.schema import SAMPLE_DIM
from farm.store.spec import IDENTITY_KEYS, StoreSpec, normalise_json
from farm.versions import package_version

#: Bytes-to-bytes codecs of new stores: compress, then checksum the compressed chunk. LZ4 at
#: level 9 over bit-shuffled rows: on the int16 traces it encodes in half the CPU of zstd level 1
#: for ~5 % more bytes (decoding is faster too), and at 1e6 traces compression was the largest
#: cost of the farm after the kernel. A store keeps the codecs it was made with.
_COMPRESSORS = (
    zarr.codecs.BloscCodec(cname="lz4", clevel=9, shuffle="bitshuffle"),
    zarr.codecs.Crc32cCodec(),
)


class StoreMismatch(FarmInputError):
    """The store exists but was made with other settings, or is not a farm store."""


class SimStore:
    """A farm store at a local path or fsspec URL (``s3://``, ``gs://``, ``memory://``, ...)."""

    def __init__(self, url: str, group: zarr.Group) -> None:
        self.url = url
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        self._data_arrays: tuple[str, ...] | None = None
        # Opened arrays for the per-chunk writes: opening one re-reads its metadata (~0.4 ms a time,
        # 8 per chunk). Cleared whenever the group is reopened (growth changes shapes).
        self._writers: dict[str, zarr.Array] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, url: str | Path, mode: str = "r") -> SimStore:
        """Open an existing store; ``mode='r+'`` for workers that write chunks."""
        url = normalise_url(url)
        try:
            group = zarr.open_group(url, mode=mode, zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
            raise FileNotFoundError(
                f"store={url!r} does not exist; create it with `farm simulate --out {url}`"
            ) from None
        if group.attrs.get("format_version") is None:
            raise StoreMismatch(
                f"store={url!r} is not a complete bss2-farm store (no format_version attribute)"
            )
        if group.attrs.get("format_version") != STORE_FORMAT_VERSION:
            raise StoreMismatch(
                f"store={url!r} has format_version={group.attrs.get('format_version')}; "
                f"this farm reads {STORE_FORMAT_VERSION}"
            )
        store = cls(url, group)
        if (
            "chunk_done" not in group
            or group["chunk_done"].shape[0] < store.num_chunks
            or any(group[a].shape[0] < store.num_sims for a in store.data_arrays)
        ):
            raise StoreMismatch(
                f"store={url!r}: its arrays are shorter than num_sims={store.num_sims}; "
                "re-run the `farm simulate` that made it to repair it"
            )
        return store

    @classmethod
    def create_or_resume(cls, url: str | Path, spec: StoreSpec) -> SimStore:
        """Open ``url`` for ``spec``: create it, resume it, or extend it to more samples.

        Raises:
            StoreMismatch: the store was made with another seed, prior, protocol, chip,
                substrate, chunk size or emulator version, or holds more samples than asked.
        """
        url = normalise_url(url)
        state = classify(url)  # refuses (StoreRefused) anything the farm did not make
        if state is not PathState.STORE:
            check_parent_writable(url)
            try:
                begin_creation(url, state)
                store = cls._create(url, spec)
                end_creation(url)
            except OSError as e:
                raise StoreMismatch(
                    f"out={url!r} cannot be created: {e.strerror or e}; choose a writable --out"
                ) from None
            return store
        # Writers see the arrays as they are, not the published (consolidated) view: repairs need
        # both.
        store = cls(url, zarr.open_group(url, mode="r+", zarr_format=3, use_consolidated=False))
        store._check_identity(spec)
        store._extend(spec.num_sims)
        return store

    @classmethod
    def _create(cls, url: str, spec: StoreSpec) -> SimStore:
        g = zarr.open_group(url, mode="a", zarr_format=3)  # the location holds only the marker
        _reached("create:group")
        n, c = spec.num_sims, spec.chunk_size
        num_chunks = -(-n // c)
        for coord in spec.schema.coords:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # str arrays are not yet in the Zarr v3 spec
                arr = g.create_array(
                    coord.name,
                    shape=(len(coord),),
                    dtype=coord.dtype,
                    dimension_names=(coord.dimension,),
                )
                arr[:] = np.array(coord.values, dtype=object if coord.dtype is str else coord.dtype)
            for key, value in coord.attrs.items():
                arr.attrs[key] = value
        for a in spec.schema.arrays:
            extra = (
                {"attributes": dict(a.attrs)} if a.attrs else {}
            )  # none for `step`: its metadata stays as it was
            g.create_array(
                a.name,
                shape=(n, *a.trailing_shape),
                chunks=(c, *a.trailing_shape),
                dtype=a.dtype,
                fill_value=a.fill_value,
                dimension_names=a.dims,
                compressors=list(_COMPRESSORS),
                **extra,
            )
            _reached(f"create:array:{a.name}")
        g.create_array(
            "chunk_done",
            shape=(num_chunks,),
            chunks=(1,),
            dtype="uint8",
            fill_value=0,
            dimension_names=("chunk",),
            compressors=[zarr.codecs.Crc32cCodec()],
        )
        _reached("create:chunk_done")
        attrs = (
            spec.identity()
            | {"num_sims": n, "regime": spec.regime.to_dict()}
            | spec.schema.attrs
            | {
                "created_by": f"bss2-farm {package_version()}",
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        # Attributes and consolidated metadata last, in one write; the caller then removes the
        # marker.
        _publish(url, normalise_json(attrs))
        _reached("create:published")
        return cls(url, zarr.open_group(url, mode="r+", zarr_format=3))

    def _check_identity(self, spec: StoreSpec) -> None:
        want = normalise_json(spec.identity())
        for key in IDENTITY_KEYS:
            have = self.attrs.get(key)
            if have != want[key]:
                hint = (
                    "use another --out, or the store's own settings"
                    if key != "emulator_version"
                    else "re-simulate into a new --out with this version"
                )
                raise StoreMismatch(
                    f"store={self.url!r} was made with {key}={_short(have)}; "
                    f"this run has {key}={_short(want[key])}: {hint}"
                )

    def _extend(self, num_sims: int) -> None:
        """Grow the store to ``num_sims`` (or repair an interrupted growth) and publish it last.

        Order: resize every array, reset the flag of a formerly partial last chunk, then publish
        ``num_sims`` with the consolidated metadata in one write. A kill before the publish leaves
        the old size published (readers see a consistent store) and the next run redoes each step.
        """
        have = int(self.attrs["num_sims"])
        if num_sims < have:
            raise StoreMismatch(
                f"store={self.url!r} already holds num_sims={have}; --n {num_sims} would shrink it "
                f"(give --n >= {have}, or another --out)"
            )
        c = self.chunk_size
        new_chunks = -(-num_sims // c)
        changed = num_sims != have
        for name in self.data_arrays:
            arr = self.group[name]
            if arr.shape[0] != num_sims:
                arr.resize((num_sims, *arr.shape[1:]))
                changed = True
                _reached(f"extend:array:{name}")
        if self.group["chunk_done"].shape[0] != new_chunks:
            self.group["chunk_done"].resize((new_chunks,))
            changed = True
            _reached("extend:chunk_done")
        if num_sims > have and have % c:
            # The old last chunk was partial; it now has more rows to fill (reset before
            # publishing).
            self.group["chunk_done"][have // c] = 0
            _reached("extend:flag")
        if not changed:
            return
        _publish(self.url, {"num_sims": num_sims})
        self.attrs["num_sims"] = num_sims
        _reached("extend:published")
        self.group = zarr.open_group(self.url, mode="r+", zarr_format=3, use_consolidated=False)
        self._data_arrays = None
        self._writers = {}

    @staticmethod
    def existing_chunk_size(url: str | Path) -> int | None:
        """The chunk size of a complete store at ``url``, or None if there is none."""
        try:
            return SimStore.open(url).chunk_size
        except (ValueError, OSError):  # no store, or not a complete farm store (StoreMismatch)
            return None

    # ------------------------------------------------------------------ layout
    @property
    def num_sims(self) -> int:
        return int(self.attrs["num_sims"])

    @property
    def chunk_size(self) -> int:
        return int(self.attrs["chunk_size"])

    @property
    def seed(self) -> int:
        return int(self.attrs["seed"])

    @property
    def num_chunks(self) -> int:
        return -(-self.num_sims // self.chunk_size)

    @property
    def data_arrays(self) -> tuple[str, ...]:
        """Per-sample array names (leading dimension ``sample``), as the schema laid them out."""
        if self._data_arrays is None:
            self._data_arrays = tuple(
                sorted(
                    name
                    for name, arr in self.group.arrays()
                    if (arr.metadata.dimension_names or (None,))[0] == SAMPLE_DIM
                )
            )
        return self._data_arrays

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        if not 0 <= chunk < self.num_chunks:
            raise IndexError(f"chunk={chunk} outside [0, {self.num_chunks - 1}]")
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.num_sims)

    def done_mask(self) -> NDArray[np.bool_]:
        """Flags of the published chunks (an interrupted growth may have left the array longer)."""
        return np.asarray(self.group["chunk_done"][: self.num_chunks], dtype=np.uint8) == 1

    def pending_chunks(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self.done_mask())]

    def completed_indices(self) -> NDArray[np.int64]:
        """Sample indices of every flagged chunk, ascending."""
        done = np.flatnonzero(self.done_mask())
        if done.size == 0:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([np.arange(*self.chunk_bounds(int(c))) for c in done])

    # ------------------------------------------------------------------ writing
    def write_chunk(self, chunk: int, arrays: Mapping[str, NDArray[Any]]) -> None:
        """Write every per-sample array of one chunk (aligned to Zarr chunks); no done flag.

        Args:
            arrays: rows by array name (``SimBatch.arrays()``); exactly the store's data arrays,
                each with the chunk's number of rows.
        """
        start, stop = self.chunk_bounds(chunk)
        if set(arrays) != set(self.data_arrays):
            raise ValueError(
                f"chunk {chunk} needs arrays {list(self.data_arrays)}, got {sorted(arrays)}"
            )
        for name in self.data_arrays:
            if len(arrays[name]) != stop - start:
                raise ValueError(
                    f"chunk {chunk} needs {stop - start} rows of {name}, got {len(arrays[name])}"
                )
        rows = slice(start, stop)
        writes = [(self._writer(n).async_array, arrays[n]) for n in self.data_arrays]

        async def write_all() -> None:
            await asyncio.gather(*(arr.setitem(rows, values) for arr, values in writes))

        # One trip to zarr's event loop for the chunk's seven arrays, encoded and written
        # concurrently: one at a time, each paid its own loop and thread hand-offs (~0.5 ms).
        sync(write_all())

    def _writer(self, name: str) -> zarr.Array:
        """Array ``name`` opened once for chunk writes."""
        if name not in self._writers:
            # Store every chunk, even one equal to the fill value: `farm verify` calls a missing
            # one damage.
            self._writers[name] = self.group[name].with_config({"write_empty_chunks": True})
        return self._writers[name]

    def mark_done(self, chunk: int) -> None:
        self._writer("chunk_done")[chunk] = 1
        _reached(f"done:{chunk}")

    def unflag(self, chunks: list[int]) -> None:
        """Clear the done flags of ``chunks`` so the next run recomputes them.

        `farm verify --repair` uses it.
        """
        for chunk in chunks:
            self.group["chunk_done"][chunk] = 0

    def write_array(self, name: str, values: NDArray[Any]) -> None:
        """Write one per-sample array whole, up front (``--theta`` runs read their rows from it)."""
        arr = self.group[name]
        if values.shape != arr.shape:
            raise FarmInputError(f"{name} shape {values.shape} must be {arr.shape}")
        arr[:] = values

    def read_chunk(self, name: str, chunk: int) -> NDArray[Any]:
        """One chunk's rows of array ``name``."""
        start, stop = self.chunk_bounds(chunk)
        return np.asarray(self.group[name][start:stop])

    def set_attrs(self, **attrs: Any) -> None:
        _publish(self.url, normalise_json(attrs))
        self.attrs.update(normalise_json(attrs))

    # ------------------------------------------------------------------ reading
    def describe(self) -> dict[str, Any]:
        """What `farm info` prints: layout, settings, completeness, regime fraction."""
        done = self.done_mask()
        idx = self.completed_indices()
        counts = np.asarray(self.group["spike_count"][:])[idx] if idx.size else np.empty(0)
        regime = Regime.from_dict(self.attrs.get("regime"))
        in_regime = float(np.mean(regime.contains(counts))) if counts.size else float("nan")
        return {
            "store": self.url,
            "num_sims": self.num_sims,
            "completed_sims": int(idx.size),
            "chunks_done": int(done.sum()),
            "num_chunks": int(done.size),
            "complete": bool(done.all()),
            "fraction_in_regime": in_regime,
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "substrate": self.attrs.get("substrate"),
            "prior": self.attrs.get("prior"),
            "theta_source": self.attrs.get("theta_source"),
            "emulator_version": self.attrs.get("emulator_version"),
            "created_by": self.attrs.get("created_by"),
            "regime": regime.to_dict(),
            "trace_length": int(self.group["trace"].shape[1]),
            "protocol": _protocol_label(self.attrs.get("protocol")),
        }


def open_dataset(url: str | Path, complete_only: bool = True):  # -> xarray.Dataset
    """The store as an xarray Dataset; by default only samples of completed chunks.

    Lazy: arrays load when indexed, so stores larger than memory are fine.
    """
    import xarray as xr

    store = SimStore.open(url)
    ds = xr.open_zarr(store.url, consolidated=None, chunks=None)
    if complete_only and not store.done_mask().all():
        ds = ds.isel(sample=store.completed_indices())
    return ds


def normalise_url(url: str | Path) -> str:
    """Local paths stay paths (``file://`` is stripped: zarr's LocalStore creates directories,
    fsspec's local filesystem does not); every other fsspec URL passes through."""
    text = str(url)
    return text.removeprefix("file://") if text.startswith("file://") else text


def _publish(url: str, attrs: dict[str, Any]) -> None:
    """Update the root attributes and the consolidated metadata in ONE write of ``zarr.json``.

    Two writes (``attrs.update``, ``consolidate_metadata``) could be split by a kill; zarr's local
    store writes a key through a temporary file and a rename, so one write is atomic on disk.
    """
    from zarr.core.group import AsyncGroup, ConsolidatedMetadata
    from zarr.storage._common import make_store_path

    async def publish() -> None:
        store_path = await make_store_path(url, mode="r+")
        group = await AsyncGroup.open(store_path, zarr_format=3, use_consolidated=False)
        members = {
            k: v.metadata
            async for k, v in group.members(max_depth=None, use_consolidated_for_children=False)
        }
        ConsolidatedMetadata._flat_to_nested(members)
        metadata = dataclasses.replace(
            group.metadata,
            attributes={**group.metadata.attributes, **attrs},
            consolidated_metadata=ConsolidatedMetadata(metadata=members),
        )
        await dataclasses.replace(group, metadata=metadata)._save_metadata()

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the creation marker is "not a Zarr node"; consolidated v3 is not in the spec
        sync(publish())


def _reached(step: str) -> None:
    """Crash-test hook: pause at step ``FARM_STORE_PAUSE_AT``.

    Writes ``FARM_STORE_PAUSE_FILE``, then waits until killed or until that file is deleted.
    """
    if os.environ.get("FARM_STORE_PAUSE_AT") == step:
        (marker := Path(os.environ["FARM_STORE_PAUSE_FILE"])).write_text(step)
        deadline = time.monotonic() + float(os.environ.get("FARM_STORE_PAUSE_S", "60"))
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _protocol_label(d: Any) -> str:
    """`farm info`'s protocol: ``step``, or a sweep protocol's name and sweep count."""
    try:
        p = Protocol.from_dict(d) if d is not None else Protocol()
    except FarmInputError:
        return "unreadable"
    return p.label if p.num_sweeps == 1 else f"{p.label} ({p.num_sweeps} sweeps)"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
