"""The Ray side of `farm infer`: one posterior actor per CPU, each answering whole blocks.

Thin, as the farm's chip actors: an actor loads the posterior once (and, for a circuit-aware
posterior, opens the circuits store once), then only calls ``infer_block``. The artifact travels
as bytes through Ray's object store, so workers on other nodes need no shared filesystem for it;
the traces of each block and their (chip, neuron) ids travel the same way, and only the driver
touches the output store (one writer). The circuits store is read where it lies, each actor
looking up its own blocks' fingerprints (~12 ms per chip a block touches, done in parallel rather
than on the one driver): like `farm simulate`'s stores, it must be a path or URL every node
reaches.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from inference.batch.block import BlockResult, infer_block
from inference.batch.circuits import fingerprints

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
        circuits: the absolute path or URL of the circuits store a circuit-aware posterior reads
            (checked by the driver: ``inference.batch.circuits.open_checked``); None otherwise.
    """

    def __init__(
        self, files: dict[str, bytes], threads: int = 1, circuits: str | None = None
    ) -> None:
        import torch

        from inference import load_posterior

        torch.set_num_threads(threads)
        self._dir = tempfile.TemporaryDirectory(prefix="farm-infer-")
        for name, data in files.items():
            path = Path(self._dir.name, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.posterior = load_posterior(self._dir.name)
        self.circuits = None
        if circuits is not None:
            from farm.circuits.store import FingerprintStore

            self.circuits = FingerprintStore.open(circuits)

    def infer(
        self,
        block: int,
        traces: NDArray[Any],
        num_draws: int,
        seed: int,
        chip: NDArray[Any] | None = None,
        neuron: NDArray[Any] | None = None,
    ) -> tuple[int, BlockResult]:
        """Answer one block; ``chip``, ``neuron``: its rows' circuits (circuit-aware only)."""
        fps = fingerprints(self.circuits, chip, neuron)
        return block, infer_block(self.posterior, traces, num_draws, seed, fps)
