"""The `farm infer` output: a Zarr v3 store of posterior draws that xarray opens as a dataset.

Same safety as the simulation store (farm.store): the lock beside it allows one writer, a
creation marker written first and removed last means a half-made store is recognised and redone,
and anything the farm did not make is refused untouched (farm.store.paths). Blocks of
observations are the work items: a block's arrays are written, then its flag in ``block_done``
(one tiny chunk each), so a killed run recomputes exactly the unflagged blocks. The store's
identity (posterior fingerprint, seed, draws, block size, input, circuits store) is fixed at
creation and a resumed run must match it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from farm import FarmInputError, StoreRefused, package_version
from farm.store.paths import (
    PathState,
    begin_creation,
    check_parent_writable,
    classify,
    end_creation,
)
from inference.batch.block import SUMMARIES, BlockResult

KIND = "posterior_draws"
FORMAT_VERSION = "infer-1"
OBS_DIM, DRAW_DIM, PARAM_DIM = "observation", "draw", "parameter"
#: per-observation coordinates: where each row was recorded
COORDS = ("chip", "neuron")
_COMPRESSORS = (
    zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
    zarr.codecs.Crc32cCodec(),
)


class InferStoreMismatch(FarmInputError):
    """The output store exists but was made by another posterior, seed, draw count or input."""


@dataclass(frozen=True)
class InferLayout:
    """What an output store holds, fixed at creation.

    Args:
        parameter_names: the posterior's, in order.
        chip, neuron: (n,) ids of the input rows.
        identity: what a resumed run must match (JSON-able).
        attrs: further root attributes (posterior version, input kind, ...).
    """

    num_draws: int
    block_size: int
    parameter_names: tuple[str, ...]
    chip: NDArray[np.int16]
    neuron: NDArray[np.int16]
    identity: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_observations(self) -> int:
        return int(self.chip.shape[0])


class InferStore:
    """An output store at a local path or fsspec URL, open for writing blocks."""

    def __init__(self, url: str, group: zarr.Group) -> None:
        self.url, self.group = url, group
        self.attrs: dict[str, Any] = dict(group.attrs)
        self._writers: dict[str, zarr.Array] = {}

    @classmethod
    def create_or_resume(cls, url: str, layout: InferLayout) -> InferStore:
        """Create the store, or reopen one made with the same identity to resume it.

        Raises:
            StoreRefused: the path holds something that is not a `farm infer` store.
            InferStoreMismatch: a `farm infer` store made with other settings.
        """
        state = check_out(url)
        if state is PathState.STORE:
            store = cls(url, zarr.open_group(url, mode="r+", zarr_format=3))
            store._check(layout)
            return store
        check_parent_writable(url)
        try:
            begin_creation(url, state)
            _create(url, layout)
            end_creation(url)
        except OSError as e:
            raise InferStoreMismatch(
                f"out={url!r} cannot be created: {e.strerror or e}; choose a writable --out"
            ) from None
        return cls(url, zarr.open_group(url, mode="r+", zarr_format=3))

    def _check(self, layout: InferLayout) -> None:
        have = self.attrs.get("identity", {})
        want = json.loads(json.dumps(layout.identity))
        for key in want:
            if have.get(key) != want[key]:
                name, old, new = _first_difference(key, have.get(key), want[key])
                raise InferStoreMismatch(
                    f"out={self.url!r} was made with {name}={_short(old)}; this run has "
                    f"{name}={_short(new)}: use another --out, or the store's own settings"
                )

    # ------------------------------------------------------------------ layout
    @property
    def num_observations(self) -> int:
        return int(self.attrs["num_observations"])

    @property
    def block_size(self) -> int:
        return int(self.attrs["block_size"])

    @property
    def num_blocks(self) -> int:
        return -(-self.num_observations // self.block_size)

    def block_bounds(self, block: int) -> tuple[int, int]:
        start = block * self.block_size
        return start, min(start + self.block_size, self.num_observations)

    def done_mask(self) -> NDArray[np.bool_]:
        return np.asarray(self.group["block_done"][:]) == 1

    def pending_blocks(self) -> list[int]:
        return [int(b) for b in np.flatnonzero(~self.done_mask())]

    # ------------------------------------------------------------------ writing
    def write_block(self, block: int, result: BlockResult) -> None:
        """Write one block's arrays (aligned to its chunks); ``mark_done`` flags it after."""
        start, stop = self.block_bounds(block)
        if result.draws.shape[0] != stop - start:
            raise ValueError(f"block {block} needs {stop - start} rows, got {len(result.draws)}")
        values = {
            "draws": result.draws,
            "misspecification_score": result.score,
            "misspecification_flagged": result.flagged,
            "misspecification_reasons": result.reasons,
            **result.summaries,
        }
        for name, rows in values.items():
            self._writer(name)[start:stop] = rows
        _reached(f"infer:written:{block}")

    def mark_done(self, block: int) -> None:
        self._writer("block_done")[block] = 1
        _reached(f"infer:done:{block}")

    def _writer(self, name: str) -> zarr.Array:
        if name not in self._writers:
            # Every chunk is stored, also one equal to the fill value (all-NaN block).
            self._writers[name] = self.group[name].with_config({"write_empty_chunks": True})
        return self._writers[name]


def check_out(url: str) -> PathState:
    """What lies at ``url``; refuses, untouched, anything but a new, empty or `farm infer` store.

    Raises:
        StoreRefused: something the farm did not make, or a simulation store.
    """
    state = classify(url)
    if state is PathState.STORE:
        kind = zarr.open_group(url, mode="r", zarr_format=3).attrs.get("kind", "simulation")
        if kind != KIND:
            raise StoreRefused(
                f"out={url!r} is a bss2-farm {kind} store, not a `farm infer` output; "
                "nothing was touched, choose a new path for --out"
            )
    return state


def open_posteriors(url: str | Path, complete_only: bool = True):  # -> xarray.Dataset
    """A `farm infer` store as an xarray Dataset; by default only observations of finished blocks.

    Raises:
        FarmInputError: ``url`` is not a `farm infer` store.
    """
    import xarray as xr

    text = str(url)
    try:
        attrs = dict(zarr.open_group(text, mode="r", zarr_format=3).attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, OSError):
        attrs = {}
    if attrs.get("kind") != KIND:
        raise FarmInputError(f"posteriors={text!r} is not a `farm infer` output store")
    ds = xr.open_zarr(text, chunks=None)
    if complete_only:
        done = np.repeat(np.asarray(ds["block_done"].values) == 1, int(attrs["block_size"]))
        ds = ds.isel({OBS_DIM: np.flatnonzero(done[: ds.sizes[OBS_DIM]])})
    return ds


def _create(url: str, layout: InferLayout) -> None:
    """Arrays, coordinates, then the attributes; the caller removes the creation marker last."""
    g = zarr.open_group(url, mode="a", zarr_format=3)  # the location holds only the marker
    n, c, p, d = (
        layout.num_observations,
        min(layout.block_size, layout.num_observations),
        len(layout.parameter_names),
        layout.num_draws,
    )
    attrs = {"coordinates": " ".join(COORDS)}  # CF: xarray decodes chip, neuron as coordinates

    def array(name: str, shape: tuple, chunks: tuple, dtype: Any, dims: tuple, fill: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # str arrays are not yet in the Zarr v3 spec
            g.create_array(
                name,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=fill,
                dimension_names=dims,
                compressors=list(_COMPRESSORS) if dtype is not str else "auto",
                attributes=attrs if dims[0] == OBS_DIM and name not in COORDS else {},
            )

    array("draws", (n, d, p), (c, d, p), "float32", (OBS_DIM, DRAW_DIM, PARAM_DIM), np.nan)
    for name in SUMMARIES:
        array(name, (n, p), (c, p), "float32", (OBS_DIM, PARAM_DIM), np.nan)
    array("misspecification_score", (n,), (c,), "float32", (OBS_DIM,), np.nan)
    array("misspecification_flagged", (n,), (c,), "bool", (OBS_DIM,), False)
    array("misspecification_reasons", (n,), (c,), str, (OBS_DIM,), "")
    _reached("infer:create:arrays")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, values in (
            ("chip", layout.chip),
            ("neuron", layout.neuron),
            (OBS_DIM, np.arange(n, dtype=np.int64)),
        ):
            g.create_array(name, data=np.asarray(values), dimension_names=(OBS_DIM,))
        names = g.create_array(
            PARAM_DIM, shape=(len(layout.parameter_names),), dtype=str, dimension_names=(PARAM_DIM,)
        )
        names[:] = np.array(layout.parameter_names, dtype=object)
    num_blocks = -(-n // layout.block_size)
    g.create_array(
        "block_done",
        shape=(num_blocks,),
        chunks=(1,),
        dtype="uint8",
        fill_value=0,
        dimension_names=("block",),
        compressors=[zarr.codecs.Crc32cCodec()],
    )
    g.attrs.update(
        {
            **layout.attrs,
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "num_observations": n,
            "num_draws": d,
            "block_size": layout.block_size,
            "identity": json.loads(json.dumps(layout.identity)),
            "created_by": f"bss2-farm {package_version()}",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the creation marker is "not a Zarr node"
        zarr.consolidate_metadata(url, zarr_format=3)  # plain xr.open_zarr(out) opens it quietly
    _reached("infer:create:published")


def _reached(step: str) -> None:
    """Crash-test hook (as farm.store's): at step ``FARM_STORE_PAUSE_AT`` write
    ``FARM_STORE_PAUSE_FILE`` and wait until killed or it is deleted."""
    if os.environ.get("FARM_STORE_PAUSE_AT") == step:
        (marker := Path(os.environ["FARM_STORE_PAUSE_FILE"])).write_text(step)
        deadline = time.monotonic() + float(os.environ.get("FARM_STORE_PAUSE_S", "60"))
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _first_difference(key: str, have: Any, want: Any) -> tuple[str, Any, Any]:
    """The first differing leaf of two identity values, as ``circuits.seed`` (both dicts), or the
    values themselves: a message names what differs, not an 80-character cut of a whole dict."""
    while isinstance(have, dict) and isinstance(want, dict):
        sub = next((k for k in (*want, *have) if have.get(k) != want.get(k)), None)
        if sub is None:
            break
        key, have, want = f"{key}.{sub}", have.get(sub), want.get(sub)
    return key, have, want


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
