"""The Ray side of `farm infer`: one posterior actor per CPU, each answering whole blocks.

Thin, as the farm's chip actors: an actor loads the posterior once, then only calls
``infer_block``. The artifact travels as bytes through Ray's object store, so workers on other
nodes need no shared filesystem; the traces of each block travel the same way, and only the
driver touches the output store (one writer).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from inference.batch.block import BlockResult, infer_block

#: Artifact sub-folders a posterior does not need to answer (training checkpoints).
SKIPPED_DIRS = frozenset({"checkpoints"})


def artifact_files(directory: str | Path) -> dict[str, bytes]:
    """The files of a posterior artifact by relative path, without its training checkpoints."""
    root = Path(directory)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(root).parts)
    }


class PosteriorActor:
    """Answers blocks with one posterior; made remote with ``ray.remote(num_cpus=1)``.

    Args:
        files: ``artifact_files`` of the posterior; threads: torch threads (one per CPU asked).
    """

    def __init__(self, files: dict[str, bytes], threads: int = 1) -> None:
        import torch

        from inference import load_posterior

        torch.set_num_threads(threads)
        self._dir = tempfile.TemporaryDirectory(prefix="farm-infer-")
        for name, data in files.items():
            path = Path(self._dir.name, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.posterior = load_posterior(self._dir.name)

    def infer(
        self, block: int, traces: NDArray[Any], num_draws: int, seed: int
    ) -> tuple[int, BlockResult]:
        return block, infer_block(self.posterior, traces, num_draws, seed)
