"""The settings of one `farm infer` run: which posterior, which traces, where the answers go."""

from __future__ import annotations

from dataclasses import dataclass

from farm.errors import FarmInputError

#: Most draws per observation: 1e4 x 7 float32 is 280 kB a row, 18 MB a block of 64.
MAX_DRAWS = 10_000
#: Observations per work item and per output chunk; fixed when the output store is created.
#: 64 rows of 500 draws keep one flow call near 32k rows, where its fixed cost no longer shows.
DEFAULT_BLOCK = 64
MAX_BLOCK = 4096


@dataclass(frozen=True, slots=True)
class InferConfig:
    """One batch-inference run (`farm infer`); validates itself.

    Args:
        posterior: artifact directory of `farm train npe` (single flow or ensemble).
        store: the recorded traces: a farm store, a Zarr group with ``trace``, or .npy / .npz.
        out: the output Zarr store (new, empty, or a `farm infer` store to resume).
        num_draws: posterior draws per observation.
        seed: root seed; block b draws with a key hashed from (seed, b).
        block_size: observations per work item and output chunk (fixed at creation).
        address: Ray cluster address (None: a local Ray on all cores).
        num_workers: posterior actors (default: one per CPU of the cluster).
        in_process: no Ray; blocks run in this process (small inputs, tests, debugging).
        progress: draw a progress bar on stderr.
        break_lock: take the output's lock even from a run that still looks alive.
        circuits: the circuits store (`farm fingerprint`) of the traces' chips. A circuit-aware
            posterior needs it and answers each trace with its circuit's fingerprint; a
            circuit-marginal posterior reads no fingerprint, and the store is then not read.
    """

    posterior: str
    store: str
    out: str
    num_draws: int = 1000
    seed: int = 0
    block_size: int = DEFAULT_BLOCK
    address: str | None = None
    num_workers: int | None = None
    in_process: bool = False
    progress: bool = False
    break_lock: bool = False
    circuits: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.num_draws <= MAX_DRAWS:
            raise FarmInputError(f"num_draws={self.num_draws} outside [1, {MAX_DRAWS}]")
        if not 0 <= self.seed < 2**64:
            raise FarmInputError(f"seed={self.seed} outside [0, 2^64 - 1]")
        if not 1 <= self.block_size <= MAX_BLOCK:
            raise FarmInputError(f"block_size={self.block_size} outside [1, {MAX_BLOCK}]")
        if self.num_workers is not None and self.num_workers < 1:
            raise FarmInputError(f"num_workers={self.num_workers} must be >= 1")
