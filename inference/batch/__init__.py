"""Batch inference over recorded traces (`farm infer`): a whole chip's neurons in one run.

``run_infer(InferConfig(...))`` reads a farm store or plain traces, answers them in blocks on Ray
actors (one per CPU) with batched posterior calls, and writes an xarray-readable Zarr store of
draws, summaries and misspecification flags that a killed run resumes bit-identically.
``plot_chip_map`` draws the figure a lab puts on the wall.
"""

from __future__ import annotations

from farm.lazy import lazy_exports

#: public name -> module that defines it
_LAZY = {
    "InferConfig": "inference.batch.config",
    "InferStore": "inference.batch.store",
    "InferStoreMismatch": "inference.batch.store",
    "Observations": "inference.batch.observations",
    "read_observations": "inference.batch.observations",
    "infer_block": "inference.batch.block",
    "block_seed": "inference.batch.block",
    "run_infer": "inference.batch.runner",
    "open_posteriors": "inference.batch.store",
    "plot_chip_map": "inference.batch.chip_map",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
