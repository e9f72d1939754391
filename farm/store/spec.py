"""What a run asks of a store: the identity of every sample in it, its size, and the limits on both.

Kept apart from `farm.store.sim_store` (which lays the arrays out on disk) so the settings a run is
checked against are readable in one place: a store accepts a run only when every identity key
matches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from farm.defaults import EMULATOR_VERSION, STORE_FORMAT_VERSION, ChipModel, Protocol, Regime
from farm.errors import FarmInputError
from farm.store.schema import StoreSchema

#: Attributes that must match for a run to append to an existing store.
IDENTITY_KEYS = (
    "format_version",
    "emulator_version",
    "substrate",
    "seed",
    "chunk_size",
    "prior",
    "protocol",
    "chip_model",
    "theta_source",
)
#: Hard limits: beyond these a run is a typo, not a plan (and the chunk_done array alone would not
#: fit).
MAX_SIMS = 10**10
MAX_CHUNKS = 10**7
MAX_SEED = 2**64 - 1


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """What a run writes: the identity of every sample in it, and the layout of its rows."""

    seed: int
    num_sims: int
    chunk_size: int
    prior: dict[str, Any]
    protocol: Protocol
    chip_model: ChipModel
    regime: Regime
    schema: StoreSchema
    substrate: str = "emulator"
    theta_source: str = "prior"

    def __post_init__(self) -> None:
        if self.num_sims < 1:
            raise FarmInputError(f"num_sims={self.num_sims} must be >= 1")
        if self.chunk_size < 1:
            raise FarmInputError(f"chunk_size={self.chunk_size} must be >= 1")
        if not 0 <= self.seed <= MAX_SEED:
            raise FarmInputError(f"seed={self.seed} must be in [0, 2**64 - 1]")
        if self.num_sims > MAX_SIMS:
            raise FarmInputError(
                f"num_sims={self.num_sims} is more than the {MAX_SIMS:.0e} samples a store may hold"
            )
        if -(-self.num_sims // self.chunk_size) > MAX_CHUNKS:
            raise FarmInputError(
                f"num_sims={self.num_sims} in chunks of {self.chunk_size} makes "
                f"{-(-self.num_sims // self.chunk_size)} chunks; at most {MAX_CHUNKS:.0e} allowed, "
                "give a larger --chunk"
            )

    def identity(self) -> dict[str, Any]:
        return {
            "format_version": STORE_FORMAT_VERSION,
            "emulator_version": EMULATOR_VERSION,
            "substrate": self.substrate,
            "seed": int(self.seed),
            "chunk_size": int(self.chunk_size),
            "prior": self.prior,
            "protocol": self.protocol.to_dict(),
            "chip_model": self.chip_model.to_dict(),
            "theta_source": self.theta_source,
        }


def normalise_json(value: Any) -> Any:
    """JSON round-trip so tuples/lists and ints/floats compare the way they are stored."""
    return json.loads(json.dumps(value))


__all__ = ["IDENTITY_KEYS", "MAX_CHUNKS", "MAX_SEED", "MAX_SIMS", "StoreSpec", "normalise_json"]
