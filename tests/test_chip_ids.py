"""`farm simulate --chip-ids`: circuits drawn only from the chips asked for, recorded, not mixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from deploy.cli import main as farm_main
from farm.defaults import NEURONS_PER_CHIP, NUM_EMULATED_CHIPS, ChipModel
from farm.errors import FarmInputError
from farm.kernel import rng
from farm.run.runner import run_farm
from farm.simulate import placement, simulate_theta
from farm.store.sim_store import StoreMismatch
from farm.substrates.circuits import format_chip_ids, parse_chip_ids


def _simulate(out: Path, *extra: str, n: int = 60) -> int:
    return farm_main(
        [
            "simulate",
            "--n",
            str(n),
            "--chunk",
            "30",
            "--out",
            str(out),
            "--seed",
            "3",
            "--in-process",
            "-q",
            "--json",
            *extra,
        ]
    )


def test_parse_ranges_lists_and_their_inverse() -> None:
    assert parse_chip_ids("100-103") == (100, 101, 102, 103)
    assert parse_chip_ids("9, 1,5,1") == (1, 5, 9)
    assert parse_chip_ids("0-3,9") == (0, 1, 2, 3, 9)
    assert format_chip_ids(parse_chip_ids("0-3,9,5")) == "0-3,5,9"


@pytest.mark.parametrize("text", ["5-2", "x", "", "1.5", f"0-{NUM_EMULATED_CHIPS}", "-1", "3-"])
def test_bad_chip_ids_are_typed_errors(text: str) -> None:
    with pytest.raises(FarmInputError):
        parse_chip_ids(text)


def test_default_pool_places_exactly_as_before_chip_ids_existed() -> None:
    """Old stores must stay bit-identical: the pre-chip-ids formula, written out here."""
    model = ChipModel()
    idx = np.arange(5000)
    u = rng.uniforms(rng.stream_keys(7, rng.as_indices(idx), rng.STREAM_PLACEMENT), 0, 2)
    old_chip = np.minimum((u[:, 0] * model.num_chips).astype(np.int64), model.num_chips - 1).astype(
        np.int16
    )
    old_neuron = np.minimum(
        (u[:, 1] * NEURONS_PER_CHIP).astype(np.int64), NEURONS_PER_CHIP - 1
    ).astype(np.int16)
    chip, neuron = placement(7, idx, model)
    np.testing.assert_array_equal(chip, old_chip)
    np.testing.assert_array_equal(neuron, old_neuron)
    assert "chip_ids" not in model.to_dict()  # default stores keep their attributes (and identity)


def test_explicit_pool_equal_to_the_default_gives_the_same_rows() -> None:
    theta = np.full((20, 7), 400.0)
    a = simulate_theta(theta, seed=1)
    b = simulate_theta(theta, seed=1, chip_model=ChipModel(chip_ids=tuple(range(8))))
    np.testing.assert_array_equal(a.trace, b.trace)
    np.testing.assert_array_equal(a.chip, b.chip)


def test_unseen_chips_differ_from_the_pool() -> None:
    """A chip outside the training pool has its own mismatch: same theta, other traces."""
    theta = np.full((50, 7), 400.0)
    pool = simulate_theta(theta, seed=1)
    new = simulate_theta(theta, seed=1, chip_model=ChipModel(chip_ids=(100, 101, 102, 103)))
    assert set(np.unique(new.chip)) <= {100, 101, 102, 103}
    assert not np.array_equal(pool.trace, new.trace)


def test_cli_store_records_its_chips_and_draws_only_from_them(tmp_path: Path) -> None:
    assert _simulate(tmp_path / "new.zarr", "--chip-ids", "100-103") == 0
    assert _simulate(tmp_path / "new2.zarr", "--chip-ids", "103,100-102") == 0
    assert _simulate(tmp_path / "default.zarr") == 0
    new, new2, default = (
        xr.open_zarr(tmp_path / f, consolidated=None)
        for f in ("new.zarr", "new2.zarr", "default.zarr")
    )
    assert (
        set(np.unique(new["chip"].values)) <= {100, 101, 102, 103}
        and len(np.unique(new["chip"].values)) > 1
    )
    assert new.attrs["chip_model"]["chip_ids"] == [100, 101, 102, 103]
    assert "chip_ids" not in default.attrs["chip_model"]
    assert set(np.unique(default["chip"].values)) <= set(range(8))
    for name in (
        "trace",
        "chip",
        "neuron",
        "theta",
    ):  # the same chip set written two ways: the same store
        np.testing.assert_array_equal(new[name].values, new2[name].values)


def test_resume_with_other_chips_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.zarr"
    assert _simulate(out, "--chip-ids", "100-103", n=30) == 0
    capsys.readouterr()
    assert _simulate(out, "--chip-ids", "4-5", n=60) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4-5" in err[0] and "100-103" in err[0]
    assert (
        _simulate(out, n=60) == 2
    )  # omitting --chip-ids means the default pool: also another chip set
    assert _simulate(out, "--chip-ids", "100-103", n=60) == 0  # the same chips resume
    with pytest.raises(
        StoreMismatch
    ):  # the library refuses too (chip ids are part of the store identity)
        run_farm(str(out), 90, seed=3, in_process=True, chip_model=ChipModel(chip_ids=(1, 2)))


@pytest.mark.parametrize("text", ["5-2", "x", "100-2000"])
def test_cli_bad_chip_ids_exit_2_with_one_line(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _simulate(tmp_path / "bad.zarr", "--chip-ids", text) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--chip-ids" in err[0] and text in err[0]
    assert not (tmp_path / "bad.zarr").exists()


def test_evaluate_names_the_overlap_of_test_and_training_chips() -> None:
    from inference.evaluation.local import chip_overlap

    new = {"chip_model": ChipModel(chip_ids=(100, 101)).to_dict()}
    default = {"chip_model": ChipModel().to_dict()}
    assert chip_overlap({"training_chip_ids": list(range(8))}, new)["overlap"] == "none"
    assert chip_overlap({"training_chip_ids": list(range(8))}, default)["overlap"] == "full"
    assert (
        chip_overlap({"chip_model": ChipModel(chip_ids=(1, 100)).to_dict()}, new)["overlap"]
        == "partial"
    )
    old = chip_overlap(
        {"chip_model": ChipModel().to_dict()}, new
    )  # artifacts that record no training chips
    assert old["overlap"] == "unknown" and old["training_chip_ids"] is None


def test_predictive_checks_simulate_on_the_chips_the_observations_came_from(tmp_path: Path) -> None:
    """A leave-chips-out store's predictive traces come from its chips, not the training pool."""
    from inference.evaluation.evaluate import EvalConfig, evaluate, load_report
    from tests.test_evaluate import BoxPosterior

    cfg = EvalConfig(
        num_obs=40, num_samples=50, num_ppc=3, num_ppc_samples=4, num_ppc_plot=1, c2st=False, seed=3
    )
    for name, extra, want in (
        ("new.zarr", ("--chip-ids", "100-103"), [100, 101, 102, 103]),
        ("pool.zarr", (), list(range(8))),
    ):
        assert _simulate(tmp_path / name, *extra, n=200) == 0
        evaluate(BoxPosterior(1.0), str(tmp_path / name), tmp_path / f"report-{name}", cfg)
        assert load_report(tmp_path / f"report-{name}")["ppc"]["chip_ids"] == want
