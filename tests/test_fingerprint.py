"""Circuit fingerprints (issue 25): `farm fingerprint`, its store, and runs on given circuits.

What a user sees: the same seed gives the same bytes whatever the actors; an interrupted run
resumes without gaps or duplicates; a store is written by one run at a time and never into
someone else's folder; one circuit is ``.sel(chip=, neuron=)``; `simulate_theta` on a farm row's
own circuit reproduces that row; bad input is exit 2 with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploy.cli import main
from farm.circuits.record import build_substrates, record_fingerprints
from farm.circuits.references import DEFAULT_REFERENCES, ReferenceSet
from farm.circuits.runner import FingerprintConfig, run_fingerprint
from farm.circuits.store import FingerprintMismatch, FingerprintStore, open_fingerprints
from farm.defaults import ChipModel, Protocol
from farm.errors import FarmInputError
from farm.store.lock import StoreLock, StoreLocked
from farm.store.paths import StoreRefused

CHIPS = (2, 9, 700)
NEURONS = (0, 5, 511)
SEED = 4


def config(out: Path, **kw) -> FingerprintConfig:
    settings = {"chip_ids": CHIPS, "neurons": NEURONS, "seed": SEED, "num_actors": 1} | kw
    return FingerprintConfig(out=str(out), **settings)


def files(store: Path) -> dict[str, bytes]:
    """Every object of a store by relative path; the root zarr.json without its creation time."""
    out = {}
    for p in sorted(store.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p == store / "zarr.json":
                meta = json.loads(data)
                meta["attributes"].pop("created_at")
                data = json.dumps(meta, sort_keys=True).encode()
            out[str(p.relative_to(store))] = data
    return out


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory: pytest.TempPathFactory, ray_session) -> Path:
    out = tmp_path_factory.mktemp("fp") / "circuits.zarr"
    summary = run_fingerprint(config(out, num_actors=1))
    assert summary["complete"] and summary["recorded_now"] == len(CHIPS)
    return out


def test_same_seed_bit_identical_whatever_the_actors(reference_store: Path, tmp_path: Path):
    out = tmp_path / "two-actors.zarr"
    summary = run_fingerprint(config(out, num_actors=2))
    assert summary["num_actors"] == 2
    assert files(out) == files(reference_store)
    again = run_fingerprint(config(out, num_actors=2))  # nothing left to do
    assert again["recorded_now"] == 0 and again["skipped"] == len(CHIPS)


def test_resume_after_interruption(reference_store: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "interrupted.zarr"
    mark_done = FingerprintStore.mark_done

    def interrupt_after_first(self, position):
        mark_done(self, position)
        raise KeyboardInterrupt  # Ctrl-C right after the first chip was flagged

    monkeypatch.setattr(FingerprintStore, "mark_done", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_fingerprint(config(out))
    monkeypatch.undo()
    assert FingerprintStore.open(out).done_mask().sum() == 1
    summary = run_fingerprint(config(out, num_actors=2))
    assert summary["recorded_now"] == len(CHIPS) - 1 and summary["complete"]
    ds = open_fingerprints(out)
    assert ds.chip.values.tolist() == list(CHIPS)  # no gaps, no duplicates
    assert ds.neuron.values.tolist() == list(NEURONS)
    assert (ds.fingerprint.values >= 0).all()  # no unwritten (-1) codes
    assert files(out) == files(reference_store)


def test_an_actor_that_dies_is_replaced_and_the_store_is_the_same(
    reference_store: Path, tmp_path: Path, monkeypatch
):
    marker = tmp_path / "crashed"
    monkeypatch.setenv("FARM_FINGERPRINT_CRASH_MARKER", str(marker))
    out = tmp_path / "retried.zarr"
    summary = run_fingerprint(config(out, num_actors=2))
    assert marker.exists() and summary["chips_retried"] == 1 and summary["complete"]
    assert files(out) == files(reference_store)


def test_one_writer_at_a_time(tmp_path: Path):
    out = tmp_path / "locked.zarr"
    with StoreLock(str(out)):
        with pytest.raises(StoreLocked, match="is being written by") as err:
            run_fingerprint(config(out))
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_refuses_foreign_paths(tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StoreRefused, match="nothing was touched"):
        run_fingerprint(config(foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert not Path(f"{foreign}.lock").exists()


def test_refuses_other_settings(reference_store: Path):
    with pytest.raises(FingerprintMismatch, match="seed"):
        run_fingerprint(config(reference_store, seed=SEED + 1))


def test_sel_picks_one_circuit(reference_store: Path):
    ds = open_fingerprints(reference_store)
    assert ds.fingerprint.dims == ("chip", "neuron", "reference", "time")
    assert ds.fingerprint.dtype == np.int16
    one = ds.fingerprint.sel(chip=9, neuron=511)
    assert one.shape == (len(DEFAULT_REFERENCES.references), 400)
    subs = build_substrates("emulator", DEFAULT_REFERENCES, ChipModel())
    direct = record_fingerprints(subs, DEFAULT_REFERENCES, SEED, np.array([9]), np.array([511]))
    np.testing.assert_array_equal(one.values, direct[0])
    assert list(ds.reference.values) == list(DEFAULT_REFERENCES.names)
    assert ReferenceSet.from_dict(ds.attrs["references"]) == DEFAULT_REFERENCES
    assert Protocol.from_dict(ds.attrs["protocol"]) == DEFAULT_REFERENCES.protocol
    assert ds.attrs["seed"] == SEED and ds.attrs["emulator_version"]
    # circuits differ from each other (the point of a fingerprint)
    assert not np.array_equal(one.values, ds.fingerprint.sel(chip=9, neuron=5).values)


def test_verify_names_damage_and_repair_restores(reference_store: Path, tmp_path: Path, capsys):
    import shutil

    out = tmp_path / "damaged.zarr"
    shutil.copytree(reference_store, out)
    assert main(["verify", str(out)]) == 0
    assert "3 flagged chips read, 0 damaged" in capsys.readouterr().out
    chunk = out / "fingerprint" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])  # truncated: the crc32c fails
    assert main(["verify", str(out)]) == 1
    captured = capsys.readouterr()
    assert "chip 9: fingerprint unreadable" in captured.out
    assert main(["verify", str(out), "--repair", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repaired"] == [9]
    run_fingerprint(config(out))
    assert files(out) == files(reference_store)


def test_simulate_theta_on_given_circuits(tmp_path: Path):
    from farm.run.config import FarmConfig
    from farm.run.runner import run_farm
    from farm.simulate import simulate_theta
    from farm.store.sim_store import open_dataset

    store = tmp_path / "sims.zarr"
    run_farm(FarmConfig(str(store), num_sims=12, seed=3, chunk_size=12, in_process=True))
    ds = open_dataset(store)
    theta, chip, neuron = ds.theta.values, ds.chip.values, ds.neuron.values
    trace = ds.trace.values
    # the farm's own rows, given their circuits explicitly (per row) ...
    given = simulate_theta(theta, seed=3, chip=chip, neuron=neuron)
    np.testing.assert_array_equal(given.trace, trace)
    np.testing.assert_array_equal(given.chip, chip)
    # ... or one row as scalars, and without circuits (the placement stream) as before
    row = simulate_theta(theta[4], seed=3, first_index=4, chip=int(chip[4]), neuron=neuron[4])
    np.testing.assert_array_equal(row.trace[0], trace[4])
    np.testing.assert_array_equal(simulate_theta(theta, seed=3).trace, trace)
    # another circuit (here one chip for all rows, neurons placed) gives another trace
    other = simulate_theta(theta, seed=3, chip=900)
    assert (other.chip == 900).all() and (other.neuron == neuron).all()
    assert not np.array_equal(other.trace, trace)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chip": 1024}, "chip=1024 outside [0, 1023]"),
        ({"neuron": -1}, "neuron=-1 outside [0, 511]"),
        ({"neuron": [1, 2]}, "neuron has 2 ids for 3 rows"),
        ({"chip": 1.5}, "chip=1.5 must be integer ids"),
    ],
)
def test_simulate_theta_rejects_bad_circuits(kwargs: dict, message: str):
    from farm.prior import BoxPrior
    from farm.simulate import simulate_theta

    with pytest.raises(FarmInputError) as err:
        simulate_theta(BoxPrior().sample(3, seed=1), seed=1, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--chip-ids", "5-2"], "--chip-ids"),
        (["--chip-ids", "1024"], "--chip-ids"),
        (["--chip-ids", "x"], "--chip-ids"),
        (["--chip-ids", "1", "--neurons", "0-600"], "[0, 511]"),
        (["--chip-ids", "1", "--neurons", "9-3"], "--neurons"),
        (["--chip-ids", "1", "--substrate", "gpu"], "--substrate"),
        ([], "--chip-ids"),
    ],
)
def test_bad_input_exit_2_one_line(args: list[str], needle: str, tmp_path: Path, capsys):
    out = tmp_path / "c.zarr"
    assert main(["fingerprint", *args, "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()
