"""torch's intra-op thread count survives calls into the farm's numba kernels.

Why: numba's OpenMP threading layer sets the *calling thread's* OpenMP thread count to numba's own
(every core) at each parallel launch, and torch, on the same OpenMP runtime, then runs its next ops
on that many threads. A Serve replica pinned to one torch thread ran on two after its first
handcrafted-feature extraction: a 1000-draw ``/sample`` of the demo posterior took 3-40x longer on
a busy 2-core machine (two threads spinning at OpenMP barriers for a core that is not free).
Measured: ``torch.get_num_threads()`` 1 before ``farm.features.summarize``, 2 after, on the same
thread; on another thread it stays 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Within the block, farm numba kernels may run; afterwards torch has the thread count it had before."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
