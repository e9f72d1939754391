"""`farm infer`: a store of recorded traces in, an xarray store of posterior answers out.

Cheap by design: an untrained 2-transform flow (the contract holds for any flow), 96 traces of a
tiny farm store, 20 draws, blocks of 32. What the user sees is tested: the store's layout, the
bit-identical result after a SIGKILL and a rerun, the same bytes from Ray actors, one-line exit-2
refusals that leave files alone, NaN traces flagged while the rest are answered, the chip map.
Circuit-aware posteriors (issue 25) the same way: an untrained circuit-aware flow and a circuits
store of just the recorded traces' chips and neurons, recorded in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from farm.defaults import PARAMETER_NAMES, ChipModel, PriorBox, Protocol
from farm.features import FEATURE_NAMES
from farm.prior import BoxPrior

ROOT = Path(__file__).resolve().parents[1]
FARM = [sys.executable, "-m", "deploy.cli"]
N, DRAWS, BLOCK, SEED = 96, 20, 32, 7
REACH_TIMEOUT_S = 240.0
#: the arrays a store holds, all of which must come back bit-identical
ARRAYS = (
    "draws",
    "mean",
    "std",
    "q05",
    "q50",
    "q95",
    "map",
    "misspecification_score",
    "misspecification_flagged",
    "misspecification_reasons",
    "chip",
    "neuron",
    "block_done",
)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real artifact of a random handcrafted flow over the box prior (no training)."""
    import torch

    from inference.artifacts import write_artifact
    from inference.nets.nsf import FlowConfig, NPEModel

    box = PriorBox()
    stats = {
        "low": list(box.low),
        "high": list(box.high),
        "feature_mean": [0.0] * len(FEATURE_NAMES),
        "feature_std": [100.0] * len(FEATURE_NAMES),  # every statistic stays in the flow's range
        "theta_mean": [0.0] * 7,
        "theta_std": [1.0] * 7,
        "trace_mean": 0.0,
        "trace_std": 1.0,
    }
    config = FlowConfig(variant="handcrafted", transforms=2, hidden_features=16)
    torch.manual_seed(0)
    manifest = {
        "architecture": config.to_dict(),
        "parameter_names": list(PARAMETER_NAMES),
        "feature_names": list(FEATURE_NAMES),
        "protocol": Protocol().to_dict(),
        "chip_model": ChipModel().to_dict(),
        "trace_length": Protocol().num_samples,
        "standardization": stats,
        "prior": BoxPrior().to_dict(),
    }
    out = tmp_path_factory.mktemp("infer") / "npe-untrained"
    write_artifact(out, "npe_posterior", NPEModel(config, stats).state_dict(), manifest)
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 emulated traces with their chip and neuron ids (a farm store)."""
    from farm.run.runner import run_farm

    out = tmp_path_factory.mktemp("infer") / "rec.zarr"
    run_farm(str(out), num_sims=N, seed=5, chunk_size=48, in_process=True)
    return out


@pytest.fixture(scope="module")
def reference(artifact: Path, recorded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted in-process run: what every other run must reproduce byte for byte."""
    from inference.batch import run_infer

    out = tmp_path_factory.mktemp("infer") / "ref.zarr"
    run_infer(_config(artifact, recorded, out, in_process=True))
    return out


def _config(artifact: Path, store: Path, out: Path, **kw):
    from inference.batch import InferConfig

    return InferConfig(
        posterior=str(artifact),
        store=str(store),
        out=str(out),
        num_draws=DRAWS,
        seed=SEED,
        block_size=BLOCK,
        **kw,
    )


def _args(artifact: Path, store: Path, out: Path, *extra: str) -> list[str]:
    return [
        "infer",
        "--posterior",
        str(artifact),
        "--store",
        str(store),
        "--out",
        str(out),
        "--draws",
        str(DRAWS),
        "--seed",
        str(SEED),
        "--block",
        str(BLOCK),
        "--in-process",
        "-q",
        *extra,
    ]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from deploy.cli import main

    rc = main(argv)
    got = capsys.readouterr()
    return rc, got.out, got.err


def assert_same_store(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in ARRAYS:
        x, y = np.asarray(ga[name][:]), np.asarray(gb[name][:])
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.kind == "f":
            assert x.tobytes() == y.tobytes(), name  # bitwise, NaN included
        else:
            assert (x == y).all(), name
    assert ga.attrs["identity"] == gb.attrs["identity"]


def test_store_opens_in_xarray_with_draws_summaries_flags_and_ids(
    reference: Path, recorded: Path, artifact: Path
) -> None:
    import xarray as xr

    ds = xr.open_zarr(str(reference))
    assert ds["draws"].dims == ("observation", "draw", "parameter")
    assert ds["draws"].shape == (N, DRAWS, 7)
    for name in ("mean", "std", "q05", "q50", "q95", "map"):
        assert ds[name].dims == ("observation", "parameter"), name
    assert list(ds["parameter"].values) == list(PARAMETER_NAMES)
    rec = zarr.open_group(str(recorded), mode="r")
    assert {"chip", "neuron"} <= set(ds.coords)
    assert (ds["chip"].values == rec["chip"][:]).all()
    assert (ds["neuron"].values == rec["neuron"][:]).all()
    assert ds["misspecification_flagged"].dtype == bool
    assert ds["misspecification_score"].dims == ("observation",)
    reasons = ds["misspecification_reasons"].values
    flagged = ds["misspecification_flagged"].values
    assert all(bool(r) == f for r, f in zip(reasons, flagged))  # a reason exactly when flagged
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert ds.attrs["posterior_fingerprint"] == manifest["fingerprint"]
    assert ds.attrs["posterior_version"]["package_version"] == manifest["package_version"]
    draws = ds["draws"].values
    assert np.isfinite(draws).all()
    assert (ds["q05"] <= ds["q50"]).all() and (ds["q50"] <= ds["q95"]).all()
    assert np.allclose(ds["mean"].values, draws.mean(axis=1), rtol=1e-5, atol=1e-3)
    # the MAP is one of the observation's own draws
    assert (np.abs(draws - ds["map"].values[:, None, :]).max(axis=2).min(axis=1) == 0).all()


def test_draws_depend_on_the_seed(
    artifact: Path, recorded: Path, reference: Path, tmp_path: Path
) -> None:
    from inference.batch import InferConfig, run_infer

    out = tmp_path / "other-seed.zarr"
    cfg = _config(artifact, recorded, out, in_process=True)
    run_infer(InferConfig(**{**_fields(cfg), "seed": SEED + 1}))
    a = zarr.open_group(str(reference), mode="r")["draws"][:]
    b = zarr.open_group(str(out), mode="r")["draws"][:]
    assert not np.array_equal(a, b)


def _fields(cfg) -> dict:
    from dataclasses import fields

    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


@pytest.mark.parametrize("step", ["infer:create:arrays", "infer:written:1"])
def test_sigkill_then_rerun_resumes_and_is_bit_identical(
    step: str, artifact: Path, recorded: Path, reference: Path, tmp_path: Path
) -> None:
    out, pause = tmp_path / "post.zarr", tmp_path / "reached"
    env = {
        **os.environ,
        "FARM_STORE_PAUSE_AT": step,
        "FARM_STORE_PAUSE_FILE": str(pause),
        "FARM_STORE_PAUSE_S": str(REACH_TIMEOUT_S),
    }
    cmd = [*FARM, *_args(artifact, recorded, out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while not pause.exists():
        assert proc.poll() is None, f"run ended (rc {proc.returncode}): {proc.stderr.read()}"
        assert time.monotonic() < deadline, "run never reached its kill step"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert Path(f"{out}.lock").exists()  # the dead run's lock stays behind ...
    if step == "infer:written:1":  # block 0 finished, block 1 written but not flagged
        assert list(zarr.open_group(str(out), mode="r")["block_done"][:]) == [1, 0, 0]
    done = subprocess.run(
        [*FARM, *_args(artifact, recorded, out), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr  # ... and is taken over: same host, pid gone
    summary = json.loads(done.stdout)
    assert summary["already_done"] == (BLOCK if step == "infer:written:1" else 0)
    assert summary["answered_now"] == N - summary["already_done"]
    assert_same_store(reference, out)
    assert not Path(f"{out}.lock").exists()


def test_ray_actors_write_the_same_bytes(
    ray_session, artifact: Path, recorded: Path, reference: Path, tmp_path: Path
) -> None:
    from inference.batch import run_infer

    out = tmp_path / "ray.zarr"
    summary = run_infer(_config(artifact, recorded, out, num_workers=2))
    assert summary["num_workers"] == 2 and summary["answered_now"] == N
    assert_same_store(reference, out)
    again = run_infer(_config(artifact, recorded, out, num_workers=2))
    assert again["answered_now"] == 0 and again["already_done"] == N  # nothing redone


def test_nan_and_out_of_range_traces_are_flagged_and_the_rest_answered(
    artifact: Path, recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = np.asarray(zarr.open_group(str(recorded), mode="r")["trace"][:5], dtype=np.float64)
    traces[1, 10:13] = np.nan
    traces[3, 0] = 2000.0
    src = tmp_path / "lab.npz"
    np.savez(src, trace=traces, chip=np.full(5, 3), neuron=np.arange(5))
    rc, _, err = _cli(_args(artifact, src, tmp_path / "lab.zarr"), capsys)
    assert rc == 0, err
    g = zarr.open_group(str(tmp_path / "lab.zarr"), mode="r")
    flagged, reasons = g["misspecification_flagged"][:], g["misspecification_reasons"][:]
    assert flagged[1] and "3 NaN or inf samples" in reasons[1]
    assert flagged[3] and "ADC codes lie in [0, 1023]" in reasons[3]
    draws = g["draws"][:]
    assert np.isnan(draws[[1, 3]]).all() and np.isfinite(draws[[0, 2, 4]]).all()
    assert list(g["chip"][:]) == [3] * 5


def _refused(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), err
    for w in words:
        assert w in lines[0], (w, err)


def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    artifact: Path, recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "post.zarr"
    short = tmp_path / "short.npy"
    np.save(short, np.full((4, 500), 300, dtype=np.int16))
    _refused(*_cli(_args(artifact, short, out), capsys)[::2], "500", "1000", "step")
    other = tmp_path / "multi.zarr"
    g = zarr.open_group(str(other), mode="w", zarr_format=3)
    g.create_array("trace", data=np.full((2, 3000), 300, dtype=np.int16))
    from farm import resolve_protocol

    g.attrs["protocol"] = resolve_protocol("multi-step").to_dict()
    _refused(*_cli(_args(artifact, other, out), capsys)[::2], "multi-step", "step", "3000")
    _refused(
        *_cli(_args(artifact, short.with_name("missing.npy"), out), capsys)[::2], "missing.npy"
    )
    _refused(*_cli(_args(tmp_path, recorded, out), capsys)[::2], "manifest.json")
    assert not out.exists() and not Path(f"{out}.lock").exists()  # nothing written


def test_foreign_or_mismatched_out_is_refused_untouched(
    artifact: Path,
    recorded: Path,
    reference: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "a.txt").write_text("mine")
    _refused(*_cli(_args(artifact, recorded, foreign), capsys)[::2], "not a bss2-farm store")
    assert [p.name for p in foreign.iterdir()] == ["a.txt"]
    before = sorted(p.name for p in recorded.iterdir())
    _refused(*_cli(_args(artifact, recorded, recorded), capsys)[::2], "not a `farm infer` output")
    assert sorted(p.name for p in recorded.iterdir()) == before
    assert not Path(f"{recorded}.lock").exists()  # refused before any lock was taken
    args = _args(artifact, recorded, reference)
    args[args.index("--seed") + 1] = str(SEED + 1)
    _refused(*_cli(args, capsys)[::2], "seed=7", "seed=8")


def test_circuit_marginal_posterior_ignores_circuits_with_one_note(
    artifact: Path,
    recorded: Path,
    reference: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "never-read.zarr"  # not read: the posterior reads no fingerprint
    out = tmp_path / "c.zarr"
    rc, _, err = _cli(_args(artifact, recorded, out, "--circuits", str(missing)), capsys)
    assert rc == 0, err
    notes = [line for line in err.splitlines() if "circuit-marginal" in line]
    assert len(notes) == 1 and str(missing) in notes[0]
    assert_same_store(reference, out)  # the answers of a run without --circuits


# ------------------------------------------------------------ circuit-aware posteriors (issue 25)
@pytest.fixture(scope="module")
def circuits(recorded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A circuits store of the recorded traces' chips x neurons, recorded in this process (~5 s:
    what `farm fingerprint` writes, without Ray)."""
    from farm.circuits import DEFAULT_REFERENCES
    from farm.circuits.actor import FingerprintJob, record_chip
    from farm.circuits.record import build_substrates
    from farm.circuits.store import FingerprintSpec, FingerprintStore

    rec = zarr.open_group(str(recorded), mode="r")
    out = tmp_path_factory.mktemp("infer") / "circuits.zarr"
    spec = FingerprintSpec(
        seed=3,
        chip_ids=tuple(int(c) for c in np.unique(rec["chip"][:])),
        neurons=tuple(int(n) for n in np.unique(rec["neuron"][:])),
        references=DEFAULT_REFERENCES,
        chip_model=ChipModel(),
    )
    store = FingerprintStore.create_or_resume(str(out), spec)
    substrates = build_substrates("emulator", spec.references, spec.chip_model)
    for position in range(len(spec.chip_ids)):
        record_chip(store, FingerprintJob(str(out), spec), substrates, position)
        store.mark_done(position)
    return out


@pytest.fixture(scope="module")
def circuit_artifact(
    artifact: Path, circuits: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A real artifact of a random circuit-aware handcrafted flow (no training), as `farm train
    npe --circuits` writes it: fingerprint statistics appended to the input."""
    import torch

    from farm.circuits import DEFAULT_REFERENCES, statistic_names
    from inference.artifacts import write_artifact
    from inference.nets.nsf import FlowConfig, NPEModel

    manifest = json.loads((artifact / "manifest.json").read_text())  # the marginal one's
    names = list(statistic_names(DEFAULT_REFERENCES))
    stats = {
        **manifest["standardization"],
        "circuit_mean": [0.0] * len(names),
        "circuit_std": [100.0] * len(names),
    }
    config = FlowConfig(
        variant="handcrafted", transforms=2, hidden_features=16, circuit_statistics=len(names)
    )
    torch.manual_seed(1)
    manifest = {
        k: v for k, v in manifest.items() if k not in ("fingerprint", "weights", "kind")
    } | {
        "architecture": config.to_dict(),
        "standardization": stats,
        "circuits": {
            "circuits": str(circuits),
            "names": names,
            "references": DEFAULT_REFERENCES.to_dict(),
            "identity": {},
        },
    }
    out = tmp_path_factory.mktemp("infer") / "npe-circuit-untrained"
    write_artifact(out, "npe_posterior", NPEModel(config, stats).state_dict(), manifest)
    return out


@pytest.fixture(scope="module")
def circuit_reference(
    circuit_artifact: Path, circuits: Path, recorded: Path, tmp_path_factory
) -> Path:
    """An in-process circuit-aware run over the recorded traces."""
    from inference.batch import run_infer

    out = tmp_path_factory.mktemp("infer") / "circuit-ref.zarr"
    summary = run_infer(
        _config(circuit_artifact, recorded, out, in_process=True, circuits=str(circuits))
    )
    assert summary["circuit_aware"] and summary["circuits_used"]
    return out


def test_circuit_aware_run_gives_the_draws_of_sample_and_assess_with_fingerprints(
    circuit_artifact: Path, circuits: Path, recorded: Path, circuit_reference: Path
) -> None:
    """Each block's draws are those of one `sample_and_assess(..., fingerprints=)` call, each
    trace with the fingerprint of its own circuit; another circuit's fingerprint changes them."""
    import torch

    from farm.circuits.store import FingerprintStore
    from inference import load_posterior
    from inference.batch import block_seed

    post = load_posterior(circuit_artifact)
    assert post.circuit_aware
    rec, got = (zarr.open_group(str(p), mode="r") for p in (recorded, circuit_reference))
    lookup = FingerprintStore.open(str(circuits)).lookup
    for block in (0, 2):
        rows = slice(block * BLOCK, (block + 1) * BLOCK)
        fps = lookup(rec["chip"][rows], rec["neuron"][rows])
        kw = {"traces": np.asarray(rec["trace"][rows], dtype=np.float64), "normalized": False}
        seed = block_seed(block_seed(SEED, block), 0)  # the block's first (only) flow call
        with _one_thread(torch):
            theta, _, checks = post.sample_and_assess(DRAWS, seed=seed, fingerprints=fps, **kw)
            other, _, _ = post.sample_and_assess(
                DRAWS, seed=seed, fingerprints=np.roll(fps, 1, axis=0), **kw
            )
        assert theta.tobytes() == np.asarray(got["draws"][rows]).tobytes(), block
        flagged = np.asarray(got["misspecification_flagged"][rows])
        assert list(flagged) == [bool(c["flagged"]) for c in checks]
        assert not np.array_equal(theta, other)  # the fingerprint is an input
    ident = got.attrs["identity"]["circuits"]
    assert ident["url"] == str(circuits) and ident["seed"] == 3
    assert got.attrs["circuits"] == str(circuits) and got.attrs["circuit_aware"] is True


class _one_thread:
    """One torch thread, as `farm infer` answers (its bytes are those of one thread)."""

    def __init__(self, torch) -> None:
        self.torch = torch

    def __enter__(self) -> None:
        self.before = self.torch.get_num_threads()
        self.torch.set_num_threads(1)

    def __exit__(self, *exc) -> None:
        self.torch.set_num_threads(self.before)


def test_circuit_aware_ray_actors_write_the_same_bytes(
    ray_session,
    circuit_artifact: Path,
    circuits: Path,
    recorded: Path,
    circuit_reference: Path,
    tmp_path: Path,
) -> None:
    from inference.batch import run_infer

    """The actor opens the circuits store and looks up each block's fingerprints itself (one
    actor: its start-up is the cost; the marginal test above covers several actors)."""
    out = tmp_path / "ray.zarr"
    summary = run_infer(
        _config(circuit_artifact, recorded, out, num_workers=1, circuits=str(circuits))
    )
    assert summary["num_workers"] == 1 and summary["circuits_used"]
    assert_same_store(circuit_reference, out)


def test_circuit_aware_refusals_exit_2_with_one_line_and_write_nothing(
    circuit_artifact: Path,
    circuits: Path,
    recorded: Path,
    circuit_reference: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    out = tmp_path / "post.zarr"
    # a circuit-aware posterior without --circuits
    _refused(*_cli(_args(circuit_artifact, recorded, out), capsys)[::2], "--circuits")
    # a trace whose circuit the store does not cover: named, with what the store covers
    rec = zarr.open_group(str(recorded), mode="r")
    neuron = np.asarray(rec["neuron"][:])
    free = int(np.setdiff1d(np.arange(512), neuron)[0])
    neuron[5] = free
    lab = tmp_path / "lab.npz"
    np.savez(lab, trace=rec["trace"][:], chip=rec["chip"][:], neuron=neuron)
    circuit = f"{int(rec['chip'][5])}:{free}"
    args = _args(circuit_artifact, lab, out, "--circuits", str(circuits))
    _refused(*_cli(args, capsys)[::2], circuit, "1 of its 96 circuits missing", "chips 0-7")
    # traces without chip/neuron ids; a missing store; another kind of store
    ids_less = tmp_path / "ids-less.npy"
    np.save(ids_less, np.asarray(rec["trace"][:4]))
    args = _args(circuit_artifact, ids_less, out, "--circuits", str(circuits))
    _refused(*_cli(args, capsys)[::2], "chip/neuron")
    args = _args(circuit_artifact, recorded, out, "--circuits", str(tmp_path / "none.zarr"))
    _refused(*_cli(args, capsys)[::2], "none.zarr", "does not exist", "farm fingerprint")
    args = _args(circuit_artifact, recorded, out, "--circuits", str(recorded))
    _refused(*_cli(args, capsys)[::2], "holds no circuits store")
    # a store recorded at other reference settings than the posterior's
    other = tmp_path / "other-refs.zarr"
    shutil.copytree(circuits, other)
    g = zarr.open_group(str(other), mode="r+")
    refs = dict(g.attrs["references"])
    refs["references"] = [dict(r) for r in refs["references"]]
    refs["references"][0]["name"] = "leak-2"
    g.attrs["references"] = refs
    args = _args(circuit_artifact, recorded, out, "--circuits", str(other))
    _refused(*_cli(args, capsys)[::2], "leak-2", "needs its training references")
    assert not out.exists() and not Path(f"{out}.lock").exists()  # nothing written
    # a resumed store made with another circuits store (here: the same one, elsewhere)
    moved = tmp_path / "moved.zarr"
    shutil.copytree(circuits, moved)
    before = (circuit_reference / "zarr.json").read_bytes()
    args = _args(circuit_artifact, recorded, circuit_reference, "--circuits", str(moved))
    _refused(*_cli(args, capsys)[::2], "circuits.url", "use another --out")
    assert (circuit_reference / "zarr.json").read_bytes() == before


def test_chip_map_draws_a_png(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "map.png"
    rc, out, err = _cli(["chip-map", str(reference), "--out", str(png)], capsys)
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc, _, err = _cli(["chip-map", str(tmp_path), "--out", str(png)], capsys)
    _refused(rc, err, "not a `farm infer` output")


def test_help_teaches_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("infer", "chip-map"):
        rc, out, _ = _cli([verb, "--help"], capsys)
        assert rc == 0 and "Example: farm" in out
