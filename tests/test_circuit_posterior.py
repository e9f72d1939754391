"""Circuit-aware posteriors (issue 25): training on fresh fingerprints, the fingerprint= API.

The shared ``circuit_npe`` (tests/conftest.py) is trained for 2 epochs: these tests check the
contract (inputs, errors, determinism, the fingerprint check), not the posterior's quality, which
`farm evaluate`'s own-circuit check measures (docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from farm.circuits.record import build_substrates, record_fingerprints
from farm.circuits.store import FingerprintStore
from farm.errors import FarmInputError
from farm.store.sim_store import SimStore
from inference import load_posterior
from inference.data.circuits import CACHE_DIR, build_circuit_inputs, open_cache
from inference.data.datasets import StoreSet, plan_data


def _observations(store: str, n: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = SimStore.open(store)
    return (
        np.asarray(s.group["trace"][:n]),
        np.asarray(s.group["chip"][:n]),
        np.asarray(s.group["neuron"][:n]),
    )


@pytest.fixture(scope="module")
def observed(circuit_npe, npe_stores):
    """Held-out traces and their circuits' fingerprints from the circuits store."""
    traces, chip, neuron = _observations(npe_stores[1])
    return traces, FingerprintStore.open(circuit_npe[1]).lookup(chip, neuron)


def test_circuit_aware_posterior_takes_the_fingerprint(circuit_npe, observed):
    post = load_posterior(circuit_npe[0])
    traces, fingerprints = observed
    assert post.circuit_aware and post.fingerprint_shape == (6, 400)
    assert post.circuit_references == FingerprintStore.open(circuit_npe[1]).references
    one = post.sample(50, trace=traces[1], fingerprint=fingerprints[1], seed=4)
    batched = post.sample_batched(50, traces=traces, fingerprints=fingerprints, seed=4)
    assert one.shape == (50, 7) and batched.shape == (4, 50, 7)
    np.testing.assert_array_equal(post.prior.support(one), True)
    lp = post.log_prob(one[:5], trace=traces[1], fingerprint=fingerprints[1])
    assert lp.shape == (5,) and np.isfinite(lp).all()
    assert post.map(trace=traces[1], fingerprint=fingerprints[1], num_samples=50).shape == (7,)
    # the fingerprint is an input: another circuit's changes the answer
    other = post.sample(50, trace=traces[1], fingerprint=fingerprints[2], seed=4)
    assert not np.array_equal(one, other)


def test_missing_or_malformed_fingerprint_is_one_line_naming_it(circuit_npe, observed):
    post = load_posterior(circuit_npe[0])
    trace, fp = observed[0][0], observed[1][0]
    cases = {
        "give fingerprint=": {},
        "must be (6, 400)": {"fingerprint": fp[:, :100]},
        "ADC codes must lie in [0, 1023]": {"fingerprint": fp + 2000},
    }
    for expected, kw in cases.items():
        with pytest.raises(ValueError, match="fingerprint") as err:
            post.sample(5, trace=trace, **kw)
        assert expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="give fingerprints="):
        post.sample_batched(5, traces=observed[0])


def test_circuit_marginal_posterior_refuses_a_fingerprint(handcrafted_npe, observed):
    post = load_posterior(handcrafted_npe[0])
    assert not post.circuit_aware and post.fingerprint_shape is None
    with pytest.raises(ValueError, match="circuit-marginal"):
        post.sample(5, trace=observed[0][0], fingerprint=observed[1][0])


def test_fingerprint_unlike_training_is_flagged(circuit_npe, observed):
    """A circuit of a chip model with 3x the mismatch: its fingerprint lies outside training's."""
    post = load_posterior(circuit_npe[0])
    check = post.manifest["metrics"]["circuit_check"]
    assert check["quantile"] == 0.99 and check["num_calibration"] >= 100
    traces, fingerprints = observed
    wild = replace(
        post.chip_model,
        mismatch_gain_uncalibrated=3 * post.chip_model.mismatch_gain_uncalibrated,
        mismatch_offset_mv=3 * post.chip_model.mismatch_offset_mv,
    )
    refs = post.circuit_references
    far = record_fingerprints(
        build_substrates("emulator", refs, wild), refs, 9, np.arange(40) % 8, np.arange(40) * 7
    )
    flagged = [
        any(r.startswith("fingerprint unlike") for r in a["reasons"])
        for a in post.misspecification_batched(
            traces=np.repeat(traces[:1], 40, axis=0), fingerprints=far
        )
    ]
    own = post.misspecification_batched(traces=traces, fingerprints=fingerprints)
    assert not any(r.startswith("fingerprint") for a in own for r in a["reasons"])
    assert np.mean(flagged) >= 0.5  # 3-sigma circuits are common in a 3x-mismatch chip


def test_to_sbi_takes_trace_then_fingerprint(circuit_npe, observed):
    post = load_posterior(circuit_npe[0])
    trace, fp = observed[0][0], observed[1][0]
    sbi_post = post.to_sbi()
    x = torch.as_tensor(np.concatenate([trace, fp.ravel()]), dtype=torch.float32)
    theta = torch.as_tensor(post.sample(3, trace=trace, fingerprint=fp, seed=0))
    np.testing.assert_allclose(
        sbi_post.log_prob(theta, x=x).numpy(),
        post.log_prob(theta.numpy(), trace=trace, fingerprint=fp),
        rtol=1e-4,
    )


def test_training_rows_get_fresh_deterministic_fingerprints(circuit_npe, npe_stores, tmp_path):
    """Two rows of one circuit see different noise, unlike the store's one recording; rebuilding
    the cache gives the same bits."""
    stores = StoreSet([npe_stores[0]])
    plan = plan_data(stores)
    inputs = build_circuit_inputs(stores, plan, circuit_npe[1], tmp_path)
    cached = np.asarray(open_cache(inputs, 1)[0][:])
    trained = np.asarray(
        open_cache(replace(inputs, cache=str(circuit_npe[0] / CACHE_DIR)), 1)[0][:]
    )
    np.testing.assert_array_equal(cached, trained)  # the training run's cache: the same bits
    chip = np.asarray(stores.stores[0].group["chip"][:])
    neuron = np.asarray(stores.stores[0].group["neuron"][:])
    key = chip.astype(np.int64) * 512 + neuron
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    twice = first[counts > 1][0]
    again = np.flatnonzero(key == key[twice])[1]
    assert not np.array_equal(cached[twice], cached[again])
    assert np.isfinite(cached).all() and cached.shape == (8000, len(inputs.names))


def test_uncovered_circuits_refused_before_training(
    npe_stores, tmp_path: Path, ray_session, capsys
):
    from deploy.cli import main
    from farm.circuits.runner import FingerprintConfig, run_fingerprint

    partial = tmp_path / "chip0.zarr"
    run_fingerprint(FingerprintConfig(str(partial), chip_ids=(0,), neurons=tuple(range(8))))
    args = ["train", "npe", "--store", npe_stores[0], "--circuits", str(partial)]
    assert main([*args, "--out", str(tmp_path / "npe"), "-q"]) == 2
    lines = [x for x in capsys.readouterr().err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert "does not cover circuit" in lines[0] and "chips 0 x neurons 0-7" in lines[0]
    assert not (tmp_path / "npe" / "weights.pt").exists()
    with pytest.raises(FarmInputError, match="not in circuits store"):
        FingerprintStore.open(partial).lookup([1], [0])


@pytest.mark.parametrize("variant", ["handcrafted", "summary-net", "hybrid"])
@pytest.mark.parametrize("estimator", ["nsf", "flow-matching"])
def test_every_variant_and_estimator_reads_the_circuit(variant: str, estimator: str):
    """The circuit's statistics reach the loss of every embedding and both estimators."""
    from farm.circuits import DEFAULT_REFERENCES
    from farm.circuits.statistics import statistic_names
    from farm.defaults import PriorBox, Protocol
    from farm.features import FEATURE_NAMES
    from inference.nets.embeddings import model_input
    from inference.nets.flow_matching import FlowMatchingConfig, FlowMatchingModel
    from inference.nets.nsf import FlowConfig, NPEModel

    c = len(statistic_names(DEFAULT_REFERENCES))
    box, t = PriorBox(), Protocol().num_samples
    stats = {
        "low": list(box.low),
        "high": list(box.high),
        "feature_mean": [0.0] * len(FEATURE_NAMES),
        "feature_std": [1.0] * len(FEATURE_NAMES),
        "theta_mean": [0.0] * 7,
        "theta_std": [1.0] * 7,
        "trace_mean": 500.0,
        "trace_std": 100.0,
        "circuit_mean": [0.0] * c,
        "circuit_std": [1.0] * c,
    }
    small = {"cnn_channels": (4,), "cnn_input_pool": 8, "embedding_features": 4}
    model = (
        NPEModel(FlowConfig(variant=variant, circuit_statistics=c, **small), stats)
        if estimator == "nsf"
        else FlowMatchingModel(
            FlowMatchingConfig(variant=variant, circuit_statistics=c, **small), stats
        )
    )
    assert model.x_fields[-1] == "circuit"
    rng = np.random.default_rng(0)
    batch = {
        "features": rng.normal(size=(8, len(FEATURE_NAMES))).astype(np.float32),
        "trace": rng.integers(300, 700, size=(8, t)).astype(np.int16),
        "circuit": rng.normal(size=(8, c)).astype(np.float32),
    }
    theta = torch.from_numpy(
        (np.asarray(box.low) + (np.asarray(box.high) - np.asarray(box.low)) * 0.5).astype(
            np.float32
        )
    ).expand(8, -1)
    loss = model(theta, torch.from_numpy(model_input(batch, model.x_fields)))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.embedding.circuit[0].weight.grad.abs().sum() > 0
    assert "circuit_statistics" in model.config.to_dict()


def test_circuit_aware_ensembles_refused_before_training(npe_stores, tmp_path: Path):
    from inference.defaults import TrainConfig
    from inference.training.api import train

    config = TrainConfig(circuits=str(tmp_path / "circuits.zarr"))
    with pytest.raises(FarmInputError, match="circuit-aware ensembles are not supported"):
        train("npe", [npe_stores[0]], str(tmp_path / "npe"), config, ensemble=2)
    assert not (tmp_path / "npe").exists()
