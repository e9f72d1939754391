"""Protocols as data: `step` stores unchanged, `multi-step` stores, features, posteriors, bad input.

One small multi-step store (and one tiny NPE trained on it) is shared by the whole module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from deploy.cli import main
from farm.defaults import ChipModel, Protocol, Regime, Sweep
from farm.errors import FarmInputError
from farm.features import FEATURE_NAMES, feature_names, spike_count_column, summarize
from farm.protocol import (
    BUILTIN_PROTOCOLS,
    MULTI_STEP_AMPLITUDES_NA,
    dump_protocol,
    load_protocol_file,
    resolve_protocol,
)
from farm.run.runner import run_farm
from farm.simulate import simulate_theta
from farm.store.sim_store import SimStore, StoreMismatch, open_dataset

MULTI = BUILTIN_PROTOCOLS["multi-step"]
S, T = MULTI.num_sweeps, MULTI.samples_per_sweep

# Digests of a 48-sample `step` store (seed 3, chunks of 16, in process) written by the farm before
# protocols existed (commit 326e716): decoded arrays and coordinates, then the attributes without
# created_at/created_by. The step protocol must keep reproducing both, bit for bit.
_STEP_ARRAYS_SHA = "59672e274008ffc12cdfe844e658251408e19e7adcf9c9d1a0d880ecc06a7eca"
_STEP_ATTRS_SHA = "9fae9501490f8ae9679e59ee36901f04c11ff65e33c7870dfebfa28300bbe8d5"
_NAMES = (
    "theta",
    "trace",
    "spike_count",
    "features",
    "chip",
    "neuron",
    "seed",
    "chunk_done",
    "time",
    "feature",
    "parameter",
)


def _digests(url: str) -> tuple[str, str]:
    s = SimStore.open(url)
    h = hashlib.sha256()
    for name in _NAMES:
        a = np.asarray(s.group[name][:])
        h.update(name.encode())
        h.update(
            "\n".join(map(str, a.tolist())).encode()
            if a.dtype.kind not in "iufb"
            else np.ascontiguousarray(a).tobytes()
        )
    attrs = {k: v for k, v in s.attrs.items() if k not in ("created_at", "created_by")}
    return h.hexdigest(), hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()


def _chunk_files(url: str) -> dict[str, str]:
    """sha256 of every file of a store; the root zarr.json without its creation time."""
    root, out = Path(url), {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            b = f.read_bytes()
            if f == root / "zarr.json":
                d = json.loads(b)
                d["attributes"].pop("created_at")
                b = json.dumps(d, sort_keys=True).encode()
            out[str(f.relative_to(root))] = hashlib.sha256(b).hexdigest()
    return out


@pytest.fixture(scope="module")
def multi_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """1200 box-prior samples under multi-step, in chunks of 200, in this process."""
    url = str(tmp_path_factory.mktemp("protocols") / "multi.zarr")
    run_farm(url, num_sims=1200, seed=7, chunk_size=200, in_process=True, protocol=MULTI)
    return url


def _one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, (code, err)
    return err


# ---------------------------------------------------------------- step: unchanged
def test_step_store_is_bit_identical_to_before_protocols(tmp_path, capsys):
    default, named = str(tmp_path / "default.zarr"), str(tmp_path / "named.zarr")
    run_farm(default, num_sims=48, seed=3, chunk_size=16, in_process=True)
    assert _digests(default) == (_STEP_ARRAYS_SHA, _STEP_ATTRS_SHA)
    assert (
        main(
            [
                "simulate",
                "--n",
                "48",
                "--seed",
                "3",
                "--chunk",
                "16",
                "--out",
                named,
                "--in-process",
                "-q",
                "--protocol",
                "step",
            ]
        )
        == 0
    )
    assert _chunk_files(named) == _chunk_files(default)  # every chunk file and the metadata
    ds = open_dataset(named)
    assert (
        "sweep" not in ds.coords
        and ds.trace.shape == (48, 1000)
        and list(ds.feature.values) == list(FEATURE_NAMES)
    )
    assert ds.attrs["protocol"] == Protocol().to_dict()


def test_a_single_step_sweep_is_the_step_protocol(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text(
        "sweeps:\n  - {t_on_us: 100, t_off_us: 700, duration_us: 1000, amplitude_na: 60}\n"
    )
    assert (
        load_protocol_file(path) == Protocol()
        and load_protocol_file(path).to_dict() == Protocol().to_dict()
    )


# ---------------------------------------------------------------- multi-step: layout and physics
def test_multi_step_store_layout_attrs_and_sweep_coordinate(multi_store):
    ds = xr.open_zarr(multi_store)  # plain xarray, no farm code
    assert ds.trace.shape == (1200, S * T) and ds.trace.dtype == np.int16
    assert "sweep" in ds.coords and ds.sweep.dims == ("time",)
    assert np.array_equal(ds.sweep.values, np.repeat(np.arange(S), T))
    assert np.all(
        np.diff(ds.time.values) > 0
    )  # a flat, increasing time axis: sweep k starts at k * duration
    assert ds.trace.groupby("sweep").mean().shape == (1200, S)
    assert (
        Protocol.from_dict(ds.attrs["protocol"]) == MULTI
        and ds.attrs["protocol"]["name"] == "multi-step"
    )
    assert (
        ds.attrs["num_sweeps"] == S
        and ds.attrs["reference_sweep"] == Regime.reference_sweep(MULTI) == 1
    )
    assert list(ds.feature.values) == list(feature_names(MULTI)) and ds.features.shape == (
        1200,
        S * len(FEATURE_NAMES),
    )
    assert ds.feature.values[0] == "spike_count@s0" and f"spike_count@s{S - 1}" in ds.feature.values
    # the f-I curve shows: more drive, more spiking, sweep by sweep
    counts = [float(ds.features.sel(feature=f"spike_count@s{k}").mean()) for k in range(S)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    # the regime reads the 60 nA sweep
    ref_amp = MULTI.sweep_list[ds.attrs["reference_sweep"]].amplitude_na
    assert ref_amp == Protocol().i_stim_na
    assert SimStore.open(multi_store).describe()["protocol"] == "multi-step (4 sweeps)"


def test_sweeps_run_on_the_same_circuit(multi_store):
    """Noise off: each sweep is exactly the same circuit's one-step response at its amplitude."""
    theta = open_dataset(multi_store).theta.values[:24]
    quiet = ChipModel(noise_mv_per_sqrt_us=0.0, adc_noise_lsb=0.0)  # mismatch stays on
    multi = simulate_theta(theta, seed=7, protocol=MULTI, chip_model=quiet)
    for k, amp in enumerate(MULTI_STEP_AMPLITUDES_NA):
        one = simulate_theta(theta, seed=7, protocol=Protocol(i_stim_na=amp), chip_model=quiet)
        assert np.array_equal(multi.trace[:, k * T : (k + 1) * T], one.trace), f"sweep {k}"
        assert np.array_equal(multi.chip, one.chip) and np.array_equal(multi.neuron, one.neuron)
        if k == Regime.reference_sweep(MULTI):
            assert np.array_equal(multi.spike_count, one.spike_count)


def test_sweep_noise_first_is_todays_then_independent(multi_store):
    ds = open_dataset(multi_store)
    theta, trace = ds.theta.values[:16], ds.trace.values[:16]
    first = simulate_theta(theta, seed=7, protocol=Protocol(i_stim_na=MULTI_STEP_AMPLITUDES_NA[0]))
    assert np.array_equal(trace[:, :T], first.trace)  # sweep 0 keeps the sample's noise key
    ref = simulate_theta(
        theta, seed=7, protocol=Protocol()
    )  # sweep 1 is at 60 nA, with its own noise
    assert (
        (trace[:, T : 2 * T] != ref.trace).any(axis=1).all()
    )  # every row: readout noise alone differs (3 codes rms)
    # with noise off the two are the same circuit's response bit for bit
    # (test_sweeps_run_on_the_same_circuit)


def test_multi_step_store_is_deterministic_across_chunking_and_actors(
    multi_store, tmp_path, ray_session
):
    other = str(tmp_path / "ray.zarr")
    run_farm(other, num_sims=1200, seed=7, chunk_size=300, num_chips=2, protocol=MULTI)
    a, b = open_dataset(multi_store), open_dataset(other)
    for name in ("theta", "trace", "spike_count", "features", "chip", "neuron", "seed"):
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name


def test_features_are_per_sweep(multi_store):
    ds = open_dataset(multi_store)
    trace, feats = ds.trace.values[:50], ds.features.values[:50]
    f = len(FEATURE_NAMES)
    for k, sweep in enumerate(MULTI.sweep_list):
        alone = Protocol(
            t_pre_us=sweep.t_on_us,
            t_stim_us=sweep.t_off_us - sweep.t_on_us,
            t_post_us=sweep.duration_us - sweep.t_off_us,
            i_stim_na=sweep.amplitude_na,
        )
        assert np.array_equal(
            feats[:, k * f : (k + 1) * f], summarize(trace[:, k * T : (k + 1) * T], alone)
        )
    assert np.array_equal(
        feats[:, spike_count_column(MULTI)], feats[:, f + FEATURE_NAMES.index("spike_count")]
    )


def test_ramp_sweep_and_yaml_round_trip(tmp_path, multi_store):
    ramp = Protocol(
        sweeps=(Sweep(100, 700, 1000, 60.0), Sweep(100, 700, 1000, 0.0, amplitude_end_na=200.0)),
        name="step-and-ramp",
    )
    path = tmp_path / "p.yaml"
    path.write_text(dump_protocol(ramp))
    assert load_protocol_file(path) == ramp == resolve_protocol(str(path))
    assert resolve_protocol("multi-step") == Protocol.from_dict(
        json.loads(json.dumps(MULTI.to_dict()))
    )
    # circuits that fire early at 60 nA: a ramp from 0 nA (60 nA after 180 µs) fires later, and
    # still fires
    ds = open_dataset(multi_store)
    lat = ds.features.sel(feature="first_spike_latency_us@s1").values
    theta = ds.theta.values[lat < 50][:8]
    assert len(theta) >= 2
    f = summarize(simulate_theta(theta, seed=1, protocol=ramp).trace, ramp)
    latency = FEATURE_NAMES.index("first_spike_latency_us")
    step_lat, ramp_lat = f[:, latency], f[:, len(FEATURE_NAMES) + latency]
    assert np.all(ramp_lat > step_lat + 50) and np.all(ramp_lat < 600), (step_lat, ramp_lat)


def test_cli_protocol_file_equals_builtin(tmp_path, capsys):
    path = tmp_path / "multi.yaml"
    path.write_text(dump_protocol(MULTI))
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    for out, proto in ((a, "multi-step"), (b, str(path))):
        assert (
            main(
                [
                    "simulate",
                    "--n",
                    "20",
                    "--seed",
                    "2",
                    "--chunk",
                    "10",
                    "--out",
                    out,
                    "--in-process",
                    "-q",
                    "--protocol",
                    proto,
                ]
            )
            == 0
        )
    assert _chunk_files(a) == _chunk_files(b)
    assert (
        main(["simulate", "--n", "30", "--seed", "2", "--out", a, "--in-process", "-q"]) == 0
    )  # no --protocol: the store's own
    err = _one_line_exit_2(
        capsys,
        [
            "simulate",
            "--n",
            "40",
            "--seed",
            "2",
            "--out",
            a,
            "--in-process",
            "-q",
            "--protocol",
            "step",
        ],
    )
    assert "step" in err and "multi-step" in err


# ---------------------------------------------------------------- bad input
BAD_FILES = [
    (
        "unknown-key.yaml",
        "sweeps:\n"
        "  - {t_on_us: 100, t_off_us: 700, duration_us: 1000, amplitude_na: 60}\n"
        "  - {t_on_us: 100}\n",
        "missing keys",
    ),
    (
        "negative.yaml",
        "sweeps:\n"
        "  - {t_on_us: -5, t_off_us: 700, duration_us: 1000, amplitude_na: 60}\n"
        "  - {t_on_us: 100, t_off_us: 700, duration_us: 1000, amplitude_na: 9}\n",
        "t_on_us=-5",
    ),
    (
        "lengths.yaml",
        "sweeps:\n"
        "  - {t_on_us: 100, t_off_us: 700, duration_us: 1000, amplitude_na: 60}\n"
        "  - {t_on_us: 100, t_off_us: 700, duration_us: 900, amplitude_na: 9}\n",
        "duration_us",
    ),
    (
        "nan.yaml",
        "sweeps:\n"
        "  - {t_on_us: 100, t_off_us: 700, duration_us: 1000, amplitude_na: .nan}\n"
        "  - {t_on_us: 100, t_off_us: 700, duration_us: 1000, amplitude_na: 9}\n",
        "amplitude_na",
    ),
    (
        "text.yaml",
        "sweeps:\n"
        "  - {t_on_us: 100, t_off_us: 700, duration_us: 1000, amplitude_na: lots}\n"
        "  - {t_on_us: 100, t_off_us: 700, duration_us: 1000, amplitude_na: 9}\n",
        "lots",
    ),
    ("empty.yaml", "sweeps: []\n", "non-empty"),
    ("list.yaml", "- 1\n- 2\n", "mapping"),
    ("broken.yaml", "sweeps: [\n", "YAML"),
    ("extra.yaml", "dt_us: 0.1\nvoltage: 3\n", "voltage"),
]


@pytest.mark.parametrize("name, text, needle", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_malformed_protocol_file_is_exit_2_one_line(tmp_path, capsys, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    err = _one_line_exit_2(
        capsys,
        [
            "simulate",
            "--n",
            "10",
            "--out",
            str(tmp_path / "x.zarr"),
            "--in-process",
            "-q",
            "--protocol",
            str(path),
        ],
    )
    assert needle in err and "--protocol" in err
    assert not (tmp_path / "x.zarr").exists()


def test_unknown_protocol_name_is_exit_2(tmp_path, capsys):
    err = _one_line_exit_2(
        capsys,
        [
            "simulate",
            "--n",
            "10",
            "--out",
            str(tmp_path / "x.zarr"),
            "--in-process",
            "--protocol",
            "multistep",
        ],
    )
    assert "multistep" in err and "multi-step" in err
    with pytest.raises(FarmInputError, match="does not exist"):
        resolve_protocol(str(tmp_path / "missing.yaml"))


def test_training_refuses_stores_of_different_protocols(multi_store, tmp_path):
    from inference.data.datasets import StoreSet

    step = str(tmp_path / "step.zarr")
    run_farm(step, num_sims=20, seed=1, chunk_size=20, in_process=True)
    with pytest.raises(StoreMismatch, match="protocol"):
        StoreSet([multi_store, step])


# ---------------------------------------------------------------- inference and serving
@pytest.fixture(scope="module")
def multi_npe(multi_store, tmp_path_factory, ray_session) -> Path:
    from inference.training.api import train

    out = tmp_path_factory.mktemp("npe") / "multi-hc"
    train("npe", [multi_store], str(out), epochs=1, batch_size=64, cpus_per_worker=1, quiet=True)
    return out


def test_multi_step_posterior_takes_the_full_observation(multi_npe, multi_store):
    from inference import load_posterior

    post = load_posterior(multi_npe)
    manifest = json.loads((multi_npe / "manifest.json").read_text())
    assert Protocol.from_dict(manifest["protocol"]) == MULTI and manifest["trace_length"] == S * T
    assert manifest["feature_names"] == list(feature_names(MULTI)) and post.protocol == MULTI
    obs = open_dataset(multi_store).trace.values[3]
    flat = post.sample(50, trace=obs, seed=1)
    stacked = post.sample(50, trace=obs.reshape(S, T), seed=1)
    assert flat.shape == (50, 7) and np.array_equal(flat, stacked)
    assert post.sample_batched(5, traces=np.stack([obs, obs]).reshape(2, S, T), seed=0).shape == (
        2,
        5,
        7,
    )
    with pytest.raises(ValueError, match=r"must be \(4000\) or \(4, 1000\)") as e:
        post.sample(10, trace=obs[:T])  # a step observation
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="features shape"):
        post.sample(10, features=np.zeros(len(FEATURE_NAMES)))


def test_artifact_without_protocol_reads_as_step(multi_npe, tmp_path):
    from inference.artifacts import read_artifact

    old = tmp_path / "old"
    shutil.copytree(multi_npe, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["protocol"]
    (old / "manifest.json").write_text(json.dumps(m))
    manifest, _ = read_artifact(old, "npe_posterior")
    assert Protocol.from_dict(manifest["protocol"]) == Protocol()


def test_summary_network_reads_every_sweep():
    import torch

    from inference.nets.embeddings import TraceCNN

    for stem in ("pooled", "patch"):
        net = TraceCNN([500.0] * S, [60.0] * S, stem=stem)
        x = (torch.rand(2, S * T) * 600 + 200).requires_grad_(True)
        net(x).sum().backward()
        per_sweep = x.grad.abs().reshape(2, S, T).sum(dim=(0, 2))
        assert torch.all(per_sweep > 0), (stem, per_sweep)


def test_served_observation_shapes():
    from deploy.serve.observations import as_observation
    from deploy.serve.schemas import SampleRequest

    obs = np.full(S * T, 500)
    assert as_observation(obs.tolist(), MULTI, S * T).shape == (S * T,)
    assert as_observation(obs.reshape(S, T).tolist(), MULTI, S * T).shape == (S * T,)
    for bad in (obs[:T].tolist(), obs.reshape(2, 2 * T).tolist(), [[500] * T, [500] * 3]):
        with pytest.raises(ValueError, match=r"\(4000,\) or \(4, 1000\)"):
            as_observation(bad, MULTI, S * T)
    with pytest.raises(ValueError, match=r"\(1000,\)"):
        as_observation(obs.tolist(), Protocol(), T)
    assert (
        SampleRequest(trace=obs.reshape(S, T).tolist()).trace is not None
    )  # the body model takes both forms
