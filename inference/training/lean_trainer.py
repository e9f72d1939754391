"""Ray Train's ``TorchTrainer`` without its placement-group cleaner, which costs every run ~12 s.

Ray Train 2.x starts a detached ``PlacementGroupCleaner`` actor per run; it asks the state API
whether the controller is alive (``get_actor`` with a 10 s timeout, answered slowly or not at all
on a cluster without a dashboard), and the controller waits up to 12 s for it to stop at the end of
every run, then logs the timeout as an error with a traceback: on a short training that wait is
a third of the wall time.

The cleaner exists to remove a run's placement group when its *controller actor* dies while the
driver lives on. Here the driver runs ``fit()`` and owns the controller: if either dies, Ray removes
the job's (non-detached) placement groups itself, so the cleaner protects nothing we rely on
(``tests/test_train_ray.py`` checks that no placement group outlives a run).
"""

from __future__ import annotations

import os
from typing import Any

# The controller polls its workers this often; the default 2 s adds up to 4 s after the last
# report of every run. Ray propagates this variable from the driver to the controller.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

_CLEANER = "PlacementGroupCleanerCallback"


def lean_torch_trainer(*args: Any, **kwargs: Any) -> Any:
    """A ``ray.train.torch.TorchTrainer`` (same arguments) without the cleaner callback."""
    from ray.train.torch import TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            return [
                cb for cb in super()._create_default_callbacks() if type(cb).__name__ != _CLEANER
            ]

    return LeanTorchTrainer(*args, **kwargs)
