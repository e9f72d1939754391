"""torch's intra-op thread count survives calls into the farm's numba kernels.

Why: numba's OpenMP threading layer sets the *calling thread's* OpenMP thread count to numba's own
(every core) at each parallel launch, and torch, on the same OpenMP runtime, then runs its next ops
on that many threads. A Serve replica pinned to one torch thread would run on two after its first
handcrafted-feature extraction, and on a busy machine those two threads spin at OpenMP barriers for
a core that is not free. Only the calling thread's count changes; other threads keep theirs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Within the block, farm numba kernels may run; afterwards torch has its old thread count."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
