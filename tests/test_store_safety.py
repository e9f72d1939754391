"""Store data safety: foreign paths untouched, one writer, crash-safe growth, checksums, verify.

Every test fails when its fault is not handled: files must survive byte for byte, a second writer
must be refused while the first holds the lock, a SIGKILL at a seeded step must leave a store the
same command completes bit-identically, and `farm verify` must name the chunks damaged on disk.
Kill moments come from observed progress (``FARM_STORE_PAUSE_AT`` parks the process at a named
step and reports it), never from sleeps that assume a CPU speed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from deploy.cli import main
from farm.defaults import PriorBox
from farm.prior import RestrictedPrior
from farm.run.runner import run_farm
from farm.store.lock import StoreLock, StoreLocked
from farm.store.sim_store import SimStore, open_dataset

FARM = [sys.executable, "-m", "deploy.cli"]
N, CHUNK, SEED, N_SMALL = (
    300,
    50,
    5,
    120,
)  # N_SMALL leaves a partial last chunk, so growth must reset its flag
ROOT = Path(__file__).resolve().parents[1]
#: Upper bound for a subprocess to reach a step; only a hang hits it (progress is polled, not
#: assumed).
REACH_TIMEOUT_S = 120


def farm(*args: str) -> tuple[int, str, str]:
    """Run the `farm` CLI in this process (no interpreter start-up): exit code, stdout, stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def assert_same_store(a: Path | str, b: Path | str) -> None:
    """Decoded arrays equal (checksums change bytes on disk, never values), every chunk flagged."""
    assert SimStore.open(a).done_mask().all() and SimStore.open(b).done_mask().all()
    da, db = open_dataset(a), open_dataset(b)
    for name in ("theta", "trace", "spike_count", "features", "chip", "neuron", "seed"):
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_farm(str(out), N, seed=SEED, chunk_size=CHUNK, in_process=True)
    return out


# ------------------------------------------------------------------ foreign --out
def _foreign(kind: str, root: Path) -> Path:
    target = root / "target"
    if kind == "files":
        (target / "sub").mkdir(parents=True)
        (target / "thesis.txt").write_text("four years of work\n")
        (target / "sub" / "a.csv").write_text("1,2\n3,4\n")
    elif kind == "zarr_v2":
        zarr.open_group(str(target), mode="w", zarr_format=2).create_array(
            "x", shape=(4,), dtype="int8"
        )[:] = 1
    elif kind == "zarr_v3_other_tool":
        g = zarr.open_group(str(target), mode="w", zarr_format=3)
        g.attrs["tool"] = "someone else"
        g.create_array("theta", shape=(4,), dtype="int8")[:] = 2
    elif kind == "file":
        target.write_bytes(b"not a store")
    return target


@pytest.mark.parametrize("kind", ["files", "zarr_v2", "zarr_v3_other_tool", "file", "working_dir"])
def test_foreign_out_is_refused_and_left_byte_for_byte(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "working_dir":
        (tmp_path / "notes.txt").write_text("mine")
        monkeypatch.chdir(tmp_path)
        target, out = tmp_path, "."
    else:
        target = _foreign(kind, tmp_path)
        out = str(target)
    before = snapshot(tmp_path) if target.is_dir() else {"": target.read_bytes()}
    rc, _, err = farm("simulate", "--n", "10", "--out", out, "--in-process", "-q")
    after = snapshot(tmp_path) if target.is_dir() else {"": target.read_bytes()}
    assert rc == 2 and err.count("\n") == 1 and repr(out) in err, err
    assert after == before  # nothing touched, no lock file left beside it either
    assert not Path(f"{target}.lock").exists()


def test_empty_folder_becomes_a_store(tmp_path: Path, reference: Path) -> None:
    (tmp_path / "empty").mkdir()
    rc, _, err = farm(
        "simulate",
        "--n",
        str(N),
        "--chunk",
        str(CHUNK),
        "--seed",
        str(SEED),
        "--out",
        str(tmp_path / "empty"),
        "--in-process",
        "-q",
    )
    assert rc == 0, err
    assert_same_store(reference, tmp_path / "empty")
    assert not (tmp_path / "empty.lock").exists()  # released
    # New stores checksum every chunk; the decoded values above are unchanged by it.
    codecs = json.loads((tmp_path / "empty" / "trace" / "zarr.json").read_text())["codecs"]
    assert any(c["name"] == "crc32c" for c in codecs)


# ------------------------------------------------------------------ SIGKILL at seeded steps
CREATE_STEPS = [
    "create:group",
    "create:array:theta",
    "create:array:trace",
    "create:array:seed",
    "create:chunk_done",
    "create:published",
    "done:0",
    "done:4",
]
EXTEND_STEPS = [
    "extend:array:chip",
    "extend:array:theta",
    "extend:array:trace",
    "extend:chunk_done",
    "extend:flag",
    "extend:published",
    "done:3",
]
KILL_STEPS = random.Random(2026).sample(CREATE_STEPS + EXTEND_STEPS, 8)


def _start_paused(out: Path, n: int, step: str, pause_file: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "FARM_STORE_PAUSE_AT": step,
        "FARM_STORE_PAUSE_FILE": str(pause_file),
        "FARM_STORE_PAUSE_S": str(REACH_TIMEOUT_S),
    }
    cmd = [
        *FARM,
        "simulate",
        "--n",
        str(n),
        "--chunk",
        str(CHUNK),
        "--seed",
        str(SEED),
        "--out",
        str(out),
        "--in-process",
        "-q",
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_for(proc: subprocess.Popen, pause_file: Path) -> str:
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while not pause_file.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"run ended (rc {proc.returncode}) before its kill step: {proc.stderr.read()}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("run never reached its kill step")
        time.sleep(0.05)
    return pause_file.read_text()


@pytest.mark.parametrize("step", KILL_STEPS)
def test_sigkill_during_create_or_extend_then_the_same_command_completes_identically(
    step: str, tmp_path: Path, reference: Path
) -> None:
    out = tmp_path / "s.zarr"
    if step.startswith("extend") or step == "done:3":
        run_farm(str(out), N_SMALL, seed=SEED, chunk_size=CHUNK, in_process=True)
    proc = _start_paused(out, N, step, tmp_path / "reached")
    assert _wait_for(proc, tmp_path / "reached") == step
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # the kill landed while the run was parked mid-way
    assert Path(f"{out}.lock").exists()  # the dead run's lock is left behind ...
    rc, _, err = farm("info", str(out))
    assert rc in (0, 2) and "Traceback" not in err, err  # 2: creation had not published a store yet
    if SimStore.existing_chunk_size(out):
        killed = SimStore.open(
            out
        )  # mid-run: the old size is still published, or chunks are missing
        assert killed.num_sims < N or not killed.done_mask().all()
    rc, _, err = farm(
        "simulate", "--n", str(N), "--seed", str(SEED), "--out", str(out), "--in-process", "-q"
    )
    assert rc == 0, err  # ... and taken over: same host, pid gone
    assert_same_store(reference, out)
    assert farm("verify", str(out))[0] == 0 and farm("info", str(out))[0] == 0


# ------------------------------------------------------------------ two writers
def test_second_writer_is_refused_while_the_first_holds_the_lock(
    tmp_path: Path, reference: Path
) -> None:
    out, parked = tmp_path / "s.zarr", tmp_path / "reached"
    first = _start_paused(
        out, N, "done:1", parked
    )  # parks after its second chunk, holding the lock
    _wait_for(first, parked)
    second = subprocess.run(
        [
            *FARM,
            "simulate",
            "--n",
            "600",
            "--chunk",
            str(CHUNK),
            "--seed",
            str(SEED),
            "--out",
            str(out),
            "--in-process",
            "-q",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    parked.unlink()  # lets the first run go on
    assert first.wait() == 0, first.stderr.read()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"pid {first.pid}" in second.stderr and "--break-lock" in second.stderr
    assert_same_store(reference, out)
    assert farm("verify", str(out))[0] == 0 and farm("info", str(out))[0] == 0


def test_two_writers_racing_to_create_one_store_leave_it_usable(
    tmp_path: Path, reference: Path
) -> None:
    """The issue's case: two runs 0.3 s apart on one new store.

    Either may be refused (exit 2) or run.
    """
    out = tmp_path / "s.zarr"
    cmds = [
        [
            *FARM,
            "simulate",
            "--n",
            str(n),
            "--chunk",
            str(CHUNK),
            "--seed",
            str(SEED),
            "--out",
            str(out),
            "--in-process",
            "-q",
        ]
        for n in (N_SMALL, N)
    ]
    procs = []
    for cmd in cmds:
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        )
        time.sleep(0.3)  # the interleaving of the report; either outcome below is correct
    codes = [p.wait() for p in procs]
    assert set(codes) <= {0, 2} and 0 in codes, [p.stderr.read() for p in procs]
    assert farm("info", str(out))[0] == 0 and farm("verify", str(out))[0] == 0
    rc, _, err = farm(
        "simulate", "--n", str(N), "--seed", str(SEED), "--out", str(out), "--in-process", "-q"
    )
    assert rc == 0, err
    assert_same_store(reference, out)


# ------------------------------------------------------------------ stale locks
def _write_lock(out: Path, host: str, pid: int, heartbeat_age_s: float) -> None:
    Path(f"{out}.lock").write_text(
        json.dumps(
            {
                "host": host,
                "pid": pid,
                "started_at": "2026-01-01T00:00:00+00:00",
                "heartbeat": time.time() - heartbeat_age_s,
                "token": "x" * 32,
            }
        )
    )


def test_stale_locks_are_taken_over_and_live_ones_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "s.zarr"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    _write_lock(out, socket.gethostname(), int(dead.stdout), 0.0)  # same host, process gone
    with caplog.at_level("WARNING", logger="farm"):
        assert (
            farm("simulate", "--n", "50", "--chunk", "50", "--out", str(out), "--in-process", "-q")[
                0
            ]
            == 0
        )
    assert "taking over" in caplog.text and "no longer runs" in caplog.text
    _write_lock(out, "node-elsewhere", 4242, 1.0)  # another host, heartbeat fresh: a live run
    rc, _, err = farm("simulate", "--n", "100", "--out", str(out), "--in-process", "-q")
    assert (
        rc == 2
        and "node-elsewhere pid 4242" in err
        and "--break-lock" in err
        and err.count("\n") == 1
    )
    assert SimStore.open(out).num_sims == 50  # the refused run touched nothing
    assert (
        farm("simulate", "--n", "100", "--out", str(out), "--in-process", "-q", "--break-lock")[0]
        == 0
    )
    _write_lock(out, "node-elsewhere", 4242, 3600.0)  # another host, heartbeat an hour old
    with StoreLock(str(out)) as lock:
        assert json.loads(Path(f"{out}.lock").read_text())["token"] == lock.owner.token
        with pytest.raises(StoreLocked, match="--break-lock"):
            StoreLock(str(out)).acquire()  # our own live lock (same host, this pid)
    assert not Path(f"{out}.lock").exists()


def test_heartbeat_refreshes_the_lock_and_notices_a_takeover(tmp_path: Path) -> None:
    out = str(tmp_path / "s.zarr")
    lock = StoreLock(out, heartbeat_s=0.05).acquire()
    try:
        first = json.loads(Path(f"{out}.lock").read_text())["heartbeat"]
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while (
            json.loads(Path(f"{out}.lock").read_text())["heartbeat"] == first
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert json.loads(Path(f"{out}.lock").read_text())["heartbeat"] > first
        thief = StoreLock(out, break_lock=True).acquire()
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.lost
        thief.release()
    finally:
        lock.release()


# ------------------------------------------------------------------ verify
def test_verify_names_damaged_chunks_and_repair_recomputes_them_identically(
    tmp_path: Path, reference: Path
) -> None:
    out = tmp_path / "s.zarr"
    assert (
        farm(
            "simulate",
            "--n",
            str(N),
            "--chunk",
            str(CHUNK),
            "--seed",
            str(SEED),
            "--out",
            str(out),
            "--in-process",
            "-q",
        )[0]
        == 0
    )
    assert farm("verify", str(out))[0] == 0
    trace_chunk = out / "trace" / "c" / "2" / "0"
    trace_chunk.write_bytes(trace_chunk.read_bytes()[:-7])  # truncated
    (out / "theta" / "c" / "4" / "0").unlink()  # deleted
    rc, stdout, err = farm("verify", str(out))
    assert (
        rc == 1
        and "chunk 2 (samples 100-149): trace unreadable" in stdout
        and "chunk 4 (samples 200-249): theta missing" in stdout
    ), stdout
    assert "--repair" in err and err.count("\n") == 1
    rc, stdout, _ = farm("verify", str(out), "--repair", "--json")
    assert rc == 0 and json.loads(stdout)["repaired"] == [2, 4]
    assert farm("verify", str(out))[0] == 0  # only intact chunks are flagged now
    assert open_dataset(out).sizes["sample"] == N - 2 * CHUNK
    assert (
        farm(
            "simulate", "--n", str(N), "--seed", str(SEED), "--out", str(out), "--in-process", "-q"
        )[0]
        == 0
    )
    assert_same_store(reference, out)
    assert farm("verify", str(out))[0] == 0


def test_stores_without_checksums_stay_readable_and_resumable(
    tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store made before checksums (blosc only) resumes with its own codecs and verifies."""
    import farm.store.sim_store as store_mod

    out = tmp_path / "old.zarr"
    monkeypatch.setattr(store_mod, "_COMPRESSORS", store_mod._COMPRESSORS[:1])
    run_farm(str(out), N_SMALL, seed=SEED, chunk_size=CHUNK, in_process=True)
    monkeypatch.undo()
    assert (
        farm(
            "simulate", "--n", str(N), "--seed", str(SEED), "--out", str(out), "--in-process", "-q"
        )[0]
        == 0
    )
    assert not any(
        c["name"] == "crc32c"
        for c in json.loads((out / "trace" / "zarr.json").read_text())["codecs"]
    )
    assert_same_store(reference, out)
    assert farm("verify", str(out))[0] == 0


# ------------------------------------------------------------------ input checked before storage
def test_bad_input_exits_2_before_anything_is_written(tmp_path: Path) -> None:
    structured = tmp_path / "structured.npy"
    np.save(structured, np.zeros(3, dtype=[("a", "f4"), ("b", "i4")]))
    text = tmp_path / "text.npy"
    np.save(text, np.array([["a"] * 7]))
    prior_dir = RestrictedPrior(
        PriorBox(), [np.ones((7, 1))], [np.zeros(1)], np.zeros(7), np.ones(7), 0.0, 0.5
    ).save(tmp_path / "prior")
    weights = prior_dir / "weights.npz"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    out = tmp_path / "s.zarr"
    cases = {  # args -> what the one line must name
        "--seed": ["--n", "10", "--seed", str(2**64)],
        "num_sims=100000000000": ["--n", "1e11"],
        "100000000 chunks": ["--n", "1e8", "--chunk", "1"],
        "structured.npy": ["--theta", str(structured)],
        "text.npy": ["--theta", str(text)],
        "unreadable restricted prior": ["--n", "10", "--prior", str(prior_dir)],
    }
    for expected, args in cases.items():
        rc, _, err = farm("simulate", *args, "--out", str(out), "--in-process", "-q")
        assert rc == 2 and err.count("\n") == 1 and expected in err, (expected, err)
        assert not out.exists() and not Path(f"{out}.lock").exists(), expected
