"""Ray Train: 2 workers learn like 1, a killed run resumes from a checkpoint, bad input exits 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from deploy.cli import main
from farm.run.runner import run_farm
from inference.training.loop import TrainConfig, TrainingError, run_training


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ray") / "s.zarr")
    run_farm(path, num_sims=6000, seed=31, chunk_size=500, in_process=True)
    return path


def test_two_workers_give_the_same_loss_curve_shape_as_one(store, tmp_path, ray_session) -> None:
    curves = {}
    for workers in (1, 2):
        # same global batch (256 = 2 x 128), so both take the same number of steps per epoch
        cfg = TrainConfig(
            task="classifier",
            stores=(store,),
            out=str(tmp_path / f"w{workers}"),
            num_workers=workers,
            epochs=4,
            patience=4,
            batch_size=256 // workers,
            cpus_per_worker=1,  # one torch thread each: the other xdist worker keeps a core busy
            progress=False,
        )
        curves[workers] = np.array([h["val_loss"] for h in run_training(cfg).state["history"]])
    for c in curves.values():
        assert len(c) == 4 and c[-1] < 0.8 * c[0]  # both learn
    assert np.all(np.diff(curves[1]) < 0.02) and np.all(
        np.diff(curves[2]) < 0.02
    )  # both (nearly) monotone
    np.testing.assert_allclose(curves[2], curves[1], rtol=0.25)  # and they track each other
    # no run leaves its placement group behind though Ray Train's own cleaner is off
    # (inference/training/lean_trainer.py)
    import ray.util

    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def test_a_killed_training_resumes_from_its_last_checkpoint(store, tmp_path, ray_session) -> None:
    """SIGKILL the `farm train` driver mid-run, then run the same training again: it resumes."""
    out = tmp_path / "npe"
    args = [
        "npe",
        "--store",
        store,
        "--out",
        str(out),
        "--epochs",
        "3",
        "--patience",
        "3",
        "--batch-size",
        "64",
        "--cpus-per-worker",
        "1",
    ]
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "train", *args, "--address", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    snapshot = out / "checkpoints" / "run" / "checkpoint_manager_snapshot.json"

    def registered() -> bool:  # Ray Train has recorded a checkpoint (not just written its files)
        try:
            return "checkpoint_" in snapshot.read_text()
        except OSError:
            return False

    try:
        # wait on the run's own progress: while it lives it is working (a loaded machine is slow,
        # not stuck); the cap only guards against a hang
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline and not registered():
            assert proc.poll() is None, "training exited before its first checkpoint"
            time.sleep(0.2)
        assert registered(), "no checkpoint within 30 min"
        time.sleep(1.0)  # into the next epoch
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "manifest.json").exists()
    cfg = TrainConfig(
        task="npe",
        stores=(store,),
        out=str(out),
        epochs=3,
        patience=3,
        batch_size=64,
        cpus_per_worker=1,
        progress=False,
    )
    state = run_training(cfg).state
    resumed = state["resumed_at"]
    assert (
        len(resumed) == 1 and 1 <= resumed[0] < 3
    )  # picked up after a finished epoch, not from scratch
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]  # no epoch lost or repeated
    # the learning-rate schedule resumed too: it counted the epochs before the kill, not only those
    # after
    assert state["scheduler"]["last_epoch"] == 3


def test_a_run_of_rounds_resumed_between_them_ends_bit_identical(
    store, tmp_path, ray_session
) -> None:
    """Rounds of 1000 rows (5 per epoch here): stopped after one epoch and resumed, or not."""

    def run(out: str, epochs: int) -> dict:
        cfg = TrainConfig(
            task="npe",
            stores=(store,),
            out=str(tmp_path / out),
            epochs=epochs,
            patience=50,
            batch_size=64,
            round_samples=1000,
            cpus_per_worker=1,
            progress=False,
        )
        return run_training(cfg).state

    whole = run("whole", 2)
    run("split", 1)
    resumed = run("split", 2)
    n = len(whole["history"])
    assert n % 2 == 0 and n >= 8  # ~4,800 training rows: 5 rounds per epoch
    assert resumed["resumed_at"] == [n // 2]
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, n + 1))
    assert [h["val_loss"] for h in resumed["history"]] == [h["val_loss"] for h in whole["history"]]
    for k, v in whole["best_model"].items():
        assert torch.equal(v, resumed["best_model"][k]), k


def test_the_batch_follows_the_data_and_small_runs_keep_theirs() -> None:
    from dataclasses import replace

    from inference.training.schedule import Rounds, auto_batch_size, resolve

    assert [auto_batch_size(n, 1) for n in (16_000, 130_000, 160_000, 799_000, 10**8)] == [
        256,
        256,
        512,
        2048,
        2048,
    ]
    assert auto_batch_size(800_000, 2) == 1024  # per worker: the global batch stays 2048
    small = resolve(TrainConfig(), 16_000)
    assert (small.batch_size, small.learning_rate, small.warmup_from) == (256, 1e-3, 0.0)
    assert small.identity() == replace(TrainConfig(), batch_size=256).identity()
    big = resolve(TrainConfig(), 800_000)
    assert big.batch_size == 2048 and big.learning_rate == pytest.approx(1e-3 * 8**0.5)
    r = Rounds.plan(big, 800_000, 1, num_chunks=250)
    assert (r.parts, r.steps, r.warmup_steps) == (16, 24, 24)
    assert r.lr_at(big, 0) == pytest.approx(1e-3 + (big.learning_rate - 1e-3) / 24)
    assert r.lr_at(big, 23) == pytest.approx(big.learning_rate) and r.lr_at(big, 24) is None
    assert resolve(TrainConfig(batch_size=100), 800_000).batch_size == 100  # given: kept
    assert Rounds.plan(small, 16_000, 1, 20).parts == 1  # one round per epoch, as before
    assert Rounds.plan(big, 800_000, 2, 10).parts == 5  # a chunk per worker and round at least
    # Resumed on one worker instead of two (a node lost): the run's own batch, not 2048 again.
    import json

    from inference.training.loop import keep_resolved_batch

    two = resolve(TrainConfig(num_workers=2), 800_000)
    have = json.loads(json.dumps(two.identity()))
    one = TrainConfig(num_workers=1)
    kept = keep_resolved_batch(one, resolve(one, 800_000), have)
    assert kept.identity() == two.identity() and kept.batch_size == 1024
    other_lr = replace(one, learning_rate=3e-4)
    assert keep_resolved_batch(other_lr, resolve(other_lr, 800_000), have).batch_size == 2048


def test_resuming_with_other_settings_is_refused(store, tmp_path) -> None:
    import json

    first = TrainConfig(task="classifier", stores=(store,), out=str(tmp_path), epochs=1)
    (tmp_path / "train_config.json").write_text(
        json.dumps(first.identity())
    )  # what a started run leaves
    with pytest.raises(TrainingError, match="learning_rate"):
        run_training(
            TrainConfig(
                task="classifier", stores=(store,), out=str(tmp_path), epochs=1, learning_rate=0.01
            )
        )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["npe", "--store", "STORE", "--features", "wavelets"], "wavelets"),
        (["npe", "--store", "/nonexistent.zarr"], "/nonexistent.zarr"),
        (["classifier", "--store", "STORE", "--workers", "0"], "--workers"),
        (["npe", "--store", "STORE", "--prior", "/tmp"], "restricted_prior.json"),
    ],
)
def test_bad_train_input_exits_2_with_one_line(store, tmp_path, capsys, args, needle) -> None:
    args = [a.replace("STORE", store) for a in args]
    code = main(
        ["train", *args, "--out", str(tmp_path / "o")]
    )  # the console entry: library errors become exit codes there
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_a_gpu_worker_gives_a_cpu_loadable_model(store, tmp_path, ray_session) -> None:
    cfg = TrainConfig(
        task="classifier",
        stores=(store,),
        out=str(tmp_path),
        epochs=2,
        gpus_per_worker=1,
        progress=False,
    )
    outcome = run_training(cfg)
    assert all(v.device.type == "cpu" for v in outcome.state["best_model"].values())
    assert outcome.best_model()(torch.zeros(1, 7) + 300.0).shape == (1,)
