"""Zarr -> batches: 3-way index split, bad-trace exclusion, train-only z-scoring, worker shards."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from deploy.cli import main
from farm.defaults import PriorBox
from farm.prior import BoxPrior
from farm.run.runner import run_farm
from inference.data.datasets import ChunkStream, PriorMismatch, StoreSet, plan_data
from inference.data.heldout import split_rows
from inference.data.quality import quality_flags
from inference.data.splits import is_validation, split_of
from inference.nets.transforms import theta_to_unbounded_np

BAD_ROWS = {"flat": 3, "saturated": 17, "nan": 1500}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """2500 box-prior samples in chunks of 500, with one flat, one saturated and one NaN row."""
    path = str(tmp_path_factory.mktemp("data") / "s.zarr")
    run_farm(path, num_sims=2500, seed=3, chunk_size=500, in_process=True)
    g = zarr.open_group(path, mode="r+")
    tr = np.asarray(g["trace"][:])
    tr[BAD_ROWS["flat"]] = 500
    tr[BAD_ROWS["saturated"], :200] = 0
    g["trace"][:] = tr
    f = np.asarray(g["features"][:])
    f[BAD_ROWS["nan"], 2] = np.nan
    g["features"][:] = f
    return path


def test_validation_split_is_a_function_of_the_index_alone() -> None:
    idx = np.arange(100_000)
    val = is_validation(idx, 0.1)
    assert 0.09 < val.mean() < 0.11
    # any subset / order of indices gets the same answer
    perm = np.random.default_rng(0).permutation(idx)[:777]
    np.testing.assert_array_equal(is_validation(perm, 0.1), val[perm])


def test_three_splits_are_disjoint_with_the_documented_fractions() -> None:
    idx = np.arange(100_000)
    split = split_of(idx, 0.1, 0.1)
    # 100k Bernoulli draws: the share's std is <= 0.0016, so +-0.01 is > 6 sigma
    assert (
        abs((split == 0).mean() - 0.8) < 0.01
        and abs((split == 1).mean() - 0.1) < 0.01
        and abs((split == 2).mean() - 0.1) < 0.01
    )
    np.testing.assert_array_equal(
        split == 1, is_validation(idx, 0.1)
    )  # adding a test split keeps the validation rows
    perm = np.random.default_rng(1).permutation(idx)[:999]
    np.testing.assert_array_equal(split_of(perm, 0.1, 0.1), split[perm])


def test_quality_flags_name_each_problem() -> None:
    rng = np.random.default_rng(0)
    trace = rng.integers(300, 700, size=(4, 1000)).astype(np.int16)
    trace[1] = 512
    trace[2, :100] = 1023
    trace[3, 5] = -1  # the store's fill value: never written
    theta = np.ones((4, 7))
    feats = np.ones((4, 11))
    flags = quality_flags(trace, theta, feats, 1023)
    assert flags["flat"].tolist() == [False, True, False, False]
    assert flags["saturated"].tolist() == [False, False, True, False]
    assert flags["nan"].tolist() == [False, False, False, True]


def test_plan_excludes_bad_rows_with_counts_and_fits_on_train_only(store: str) -> None:
    stores = StoreSet([store])
    plan = plan_data(stores, val_fraction=0.2, test_fraction=0.1)
    g = zarr.open_group(store, mode="r")
    flags = quality_flags(
        np.asarray(g["trace"][:]), np.asarray(g["theta"][:]), np.asarray(g["features"][:]), 1023
    )
    assert plan.flag_counts == {k: int(v.sum()) for k, v in flags.items()}
    assert all(
        plan.flag_counts[k] >= 1 for k in BAD_ROWS
    )  # the injected ones (the emulator adds a few saturated)
    excluded = sorted(sum(plan.excluded.values(), []))
    assert excluded == np.flatnonzero(flags["nan"] | flags["saturated"] | flags["flat"]).tolist()
    assert set(BAD_ROWS.values()) <= set(excluded)
    idx = np.arange(2500)
    good = ~np.isin(idx, excluded)
    split = split_of(idx, 0.2, 0.1)
    assert (plan.num_train, plan.num_val, plan.num_test) == tuple(
        int((good & (split == k)).sum()) for k in range(3)
    )
    assert plan.splits()["test_fraction"] == 0.1 and plan.splits()["rows"]["test"] == plan.num_test
    # standardisation equals numpy on the good training rows (neither validation nor test rows)
    train = good & (split == 0)
    feats = np.asarray(g["features"][:], dtype=np.float64)[train]
    np.testing.assert_allclose(plan.feature_mean, feats.mean(0), rtol=1e-6)
    np.testing.assert_allclose(plan.feature_std, feats.std(0), rtol=1e-4)
    low, high = np.asarray(stores.priors[0]["low"]), np.asarray(stores.priors[0]["high"])
    z = theta_to_unbounded_np(np.asarray(g["theta"][:])[train], low, high)
    np.testing.assert_allclose(plan.theta_mean, z.mean(0), rtol=1e-6, atol=1e-9)


def test_streams_cover_each_good_row_once_split_and_sharded(store: str) -> None:
    stores = StoreSet([store])
    plan = plan_data(stores, val_fraction=0.2, test_fraction=0.1)
    seen: dict[str, list[int]] = {}
    for split in ("train", "val", "test"):
        for rank in range(2):
            s = ChunkStream(stores, plan, split, ("theta", "features"), 64, rank=rank, world_size=2)
            rows = np.concatenate([b["index"] for b in s.batches(epoch=1)])
            seen[f"{split}{rank}"] = rows.tolist()
            assert len(rows) == len(set(rows.tolist()))
    train = seen["train0"] + seen["train1"]
    val = seen["val0"] + seen["val1"]
    test = seen["test0"] + seen["test1"]
    assert not set(seen["train0"]) & set(seen["train1"])  # workers never read the same rows
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    excluded = set(sum(plan.excluded.values(), []))
    assert sorted(train + val + test) == sorted(set(range(2500)) - excluded)
    assert all(split_of(np.array(val), 0.2, 0.1) == 1) and all(
        split_of(np.array(test), 0.2, 0.1) == 2
    )
    # the rows a calibration gets as "held out" are exactly the test stream's
    rows = split_rows([store], "test", ("theta", "features"), val_fraction=0.2, test_fraction=0.1)
    assert sorted(rows["index"].tolist()) == sorted(test) and rows["theta"].shape == (len(test), 7)
    g = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(rows["features"], np.asarray(g["features"][:])[rows["index"]])


def test_steady_gives_every_worker_the_same_step_count(store: str) -> None:
    stores = StoreSet([store])
    plan = plan_data(stores, val_fraction=0.2)
    steps = plan.num_train // (2 * 100)
    for rank in range(2):
        batches = list(
            ChunkStream(stores, plan, "train", ("theta",), 100, rank=rank, world_size=2).steady(
                epoch=0, steps=steps
            )
        )
        assert len(batches) == steps and all(len(b["theta"]) == 100 for b in batches)


def test_the_rounds_of_an_epoch_cover_its_rows_once_and_head_is_the_first_rows(store: str) -> None:
    """An epoch split into parts (rounds of a large store) reads each training row once."""
    stores = StoreSet([store])
    plan = plan_data(stores, val_fraction=0.2)
    whole = ChunkStream(stores, plan, "train", ("theta",), 64)
    rows = [
        np.concatenate([b["index"] for b in whole.batches(epoch=3, part=p, parts=3)])
        for p in range(3)
    ]
    assert all(len(r) for r in rows) and not set(rows[0]) & set(rows[1])
    np.testing.assert_array_equal(
        np.sort(np.concatenate(rows)),
        np.sort(np.concatenate([b["index"] for b in whole.batches(epoch=3)])),
    )
    # one part is one pass: shuffled rows as with parts=1 (the default keeps its streams)
    one = [b["index"] for b in whole.batches(epoch=3)]
    assert [b.tolist() for b in one] == [b["index"].tolist() for b in whole.batches(3, parts=1)]
    val = ChunkStream(stores, plan, "val", ("theta",), 64)
    every = np.concatenate([b["index"] for b in val.batches(0, shuffle=False)])
    head = val.head(100)
    assert [len(b["theta"]) for b in head][:-1] == [64] * (len(head) - 1)
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in head]), every[:100])
    assert sum(len(b["theta"]) for b in val.head(0)) == len(every)  # 0 = all of them


def test_mismatched_stores_are_refused(store: str, tmp_path) -> None:
    from farm.defaults import Protocol
    from farm.store.sim_store import StoreMismatch

    other = str(tmp_path / "o.zarr")
    run_farm(
        other,
        num_sims=100,
        seed=1,
        chunk_size=100,
        in_process=True,
        protocol=Protocol(i_stim_na=80.0),
    )
    with pytest.raises(StoreMismatch, match="protocol"):
        StoreSet([store, other])


def test_stores_from_different_priors_are_refused_naming_both(store: str, tmp_path, capsys) -> None:
    other = str(tmp_path / "narrow.zarr")
    box = PriorBox()
    narrow = PriorBox(
        low=box.low,
        high=tuple(lo + (hi - lo) / 2 for lo, hi in zip(box.low, box.high, strict=True)),
    )
    run_farm(other, num_sims=100, seed=1, chunk_size=100, in_process=True, prior=BoxPrior(narrow))
    with pytest.raises(PriorMismatch, match="from prior box .* from prior box") as e:
        StoreSet([store, other])
    assert "\n" not in str(e.value) and other in str(e.value) and store in str(e.value)
    for command in (
        "npe",
        "classifier",
    ):  # and `farm train` exits 2 with that line, before any training
        code = main(
            ["train", command, "--store", store, "--store", other, "--out", str(tmp_path / command)]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and "from prior box" in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / command / "checkpoints").exists()
