"""Multi-node Ray and the faults clusters have, with real `ray start` processes on loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from farm.run.runner import run_farm
from farm.store.sim_store import SimStore
from tests.cluster import LoopbackCluster, descendants, node_id_of, pids_matching

FARM = [sys.executable, "-m", "deploy.cli"]
N, CHUNK, SEED = 4000, 200, 5
ARRAYS = ("theta", "trace", "spike_count", "features", "chip", "neuron", "seed")


@pytest.fixture(scope="module")
def cluster():
    c = LoopbackCluster()
    try:
        c.start_head(num_cpus=1)
        c.add_worker(num_cpus=1)
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mnref") / "ref.zarr"
    run_farm(str(out), num_sims=N, seed=SEED, chunk_size=CHUNK, in_process=True)
    return out


def farm_cmd(
    out: Path, cluster: LoopbackCluster, *extra: str, n: int = N, chunk: int = CHUNK
) -> list[str]:
    return [
        *FARM,
        "simulate",
        "--n",
        str(n),
        "--chunk",
        str(chunk),
        "--seed",
        str(SEED),
        "--out",
        str(out),
        "--address",
        cluster.address,
        "--quiet",
        "--json",
        *extra,
    ]


def run_json(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> dict:
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def assert_same(a: Path, b: Path) -> None:
    da, db = xr.open_zarr(str(a)), xr.open_zarr(str(b))
    for name in ARRAYS:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
    assert SimStore.open(b).done_mask().all()


def chunks_done(out: Path) -> int:
    try:
        return int(SimStore.open(out).done_mask().sum())
    except Exception:
        return -1


def wait_for_chunks(out: Path, at_least: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait for observed progress (flagged chunks); the deadline only catches a hung run."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if chunks_done(out) >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"farm exited early with {proc.returncode}: "
                f"{proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} chunks after {timeout} s")


def test_simulate_spans_nodes_and_matches_single_node(
    cluster: LoopbackCluster, reference: Path, tmp_path: Path
) -> None:
    # A relative --out, run from a directory that is not the nodes' working directory (they run
    # from pytest's): actors must get the absolute path, or they would miss the store.
    # Slow chunks (sleep only, data unchanged: 20 chunks of 1 s) so the head's actor cannot finish
    # the run alone before the worker node's actor is up; on a loaded machine that start can take
    # longer than the run.
    env = {**cluster.env, "FARM_CHUNK_DELAY_S": "1.0"}
    summary = run_json(farm_cmd(Path("mn.zarr"), cluster), env, cwd=tmp_path)
    assert summary["complete"] and summary["num_nodes"] >= 2, summary["nodes"]
    assert_same(reference, tmp_path / "mn.zarr")


def test_actor_killed_mid_chunk_is_rerun_elsewhere(
    cluster: LoopbackCluster, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "actorkill.zarr"
    env = {**cluster.env, "FARM_CHUNK_DELAY_S": "0.3"}
    proc = subprocess.Popen(
        farm_cmd(out, cluster), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_chunks(out, 2, proc)
    victims = pids_matching(b"ray::ChipActor")
    assert victims, "no chip actor process found"
    os.kill(victims[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["chunks_retried"] >= 1 and summary["complete"]
    assert_same(reference, out)
    print(
        f"RELIABILITY actor SIGKILL: {summary['chunks_retried']} chunk(s) re-run, store identical"
    )


def test_driver_sigkill_at_random_points_resumes_exactly(
    cluster: LoopbackCluster, tmp_path: Path
) -> None:
    n, chunk = 6000, 50
    reference = tmp_path / "ref.zarr"
    run_farm(str(reference), num_sims=n, seed=SEED, chunk_size=chunk, in_process=True)
    out = tmp_path / "driverkill.zarr"
    env = {**cluster.env, "FARM_CHUNK_DELAY_S": "0.4"}
    rng = random.Random(20261124)
    trials, progress = 4, []
    for _ in range(trials):
        before = max(chunks_done(out), 0)
        proc = subprocess.Popen(
            farm_cmd(out, cluster, n=n, chunk=chunk),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # Kill at a random point of observed progress, not after a fixed delay: start-up takes
        # 2 s on an idle machine and far longer on a loaded one. The extra sleep lands the kill
        # anywhere inside the next chunk (each takes at least FARM_CHUNK_DELAY_S).
        wait_for_chunks(out, before + rng.randint(1, 4), proc)
        time.sleep(rng.uniform(0.0, 0.4))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        progress.append(chunks_done(out))
        # Each kill landed mid-run: after this run flagged something, before the store was full.
        assert before < progress[-1] < n // chunk, (
            f"kills should land mid-run: chunks done after each kill {progress}"
        )
    assert progress == sorted(progress), f"flagged chunks never disappear: {progress}"
    summary = run_json(farm_cmd(out, cluster, n=n, chunk=chunk), cluster.env)
    assert summary["complete"] and summary["skipped"] == chunk * progress[-1]
    assert_same(
        reference, out
    )  # zero lost, zero duplicated: every row equals the uninterrupted run
    print(
        f"RELIABILITY driver SIGKILL: {trials} trials, chunks flagged after each kill {progress}, "
        f"resumed {summary['simulated_now']} samples, 0 lost, 0 duplicated"
    )


def test_worker_node_removed_mid_run(
    cluster: LoopbackCluster, reference: Path, tmp_path: Path
) -> None:
    extra = cluster.add_worker(num_cpus=1)
    out = tmp_path / "nodeloss.zarr"
    env = {**cluster.env, "FARM_CHUNK_DELAY_S": "0.5"}
    lost = node_id_of(extra)
    proc = subprocess.Popen(
        farm_cmd(out, cluster, "--chips", "3"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Remove the node only once its actor is up and chunks are flowing, so the loss hits
    # chunks in flight there (observed, not timed).
    deadline = time.monotonic() + 300
    while not any(b"ray::ChipActor" in _cmdline(pid) for pid in descendants(extra.pid)):
        assert proc.poll() is None and time.monotonic() < deadline, (
            "no chip actor started on the extra node"
        )
        time.sleep(0.1)
    wait_for_chunks(out, 3, proc)
    cluster.kill_node(extra)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["complete"] and lost in summary["nodes"], summary
    # The fault landed: chunks of the lost node were re-run, and on nodes that survived.
    assert (
        summary["chunks_retried"] >= 1
        and summary["retried_on"]
        and lost not in summary["retried_on"]
    ), summary
    assert_same(reference, out)
    print(
        f"RELIABILITY node loss: {summary['chunks_retried']} chunk(s) re-run "
        f"on {summary['num_nodes']} nodes, store identical"
    )


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


@pytest.fixture()
def tiny_disk(mount_tmpfs) -> Path:
    return mount_tmpfs("3m")


def test_disk_full_gives_clear_error_keeps_chunks_and_resumes(
    cluster: LoopbackCluster, reference: Path, tiny_disk: Path
) -> None:
    out = tiny_disk / "full.zarr"
    res = subprocess.run(
        farm_cmd(out, cluster), env=cluster.env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 1, res.stderr[-2000:]
    err = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "No space left on device" in err[0] and "resume" in err[0], res.stderr[
        -2000:
    ]
    assert "Traceback" not in res.stderr
    store = SimStore.open(out)
    done = np.flatnonzero(store.done_mask())
    assert 0 < done.size < N // CHUNK
    ref = xr.open_zarr(str(reference))
    got = xr.open_zarr(str(out))
    for c in done:  # every flagged chunk is intact
        sl = slice(c * CHUNK, (c + 1) * CHUNK)
        np.testing.assert_array_equal(got.trace[sl].values, ref.trace[sl].values)
    print(
        f"RELIABILITY disk full: {done.size} of {N // CHUNK} chunks intact after ENOSPC; "
        "resume completed"
    )
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    assert run_json(farm_cmd(out, cluster), cluster.env)["complete"]
    assert_same(reference, out)


@pytest.fixture(scope="module")
def train_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("mntrain") / "train.zarr"
    run_farm(str(store), num_sims=3000, seed=8, chunk_size=500, in_process=True)
    return store


def train_cmd(
    store: Path, out: Path, cluster: LoopbackCluster, *extra: str, workers: int = 2
) -> list[str]:
    """`farm train npe` with 2 workers (one per 1-CPU node) on the loopback cluster."""
    return [
        *FARM,
        "train",
        "npe",
        "--store",
        str(store),
        "--features",
        "handcrafted",
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--batch-size",
        "128",
        "--address",
        cluster.address,
        "--json",
        *extra,
    ]


def train_workers_on(node: subprocess.Popen) -> int:
    """Ray Train worker processes of one node (its `ray start` process tree)."""
    return sum(b"ray::RayTrainWorker" in _cmdline(pid) for pid in descendants(node.pid))


# A node's start, a training's start and its restart each take minutes on a loaded 2-core machine;
# the waits inside these tests follow observed progress, so only a hang meets this cap.
@pytest.mark.timeout(1200)
def test_training_across_nodes_resumes_after_losing_a_node(
    cluster: LoopbackCluster, train_store: Path, tmp_path: Path
) -> None:
    """Workers on both nodes; one node is killed after a checkpoint; a replacement node joins.

    Ray Train (``FailureConfig(max_failures=...)`` in ``run_training``) restarts the worker group
    by itself once it can place it again, from the last checkpoint: one run, its epochs
    contiguous, no command re-run.
    """
    epochs = 8
    out = tmp_path / "npe"
    head, lost = cluster.nodes[0], cluster.nodes[1]
    log = tmp_path / "train.log"
    with log.open("w") as sink:  # a file, not a pipe: the lost workers' tracebacks are long
        proc = subprocess.Popen(
            train_cmd(train_store, out, cluster, "--epochs", str(epochs), "--patience", "50"),
            env=cluster.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    snapshot = out / "checkpoints" / "run" / "checkpoint_manager_snapshot.json"

    def running(cond, what: str) -> None:  # wait on the run's progress; the cap catches a hang
        deadline = time.monotonic() + 900
        while not cond():
            assert proc.poll() is None, f"training exited before {what}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} in 900 s"
            time.sleep(0.1)

    try:
        running(lambda: "checkpoint_" in _text(snapshot), "its first checkpoint")
        # one CPU per node and one per worker: a worker on each node
        assert (train_workers_on(head), train_workers_on(lost)) == (1, 1)
        cluster.kill_node(lost)
        replacement = cluster.add_worker(num_cpus=1)
        running(lambda: train_workers_on(replacement) == 1, "a worker on the replacement node")
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads([ln for ln in log.read_text().splitlines() if ln.startswith("{")][-1])
    resumed = summary["resumed_at_epochs"]
    assert len(resumed) == 1 and 1 <= resumed[0] < epochs, summary  # from a checkpoint, once
    manifest = json.loads((out / "manifest.json").read_text())
    assert [h["epoch"] for h in manifest["history"]] == list(range(1, epochs + 1))

    from inference import load_posterior

    trace = xr.open_zarr(str(train_store)).trace[0].values
    draws = load_posterior(str(out)).sample(50, trace=trace, seed=1)
    assert draws.shape == (50, 7) and np.isfinite(draws).all()
    print(
        f"RELIABILITY training node loss: resumed from the checkpoint of epoch {resumed[0]} "
        f"on a replacement node, epochs 1-{epochs} contiguous"
    )


@pytest.mark.timeout(1200)
def test_a_lost_node_without_replacement_fails_in_one_line_and_resumes_on_fewer_workers(
    cluster: LoopbackCluster, train_store: Path, tmp_path: Path
) -> None:
    """No node replaces the lost one: the run says so in one line, and a rerun resumes it."""
    epochs = 6
    out = tmp_path / "npe"
    lost = cluster.nodes[1]
    lost_id = node_id_of(lost)
    # Ray Train waits 10 tries of RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S for the workers'
    # resources: 5 s instead of 60 s each here
    env = {**cluster.env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "5"}
    args = ("--epochs", str(epochs), "--patience", "50", "--quiet")
    err = tmp_path / "stderr.txt"
    try:
        with err.open("w") as sink:
            proc = subprocess.Popen(
                train_cmd(train_store, out, cluster, *args),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                text=True,
            )
        snapshot = out / "checkpoints" / "run" / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 900
        while "checkpoint_" not in _text(snapshot):
            assert proc.poll() is None, f"training exited early: {err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in 900 s"
            time.sleep(0.1)
        cluster.kill_node(lost)
        assert proc.wait(timeout=900) == 1, err.read_text()[-3000:]
        lines = [ln for ln in err.read_text().splitlines() if ln.startswith("Error:")]
        assert len(lines) == 1 and f"lost node {lost_id}" in lines[0], err.read_text()[-3000:]
        assert "run the same command again to resume" in lines[0] and "Traceback" not in lines[0]
        # the same command with fewer workers: the settings check allows it; it resumes
        res = subprocess.run(
            train_cmd(train_store, out, cluster, *args, workers=1),
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert res.returncode == 0, res.stderr[-3000:]
    finally:
        cluster.add_worker(num_cpus=1)  # the next tests want two nodes again
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    resumed = summary["resumed_at_epochs"]
    assert len(resumed) == 1 and 1 <= resumed[0] < epochs, summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert [h["epoch"] for h in manifest["history"]] == list(range(1, epochs + 1))


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def small_posterior(train_store: Path, cluster: LoopbackCluster) -> Path:
    """A 2-worker `farm train npe` on the multi-node cluster; its artifact feeds the Serve test."""
    out = train_store.parent / "npe"
    cmd = train_cmd(train_store, out, cluster, "--epochs", "2", "--quiet")
    res = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_two_worker_training_on_the_cluster(small_posterior: Path) -> None:
    from inference import load_posterior

    # Each node has one CPU and each of the 2 workers takes one: finishing means it spanned both
    # nodes.
    post = load_posterior(str(small_posterior))
    ds = xr.open_zarr(str(small_posterior.parent / "train.zarr"))
    draws = post.sample(50, trace=ds.trace[0].values, seed=1)
    assert draws.shape == (50, 7) and post.prior.support(draws).all()


def test_serve_on_the_cluster(small_posterior: Path, cluster: LoopbackCluster) -> None:
    import httpx

    from tests.cluster import free_port

    port = free_port()
    cmd = [
        *FARM,
        "serve",
        "--posterior",
        str(small_posterior),
        "--address",
        cluster.address,
        "--port",
        str(port),
        "--detach",
    ]
    res = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
    assert health["status"] == "ok"
    trace = xr.open_zarr(str(small_posterior.parent / "train.zarr")).trace[1].values.tolist()
    r = httpx.post(
        f"http://127.0.0.1:{port}/sample",
        json={"trace": trace, "num_samples": 100, "seed": 3},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def test_a_placement_timeout_says_how_to_resume_in_one_line() -> None:
    """The cluster never had room (no node lost): the same one line, from Ray Train's own error."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    from inference.defaults import TrainConfig
    from inference.training.loop import _failure_line

    cfg = TrainConfig(task="npe", stores=("/s.zarr",), out="/runs/npe", num_workers=4)
    line = _failure_line(ControllerError(WorkerGroupStartupTimeoutError(4)), set(), cfg)
    assert line.startswith("training failed: the cluster could not place 4 worker(s)"), line
    assert "/runs/npe/checkpoints" in line and "run the same command again" in line
    assert "\n" not in line and "lost node" not in line
    lost = _failure_line(ControllerError(WorkerGroupStartupTimeoutError(4)), {"ab12"}, cfg)
    assert lost.startswith("training failed: lost node ab12; the cluster could not place"), lost
