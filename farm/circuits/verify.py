"""`farm verify` for a circuits store: read every flagged chip back, name the damaged ones.

A flag in ``chip_done`` promises that the chip's ``fingerprint`` chunk is written; each flagged
chunk must exist and decode (crc32c per chunk). Repair clears the flags of damaged chips, and the
same `farm fingerprint` then records them again, bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from zarr.core.sync import sync

from farm.circuits.store import FingerprintStore
from farm.store.verify import ChunkDamage, VerifyReport


def verify_fingerprint_store(
    url: str, on_chip: Callable[[int], None] | None = None
) -> VerifyReport:
    """Read the ``fingerprint`` chunk of every flagged chip; ``ChunkDamage.chunk`` is its position.

    Args:
        on_chip: called after each chip with its position (progress bars).
    """
    store = FingerprintStore.open(url)
    arr = store.group["fingerprint"]
    damage: list[ChunkDamage] = []
    flagged = np.flatnonzero(store.done_mask())
    for k in map(int, flagged):
        key = arr.metadata.encode_chunk_key((k, 0, 0, 0))
        if not sync((arr._async_array.store_path / key).exists()):
            damage.append(ChunkDamage(k, "fingerprint", "missing"))
        else:
            try:
                np.asarray(arr[k])
            except Exception as e:  # any decode failure is damage: crc32c, truncated frame, ...
                first = str(e).splitlines()[0] if str(e) else ""
                damage.append(
                    ChunkDamage(k, "fingerprint", f"unreadable ({type(e).__name__}: {first})")
                )
        if on_chip is not None:
            on_chip(k)
    return VerifyReport(store.url, int(flagged.size), damage)


def describe_damage(store: FingerprintStore, damage: ChunkDamage) -> str:
    """One line per damaged chip, naming the chip id."""
    return f"chip {store.chip_ids[damage.chunk]}: {damage.array} {damage.problem}"


def unflag_damaged_chips(url: str, report: VerifyReport) -> list[int]:
    """Clear the flags of the damaged chips (call under the store's lock); returns their ids."""
    store = FingerprintStore.open(url, mode="r+")
    positions = report.damaged_chunks
    store.unflag(positions)
    return [store.chip_ids[k] for k in positions]


__all__ = ["describe_damage", "unflag_damaged_chips", "verify_fingerprint_store"]
