"""Imports cost what they use.

A Serve replica loading a posterior never imports the trainer, Ray Train or Zarr.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "ray.train",
    "zarr",
    "inference.training.loop",
    "inference.training.api",
    "inference.data.datasets",
)


@pytest.mark.parametrize(
    "statement",
    [
        "import inference",
        "from inference import load_posterior",
        "from inference.evaluation.report import load_report, compare_reports",
    ],
)
def test_loading_a_posterior_does_not_import_the_trainer(statement: str) -> None:
    code = f"{statement}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"{statement!r} imported {out}"


def test_lazy_names_resolve_and_unknown_ones_raise() -> None:
    import inference

    assert set(inference.__all__) <= set(dir(inference))
    assert inference.TrainConfig.__name__ == "TrainConfig" and callable(inference.load_posterior)
    with pytest.raises(AttributeError, match="no_such_name"):
        inference.no_such_name  # noqa: B018
