"""`train` and `run_farm` take one config object; old keyword calls map onto it in one place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import farm
from farm.errors import FarmInputError
from farm.run.config import FarmConfig
from farm.run.runner import farm_config, run_farm
from farm.store.sim_store import SimStore
from inference.defaults import TrainConfig
from inference.training.api import LEGACY_KEYWORDS, config_with_legacy, train


def test_legacy_train_keywords_map_onto_the_config() -> None:
    old = {"workers": 2, "epochs": 7, "learning_rate": 5e-4, "seed": 3, "quiet": True}
    assert config_with_legacy(None, old) == TrainConfig(
        num_workers=2, epochs=7, learning_rate=5e-4, seed=3, progress=False
    )
    assert config_with_legacy(None, {}) == TrainConfig()
    base = TrainConfig(epochs=50, patience=9)
    assert config_with_legacy(base, {"epochs": 4}) == TrainConfig(epochs=4, patience=9)
    assert set(LEGACY_KEYWORDS.values()) <= {f for f in TrainConfig.__dataclass_fields__}


def test_train_refuses_unknown_keywords_before_training(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        train("npe", [str(tmp_path / "none.zarr")], str(tmp_path / "o"), epoch=3)
    with pytest.raises(ValueError, match="epochs=0 outside"):
        train("npe", [str(tmp_path / "none.zarr")], str(tmp_path / "o"), TrainConfig(epochs=0))


def test_farm_config_validates_and_fills_defaults() -> None:
    assert farm.FarmConfig is FarmConfig
    cfg, default = FarmConfig("s.zarr", 10, prior=None, protocol=None), FarmConfig("s.zarr", 10)
    assert cfg.prior.to_dict() == default.prior.to_dict() and cfg.protocol == default.protocol
    with pytest.raises(FarmInputError, match="theta has 4 rows but num_sims=5"):
        FarmConfig("s.zarr", 5, theta=np.zeros((4, 7), np.float32))
    with pytest.raises(FarmInputError, match="max_in_flight_per_chip=0"):
        FarmConfig("s.zarr", 5, max_in_flight_per_chip=0)
    with pytest.raises(TypeError):
        farm_config("s.zarr", 5, num_chip=2)


def test_run_farm_config_and_legacy_keywords_write_the_same_store(tmp_path: Path) -> None:
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    run_farm(FarmConfig(a, 60, seed=5, chunk_size=30, in_process=True))
    run_farm(b, 60, seed=5, chunk_size=30, in_process=True)
    sa, sb = SimStore.open(a), SimStore.open(b)
    for name in ("theta", "trace", "spike_count", "features"):
        assert np.array_equal(sa.group[name][:], sb.group[name][:]), name
