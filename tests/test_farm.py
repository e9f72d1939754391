"""The simulation farm as a user drives it: determinism, resume, --theta, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from deploy.cli import main as farm_main
from farm.defaults import PARAMETER_NAMES
from farm.errors import FarmError
from farm.features import FEATURE_NAMES
from farm.prior import BoxPrior
from farm.run.runner import run_farm
from farm.store.sim_store import SimStore, open_dataset

FARM = [sys.executable, "-m", "deploy.cli"]
ARRAYS = ("theta", "trace", "spike_count", "features", "chip", "neuron", "seed")


def chunks_done(out: Path) -> int:
    """Flagged chunks of a store another process may be creating right now (-1: not ready)."""
    try:
        return int(SimStore.open(out).done_mask().sum())
    except Exception:
        return -1


def assert_same_store(a: str | Path, b: str | Path) -> None:
    da, db = xr.open_zarr(str(a)), xr.open_zarr(str(b))
    for name in ARRAYS:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)
    assert SimStore.open(a).done_mask().all() and SimStore.open(b).done_mask().all()


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_farm(str(out), num_sims=2400, seed=11, chunk_size=300, in_process=True)
    return out


def test_store_is_labelled_dataset(reference_store: Path) -> None:
    ds = xr.open_zarr(str(reference_store))
    assert ds.theta.dims == ("sample", "parameter") and ds.theta.dtype == np.float32
    assert ds.trace.dims == ("sample", "time") and ds.trace.dtype == np.int16
    assert list(ds.parameter.values) == list(PARAMETER_NAMES)
    assert list(ds.feature.values) == list(FEATURE_NAMES)
    assert ds.sizes["sample"] == 2400 and ds.sizes["time"] == 1000
    assert ds.attrs["seed"] == 11 and ds.attrs["prior"]["type"] == "box_uniform"
    assert ds.attrs["protocol"]["t_stim_us"] == 600.0
    assert int(ds.trace.min()) >= 0 and int(ds.trace.max()) <= 1023
    assert BoxPrior().support(ds.theta.values).all()
    frac = float(((ds.spike_count >= 1) & (ds.spike_count <= 40)).mean())
    assert 0.05 < frac < 0.6, (
        f"box prior should give a minority in the regime of interest, got {frac:.2f}"
    )


def test_same_seed_bit_identical_across_actor_counts(
    ray_session, reference_store: Path, tmp_path: Path
) -> None:
    for chips in (1, 2):
        out = tmp_path / f"chips{chips}.zarr"
        summary = run_farm(
            str(out),
            num_sims=2400,
            seed=11,
            chunk_size=300,
            num_chips=chips,
            max_in_flight_per_chip=1 + chips,
        )
        assert summary["complete"] and summary["num_workers"] == chips
        assert_same_store(reference_store, out)


def test_driver_simulates_while_private_ray_starts_single_threaded_blas_same_store(
    reference_store: Path, tmp_path: Path
) -> None:
    """`farm simulate` without --address starts a local Ray; the driver works meanwhile, hands over.

    One private Ray start (the costly part) checks two things. The store is the same as the
    in-process one. And the driver thread sees one BLAS thread: `farm simulate --prior` hung at
    100 % CPU in OpenBLAS's ``exec_blas_async_wait``, because OpenBLAS shuts its pool down in a fork
    handler and Ray's start-up forks while the driver may be inside a threaded dgemm (the
    restricted prior's classifier); a thread doing 1000x64 dgemms beside 300 ``os.fork()`` calls
    hangs the same way, and runs on with one BLAS thread.
    """
    out = tmp_path / "private.zarr"
    script = (
        "import json, sys, threadpoolctl, farm.run.scheduler as sch\n"
        "from deploy.cli import main\n"
        "seen = []\n"
        "real = sch.run_queue\n"
        "def spy(*a, **k):\n"
        "    seen.extend(i['num_threads'] for i in threadpoolctl.threadpool_info()"
        " if i['user_api'] == 'blas')\n"
        "    return real(*a, **k)\n"
        "sch.run_queue = spy\n"
        "code = main(['simulate', '--n', '2400', '--seed', '11', '--chunk', '100',"
        " '--out', sys.argv[1], '--quiet', '--json'])\n"
        "print(json.dumps({'code': code, 'blas_threads_seen': seen}))\n"
    )
    # Slow chunks (sleep only, data unchanged) so Ray is up before the driver could finish alone.
    res = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        env={**os.environ, "FARM_CHUNK_DELAY_S": "0.5"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    *_, summary_line, spy_line = res.stdout.strip().splitlines()
    summary, spy = json.loads(summary_line), json.loads(spy_line)
    assert spy["code"] == 0 and summary["complete"] and summary["driver_chunks"] >= 1, (
        summary,
        spy,
    )
    assert spy["blas_threads_seen"] and set(spy["blas_threads_seen"]) == {1}, spy
    assert_same_store(reference_store, out)


def test_sample_i_is_independent_of_chunking(reference_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "chunk700.zarr"
    run_farm(str(out), num_sims=2400, seed=11, chunk_size=700, in_process=True)
    assert_same_store(reference_store, out)


def test_new_store_chunking_grows_with_the_run_and_an_existing_store_keeps_its_own(
    tmp_path: Path, monkeypatch
) -> None:
    """Large runs get 4000-row chunks; growing a store never changes its chunking.

    A chunk's seven small writes cost the same at any size, so large runs take large chunks. The
    threshold is lowered here so the run stays small."""
    import farm.defaults
    from farm.defaults import LARGE_RUN_CHUNK, default_chunk_size

    assert (
        default_chunk_size(199_999) == 1000
        and default_chunk_size(200_000) == LARGE_RUN_CHUNK == 4000
    )
    monkeypatch.setattr(farm.defaults, "LARGE_RUN", 1500)
    monkeypatch.setattr(farm.defaults, "LARGE_RUN_CHUNK", 600)
    small, large = tmp_path / "small.zarr", tmp_path / "large.zarr"
    run_farm(str(small), num_sims=1400, seed=11, in_process=True)
    run_farm(str(large), num_sims=1500, seed=11, in_process=True)
    assert (
        SimStore.open(str(small)).chunk_size == 1000 and SimStore.open(str(large)).chunk_size == 600
    )
    run_farm(str(small), num_sims=2000, seed=11, in_process=True)  # grown past the threshold
    assert SimStore.open(str(small)).chunk_size == 1000


def test_extending_a_store_continues_the_same_sequence(
    reference_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "grow.zarr"
    run_farm(
        str(out), num_sims=1000, seed=11, chunk_size=300, in_process=True
    )  # last chunk partial
    summary = run_farm(str(out), num_sims=2400, seed=11, chunk_size=300, in_process=True)
    assert summary["skipped"] == 900 and summary["simulated_now"] == 1500
    assert_same_store(reference_store, out)


def test_killed_run_resumes_without_gap_or_duplicate(reference_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed.zarr"
    cmd = [
        *FARM,
        "simulate",
        "--n",
        "2400",
        "--seed",
        "11",
        "--chunk",
        "300",
        "--out",
        str(out),
        "--in-process",
        "--quiet",
    ]
    # Slow each chunk down so the kill lands mid-run; the env var only adds sleep, never changes
    # data.
    proc = subprocess.Popen(cmd, env={**os.environ, "FARM_CHUNK_DELAY_S": "0.4"})
    # Kill on observed progress (a flagged chunk), not a timer; the deadline only catches a hang.
    deadline = time.monotonic() + 300
    while chunks_done(out) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, (
            f"no chunk flagged (exit {proc.poll()})"
        )
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = SimStore.open(out).done_mask()
    assert 1 <= done_before.sum() < 8, "the kill should land mid-run"
    partial = open_dataset(str(out))
    assert partial.sizes["sample"] == 300 * int(done_before.sum())
    res = subprocess.run([*cmd[:-1], "--json"], capture_output=True, text=True, check=True)
    assert '"complete": true' in res.stdout
    assert_same_store(reference_store, out)


def test_theta_file_runs_given_parameters(tmp_path: Path) -> None:
    theta = BoxPrior().sample(50, seed=3)
    np.save(tmp_path / "theta.npy", theta)
    header = ",".join(reversed(PARAMETER_NAMES))
    np.savetxt(tmp_path / "theta.csv", theta[:, ::-1], delimiter=",", header=header, comments="")
    for name in ("theta.npy", "theta.csv"):
        out = tmp_path / f"{name}.zarr"
        assert (
            farm_main(
                [
                    "simulate",
                    "--theta",
                    str(tmp_path / name),
                    "--out",
                    str(out),
                    "--in-process",
                    "--quiet",
                ]
            )
            == 0
        )
        ds = xr.open_zarr(str(out))
        np.testing.assert_array_equal(ds.theta.values, theta)
        assert ds.attrs["theta_source"].startswith("file:")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--n", "0"], "--n"),
        (["--n", "-5"], "--n"),
        (["--n", "1.5"], "1.5"),
        (["--n", "abc"], "abc"),
        (["--n", "10", "--substrate", "loihi"], "loihi"),
        (["--n", "10", "--chunk", "0"], "--chunk"),
        (["--n", "10", "--seed", "-1"], "--seed"),
        (["--n", "10", "--prior", "/nonexistent/prior"], "restricted_prior.json"),
        (["--n", "10", "--substrate", "bss2"], "pynn_brainscales"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (the console entry `main`, as `farm` runs it): an interpreter start per
    # case cost ~2 s each; test_bad_theta_files_exit_2 keeps the check on a real process.
    code = farm_main(["simulate", "--out", str(tmp_path / "x.zarr"), "--in-process", *args])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "x.zarr").exists()


def test_bad_theta_files_exit_2(tmp_path: Path) -> None:
    outside = BoxPrior().sample(5, seed=1)
    outside[2, 3] = 5000.0
    np.save(tmp_path / "outside.npy", outside)
    np.save(tmp_path / "shape.npy", np.zeros((4, 3)))
    (tmp_path / "notes.txt").write_text("hello")
    for name, needle in (
        ("outside.npy", "exponential_i_bias=5000"),
        ("shape.npy", "(4, 3)"),
        ("missing.npy", "does not exist"),
        ("notes.txt", ""),
    ):
        res = subprocess.run(
            [
                *FARM,
                "simulate",
                "--theta",
                str(tmp_path / name),
                "--out",
                str(tmp_path / "t.zarr"),
                "--in-process",
            ],
            capture_output=True,
            text=True,
        )
        assert (
            res.returncode == 2
            and needle in res.stderr
            and len(res.stderr.strip().splitlines()) == 1
        ), res.stderr


def test_refuses_to_mix_settings_and_keeps_data(reference_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine.zarr"
    run_farm(str(out), num_sims=600, seed=11, chunk_size=300, in_process=True)
    before = xr.open_zarr(str(out)).trace.values.copy()
    for args, needle in (
        (["--seed", "12", "--n", "600"], "seed=11"),
        (["--seed", "11", "--n", "600", "--chunk", "200"], "chunk_size=300"),
        (["--seed", "11", "--n", "300"], "shrink"),
    ):
        res = subprocess.run(
            [*FARM, "simulate", "--out", str(out), "--in-process", *args],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 2 and needle in res.stderr, res.stderr
    np.testing.assert_array_equal(xr.open_zarr(str(out)).trace.values, before)
    assert SimStore.open(out).done_mask().all()


def test_info_reports_completeness(reference_store: Path) -> None:
    res = subprocess.run(
        [*FARM, "info", str(reference_store), "--json"], capture_output=True, text=True, check=True
    )
    assert '"completed_sims": 2400' in res.stdout and '"complete": true' in res.stdout


def test_import_farm_is_cheap_and_the_store_does_not_load_the_kernel() -> None:
    """`farm --help` and store readers (training, serving) must not pay for numba or Ray."""
    code = (
        "import sys, farm; "
        "heavy = {m for m in ('numpy', 'zarr', 'ray', 'numba') if m in sys.modules}; "
        "assert not heavy, heavy; "
        "farm.SimStore; "
        "assert 'numba' not in sys.modules and 'farm.simulate' not in sys.modules, "
        "sorted(sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    import farm

    assert farm.run_farm is run_farm and set(farm.__all__) >= {
        "run_farm",
        "SimStore",
        "open_dataset",
        "FarmError",
        "FarmInputError",
    }


@pytest.fixture()
def tiny_disk(mount_tmpfs) -> Path:
    return mount_tmpfs("1m")


def test_in_process_disk_full_is_a_farm_error_and_resumes(
    reference_store: Path, tiny_disk: Path
) -> None:
    out = tiny_disk / "full.zarr"
    with pytest.raises(FarmError, match="No space left on device.*resume") as info:
        run_farm(str(out), num_sims=2400, seed=11, chunk_size=300, in_process=True)
    assert "\n" not in str(info.value) and "writing chunk" in str(info.value)
    done = np.flatnonzero(SimStore.open(out).done_mask())
    assert done.size < 2400 // 300
    ref, got = xr.open_zarr(str(reference_store)), xr.open_zarr(str(out))
    for c in done:  # every flagged chunk is intact
        np.testing.assert_array_equal(
            got.trace[c * 300 : (c + 1) * 300].values, ref.trace[c * 300 : (c + 1) * 300].values
        )
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], check=True)
    assert run_farm(str(out), num_sims=2400, seed=11, chunk_size=300, in_process=True)["complete"]
    assert_same_store(reference_store, out)


def _live_pids(match) -> list[str]:
    """Processes (not zombies) for which ``match(pid, cmdline)`` holds.

    Zombies are skipped: they are dead and hold nothing, but in a container whose PID 1 does
    not reap orphans they stay listed after their parent (the farm) exited. So is a process
    with an empty command line: the kernel drops it once an exiting process released its memory.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state not in ("Z", "X") and cmdline and match(int(entry), cmdline):
            found.append(f"{entry}: {cmdline[:120]}")
    return found


def test_sigterm_stops_simulate_cleanly_keeps_chunks_and_leaves_no_ray(
    reference_store: Path, tmp_path: Path
) -> None:
    """SIGTERM (systemd, Kubernetes) stops `farm simulate` as Ctrl-C does: chunks kept, Ray gone."""
    import tempfile

    out = tmp_path / "term.zarr"
    ray_tmp = tempfile.mkdtemp(
        prefix="rt", dir="/tmp"
    )  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "FARM_CHUNK_DELAY_S": "0.5", "RAY_TMPDIR": ray_tmp}
    cmd = [
        *FARM,
        "simulate",
        "--n",
        "2400",
        "--seed",
        "11",
        "--chunk",
        "100",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # Observed progress, not a timer: SIGTERM once a chunk is flagged (during or after Ray's
        # start).
        deadline = time.monotonic() + 240
        while chunks_done(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"farm exited before the signal: {proc.returncode}"
        assert chunks_done(out) >= 1, "no chunk flagged within 240 s"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode in (130, 143), stderr[-2000:]
    lines = [
        ln
        for ln in stderr.splitlines()
        if ln.strip() and "WARNING" not in ln and "warn" not in ln.lower()
    ]
    assert lines == [
        "Interrupted: completed chunks are kept; re-run the same command to resume."
    ], stderr[-2000:]
    done = np.flatnonzero(SimStore.open(out).done_mask())
    assert 1 <= done.size < 24, "the signal should land mid-run"
    ref, got = xr.open_zarr(str(reference_store)), xr.open_zarr(str(out))
    for c in done:  # every flagged chunk is intact (sample i does not depend on chunking)
        np.testing.assert_array_equal(
            got.trace[c * 100 : (c + 1) * 100].values, ref.trace[c * 100 : (c + 1) * 100].values
        )
    # Every process of the run's private Ray (raylet, gcs_server, agents, workers) is gone: they
    # either stay in the command's session or name its Ray temp dir on their command line.
    left = _live_pids(lambda pid, cmdline: ray_tmp in cmdline or _sid(pid) == proc.pid)
    assert not left, f"processes outlived `farm simulate`: {left}"


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
