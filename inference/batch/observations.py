"""The recorded traces `farm infer` reads: a farm store, a plain Zarr group, or a .npy / .npz file.

Why one reader for three sources: a lab's recordings rarely arrive as a farm store, but every
source reduces to the same rows: traces (n, T) ADC codes, and the chip and neuron each row came
from (-1 where the source does not say). Rows are read a block at a time, so a chip's worth of
recordings larger than memory is fine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from farm import FarmInputError, Protocol, SimStore

#: chip / neuron of a row whose source does not name it
UNKNOWN_ID = -1
TRACE_KEYS = ("trace", "traces")
_EXPECTED = "a `farm simulate` store, a Zarr group with a `trace` array, or a .npy/.npz of traces"


@dataclass(frozen=True)
class Observations:
    """Rows of recorded traces and where they came from.

    Args:
        source: the path as given.
        kind: ``farm store``, ``zarr``, ``npy`` or ``npz``.
        traces: (n, T) array-like (zarr array, memory map or ndarray), read by block.
        chip, neuron: (n,) int16 ids, ``UNKNOWN_ID`` where the source does not say.
        protocol: the stimulus the traces were recorded under, None where the source does not say.
        identity: what a resumed run must find unchanged (JSON-able).
    """

    source: str
    kind: str
    traces: Any
    chip: NDArray[np.int16]
    neuron: NDArray[np.int16]
    protocol: Protocol | None
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def num_observations(self) -> int:
        return int(self.traces.shape[0])

    @property
    def trace_length(self) -> int:
        return int(np.prod(self.traces.shape[1:]))

    @property
    def has_ids(self) -> bool:
        """Whether every row names its chip and neuron (what circuit-aware inference needs)."""
        return bool((self.chip != UNKNOWN_ID).all() and (self.neuron != UNKNOWN_ID).all())

    def rows(self, start: int, stop: int) -> NDArray[Any]:
        """Traces of rows [start, stop) as (rows, T), in the source's dtype."""
        block = np.asarray(self.traces[start:stop])
        return block.reshape(block.shape[0], -1)


def read_observations(source: str | Path) -> Observations:
    """Open recorded traces for inference.

    Raises:
        FarmInputError: the path is missing, unreadable, not one of the accepted sources, an
            incomplete farm store, or its ids do not match its traces row for row.
    """
    text = str(source)
    path = Path(text.removeprefix("file://"))
    if "://" not in text and not path.exists():
        raise FarmInputError(f"store={text!r} does not exist; give {_EXPECTED}")
    if text.endswith(".npy"):
        traces = _load(lambda: np.load(path, mmap_mode="r"), text)
        return _checked(text, "npy", traces, None, None, None, _file_identity(path, traces))
    if text.endswith(".npz"):
        data = _load(lambda: dict(np.load(path)), text)
        traces = _trace_array(data, text)
        ident = _file_identity(path, traces)
        return _checked(text, "npz", traces, data.get("chip"), data.get("neuron"), None, ident)
    group = _load(lambda: zarr.open_group(text, mode="r"), text)
    attrs = dict(group.attrs)
    if attrs.get("kind") == "posterior_draws":
        raise FarmInputError(
            f"store={text!r} is a `farm infer` output, not recorded traces; give {_EXPECTED}"
        )
    if str(attrs.get("created_by", "")).startswith("bss2-farm"):
        return _farm_store(text)
    traces = _trace_array(dict(group.arrays()), text)
    protocol = Protocol.from_dict(attrs["protocol"]) if "protocol" in attrs else None
    ident = {"source": _absolute(text), "shape": list(traces.shape)}
    chip = group["chip"] if "chip" in group else None
    neuron = group["neuron"] if "neuron" in group else None
    return _checked(text, "zarr", traces, chip, neuron, protocol, ident)


def check_compatible(obs: Observations, protocol: Protocol, trace_length: int, who: str) -> None:
    """Refuse traces another protocol or length than the posterior's, naming both.

    Args:
        protocol, trace_length: the posterior's; who: how the message names the posterior.
    """
    theirs = "unrecorded protocol" if obs.protocol is None else f"protocol {obs.protocol.label}"
    ours = f"protocol {protocol.label}"
    if (
        obs.protocol is not None
        and obs.protocol != protocol
        and obs.protocol.label == protocol.label
    ):
        # same name, other settings (a step at another current): name the settings too
        theirs += " " + json.dumps(obs.protocol.to_dict(), separators=(",", ":"))
        ours += " " + json.dumps(protocol.to_dict(), separators=(",", ":"))
    if obs.protocol is not None and obs.protocol != protocol:
        raise FarmInputError(
            f"store={obs.source!r} was recorded with {theirs} ({obs.trace_length} samples); "
            f"posterior {who} expects {ours} ({trace_length} samples)"
        )
    if obs.trace_length != trace_length:
        raise FarmInputError(
            f"store={obs.source!r} holds traces of {obs.trace_length} samples ({theirs}); "
            f"posterior {who} expects {trace_length} samples ({ours})"
        )


def _farm_store(url: str) -> Observations:
    store = SimStore.open(url)
    done = store.done_mask()
    if not done.all():
        raise FarmInputError(
            f"store={url!r} is incomplete ({int(done.sum())} of {done.size} chunks); "
            "finish it with the same `farm simulate` first"
        )
    g = store.group
    ident = {
        "source": _absolute(url),
        "num_sims": store.num_sims,
        "seed": store.seed,
        "created_at": store.attrs.get("created_at"),
    }
    protocol = Protocol.from_dict(store.attrs["protocol"]) if "protocol" in store.attrs else None
    return _checked(
        url, "farm store", g["trace"], g["chip"], g["neuron"], protocol or Protocol(), ident
    )


def _checked(
    source: str,
    kind: str,
    traces: Any,
    chip: Any,
    neuron: Any,
    protocol: Protocol | None,
    identity: dict[str, Any],
) -> Observations:
    if (
        traces.ndim not in (2, 3)
        or traces.shape[0] == 0
        or not np.issubdtype(np.dtype(traces.dtype), np.number)
    ):
        raise FarmInputError(
            f"store={source!r}: traces have shape {tuple(traces.shape)} and dtype "
            f"{traces.dtype}; expected numeric (n, T) or (n, sweeps, T) ADC codes"
        )
    n = int(traces.shape[0])
    ids = [_ids(v, name, n, source) for v, name in ((chip, "chip"), (neuron, "neuron"))]
    return Observations(source, kind, traces, ids[0], ids[1], protocol, identity)


def _ids(values: Any, name: str, n: int, source: str) -> NDArray[np.int16]:
    if values is None:
        return np.full(n, UNKNOWN_ID, dtype=np.int16)
    a = np.asarray(values[:])
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise FarmInputError(
            f"store={source!r}: `{name}` has shape {a.shape} and dtype {a.dtype}; "
            f"expected ({n},) integers, one per trace"
        )
    return a.astype(np.int16)


def _trace_array(arrays: dict[str, Any], source: str) -> Any:
    for key in TRACE_KEYS:
        if key in arrays:
            return arrays[key]
    raise FarmInputError(
        f"store={source!r} has no `trace` array (found {sorted(arrays) or 'none'}); "
        f"give {_EXPECTED}"
    )


def _load(opener: Any, source: str) -> Any:
    try:
        return opener()
    except (OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError) as e:
        raise FarmInputError(
            f"store={source!r} cannot be read ({type(e).__name__}); give {_EXPECTED}"
        ) from None


def _file_identity(path: Path, traces: Any) -> dict[str, Any]:
    return {"source": _absolute(str(path)), "shape": list(traces.shape)}


def _absolute(url: str) -> str:
    return url if "://" in url else str(Path(url).absolute())
