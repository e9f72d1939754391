"""`farm verify`: read every flagged chunk of a store back and name the damaged or missing ones.

A flag in ``chunk_done`` promises that every data array of that chunk is written. Verification
checks the promise: each chunk object must exist and decode (new stores carry a crc32c checksum
per chunk, so a flipped or truncated byte fails the decode; older stores rely on the compressor).
Repair only clears the flags of damaged chunks; the same `farm simulate` then recomputes them,
bit-identical, because sample i is a pure function of (seed, i).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from farm.store.sim_store import SimStore


@dataclass(frozen=True, slots=True)
class ChunkDamage:
    """One flagged chunk that does not hold what its flag promises."""

    chunk: int
    array: str
    problem: str  # "missing" or the decode error's first line

    def describe(self, store: SimStore) -> str:
        start, stop = store.chunk_bounds(self.chunk)
        return f"chunk {self.chunk} (samples {start}-{stop - 1}): {self.array} {self.problem}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `farm verify` found: flagged chunks read, and the damaged ones (one entry per array)."""

    store: str
    chunks_checked: int
    damage: list[ChunkDamage] = field(default_factory=list)

    @property
    def damaged_chunks(self) -> list[int]:
        return sorted({d.chunk for d in self.damage})

    @property
    def intact(self) -> bool:
        return not self.damage


def verify_store(url: str, on_chunk: Callable[[int], None] | None = None) -> VerifyReport:
    """Read every array of every flagged chunk of the store at ``url``.

    Args:
        on_chunk: called after each chunk with the chunk index (progress bars).
    """
    from zarr.core.sync import sync

    store = SimStore.open(url)
    damage: list[ChunkDamage] = []
    flagged = np.flatnonzero(store.done_mask())
    arrays = {name: store.group[name] for name in store.data_arrays}
    for chunk in map(int, flagged):
        start, stop = store.chunk_bounds(chunk)
        for name, arr in arrays.items():
            key = arr.metadata.encode_chunk_key((chunk, *([0] * (arr.ndim - 1))))
            if not sync((arr._async_array.store_path / key).exists()):
                damage.append(ChunkDamage(chunk, name, "missing"))
                continue
            try:
                np.asarray(arr[start:stop])
            except (
                Exception
            ) as e:  # any decode failure is damage: crc32c mismatch, truncated blosc frame, ...
                damage.append(
                    ChunkDamage(
                        chunk,
                        name,
                        f"unreadable ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})",
                    )
                )
        if on_chunk is not None:
            on_chunk(chunk)
    return VerifyReport(store.url, int(flagged.size), damage)


def unflag_damaged(url: str, report: VerifyReport) -> list[int]:
    """Clear the flags of the damaged chunks (call under the store's lock); returns them."""
    chunks = report.damaged_chunks
    if chunks:
        SimStore.open(url, mode="r+").unflag(chunks)
    return chunks
