"""Amortized NPE: held-out recovery near the nominal rate, support, the contract, artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from farm.defaults import Protocol
from farm.store.sim_store import SimStore
from inference import load_posterior


@pytest.fixture(scope="module")
def stores(npe_stores) -> tuple[str, str]:
    return npe_stores


@pytest.fixture(scope="module")
def handcrafted(handcrafted_npe):
    return handcrafted_npe


@pytest.fixture(scope="module")
def summary_net(summary_net_npe):
    return summary_net_npe


@pytest.fixture(scope="module")
def hybrid(stores, ray_session, tmp_path_factory: pytest.TempPathFactory):
    """A hybrid NPE (NSF, its default architecture, 2 epochs: the contract, not its quality)."""
    from inference.training.api import train
    from inference.training.tasks import NPETask

    out = tmp_path_factory.mktemp("hy") / "npe-hybrid"
    metrics = train(
        NPETask(features="hybrid"),
        [stores[0]],
        str(out),
        epochs=2,
        batch_size=256,
        cpus_per_worker=1,
        quiet=True,
    )
    return out, metrics


def _heldout(path: str, n: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = SimStore.open(path)
    return (
        np.asarray(s.group["theta"][:n]),
        np.asarray(s.group["trace"][:n]),
        np.asarray(s.group["features"][:n]),
    )


def test_handcrafted_recovers_heldout_parameters_at_about_the_nominal_rate(
    handcrafted, stores
) -> None:
    out, _ = handcrafted
    post = load_posterior(out)
    theta, trace, _ = _heldout(stores[1])
    samples = post.sample_batched(400, traces=trace, seed=0)
    lo, hi = np.quantile(samples, [0.05, 0.95], axis=1)
    coverage = float(np.mean((theta >= lo) & (theta <= hi)))
    width = float(np.mean((hi - lo) / (post.prior.high - post.prior.low)))
    assert 0.8 <= coverage <= 0.97, coverage  # nominal 0.9
    assert width < 0.75, width  # and the intervals are informative, not the prior box


def test_the_heldout_check_uses_only_the_test_split_and_records_it(handcrafted) -> None:
    out, metrics = handcrafted
    h, sp = metrics["heldout"], metrics["splits"]
    assert h["split"] == "test" and 0 < h["num_observations"] <= metrics["num_test"]
    assert (sp["train_fraction"], sp["val_fraction"], sp["test_fraction"]) == pytest.approx(
        (0.8, 0.1, 0.1)
    )
    assert sp["rows"] == {
        "train": metrics["num_train"],
        "val": metrics["num_val"],
        "test": metrics["num_test"],
    }
    # 8000 rows, 10 % test: the hash gives ~800 (std ~27); the check never sees training rows
    assert 650 < metrics["num_test"] < 950 and metrics["num_train"] > 6 * metrics["num_test"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["splits"] == sp and all("lr" in row for row in manifest["history"])


def test_samples_stay_in_the_support_and_are_reproducible(handcrafted, stores) -> None:
    post = load_posterior(handcrafted[0])
    _, trace, feats = _heldout(stores[1], 3)
    s = post.sample(2000, trace=trace[0], seed=7)
    assert s.shape == (2000, 7) and s.dtype == np.float32
    assert post.prior.support(s).all()
    np.testing.assert_array_equal(s, post.sample(2000, trace=trace[0], seed=7))
    np.testing.assert_array_equal(
        s, post.sample(2000, features=feats[0], seed=7)
    )  # same statistics, same draws
    assert post.sample_batched(5, traces=trace, seed=1).shape == (3, 5, 7)
    m = post.map(trace=trace[0], num_samples=200)
    assert m.shape == (7,) and post.prior.support(m[None]).all()
    lp = post.log_prob(np.vstack([s[:4], post.prior.high + 1.0]), trace=trace[0])
    assert lp.dtype == np.float64 and np.isfinite(lp[:4]).all() and lp[4] == -np.inf
    assert (
        post.log_prob(m, trace=trace[0])[0] >= np.max(post.log_prob(s[:200], trace=trace[0])) - 1e-6
    )


def test_a_trace_observation_leaves_torch_on_the_threads_it_was_given(handcrafted, stores) -> None:
    """Serve replicas pin torch to one thread; the handcrafted summary must not undo it.

    The summary is a numba OpenMP kernel. numba's OpenMP launch sets the calling thread's OpenMP
    thread count to every core, and torch shares it: without
    ``inference.threads.torch_threads_kept`` a replica ran on two threads after its first trace
    (far slower on a busy 2-core machine). On a one-core machine the check is vacuous.
    """
    post = load_posterior(handcrafted[0])
    _, trace, _ = _heldout(stores[1], 2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        post.sample(10, trace=trace[0], seed=1)
        post.misspecification(trace=trace[1])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_log_prob_is_a_normalised_density_in_lsb_space(handcrafted, stores) -> None:
    """Importance check: E_q[1/q] over the box volume = 1 for a density supported in the box."""
    post = load_posterior(handcrafted[0])
    _, trace, _ = _heldout(stores[1], 1)
    box = post.prior
    u = box.sample(20_000, seed=3)
    vol = float(np.prod(box.high - box.low))
    est = float(np.mean(np.exp(post.log_prob(u, trace=trace[0]))) * vol)
    assert 0.8 < est < 1.2, est


def test_summary_net_variant_honours_the_contract(summary_net, stores) -> None:
    out, metrics = summary_net
    post = load_posterior(out)
    assert post.variant == "summary-net" and not post.accepts_features and post.trace_length == 1000
    arch = json.loads((out / "manifest.json").read_text())["architecture"]
    assert (arch["estimator"], arch["cnn_input_pool"], arch["time_samples"]) == (
        "flow-matching",
        2,
        2,
    )
    _, trace, feats = _heldout(stores[1], 4)
    s = post.sample_batched(50, traces=trace, seed=0)
    assert s.shape == (4, 50, 7) and post.prior.support(s.reshape(-1, 7)).all()
    with pytest.raises(ValueError, match="features"):
        post.sample(10, features=feats[0])
    assert metrics["epochs_trained"] == 1


def test_artifact_round_trips_without_pickle_and_refuses_incompatible_ones(
    handcrafted, tmp_path, stores
) -> None:
    out, metrics = handcrafted
    state = torch.load(out / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    manifest = json.loads((out / "manifest.json").read_text())
    for key in (
        "architecture",
        "prior",
        "feature_names",
        "standardization",
        "protocol",
        "store_fingerprint",
        "package_version",
        "emulator_version",
        "metrics",
    ):
        assert key in manifest, key
    a, b = load_posterior(out), load_posterior(out)
    _, trace, _ = _heldout(stores[1], 1)
    np.testing.assert_array_equal(
        a.sample(100, trace=trace[0], seed=2), b.sample(100, trace=trace[0], seed=2)
    )
    assert a.fingerprint == manifest["fingerprint"]
    with pytest.raises(ValueError, match="protocol"):
        load_posterior(out, protocol=Protocol(i_stim_na=99.0))
    for key, value, match in (
        ("emulator_version", "0.0", "emulator_version"),
        ("format_version", "99", "format_version"),
    ):
        bad = tmp_path / key
        shutil.copytree(out, bad, ignore=shutil.ignore_patterns("checkpoints"))
        m = json.loads((bad / "manifest.json").read_text())
        m[key] = value
        (bad / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ValueError, match=match):
            load_posterior(bad)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt, ignore=shutil.ignore_patterns("checkpoints"))
    torch.save({k: v + 1 for k, v in state.items()}, corrupt / "weights.pt")
    with pytest.raises(ValueError, match="checksum"):
        load_posterior(corrupt)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"trace": np.zeros(10)}, r"trace shape \(10,\) must be \(1000\)"),
        ({"trace": np.full(1000, np.nan)}, "NaN"),
        ({"trace": np.full(1000, 5000.0)}, "ADC codes"),
        ({"features": np.zeros(3)}, r"features shape \(3,\)"),
        ({}, "exactly one"),
        ({"trace": np.zeros(1000), "num_samples": 0}, "num_samples"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(handcrafted, kwargs, match) -> None:
    post = load_posterior(handcrafted[0])
    n = kwargs.pop("num_samples", 5)
    with pytest.raises(ValueError, match=match) as e:
        post.sample(n, **kwargs)
    assert "\n" not in str(e.value)


def test_hybrid_posterior_takes_a_trace_and_embeds_it_as_training_saw_the_store(
    hybrid, stores
) -> None:
    """Served, the hybrid computes the statistics from the trace itself: they must be the store's.

    A mismatch (other statistics, order, or dtype) would shift every served posterior away from the
    one that was trained and validated, with no error anywhere.
    """
    from farm.features import FEATURE_NAMES
    from inference.defaults import HYBRID_ARCH
    from inference.nets.embeddings import model_input

    out, _ = hybrid
    post = load_posterior(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert post.variant == "hybrid" and not post.accepts_features
    arch = manifest["architecture"]
    assert {
        k: tuple(v) if isinstance(v, list) else v for k, v in arch.items() if k in HYBRID_ARCH
    } == HYBRID_ARCH
    learned = HYBRID_ARCH["embedding_features"]
    assert manifest["feature_names"] == [*FEATURE_NAMES, *(f"cnn_{k}" for k in range(learned))]
    _, trace, feats = _heldout(stores[1], 6)
    with torch.inference_mode():
        trained_as = post.model.embedding(
            torch.from_numpy(model_input({"features": feats, "trace": trace}, post.model.x_fields))
        )
        served_as = post.model.embedding(post._inputs(trace, None, batched=True))
    assert served_as.shape == (6, len(FEATURE_NAMES) + learned)
    # the same statistics (one function, one trace) through the same modules: equal to float32
    # rounding
    torch.testing.assert_close(served_as, trained_as, rtol=1e-5, atol=1e-5)
    s = post.sample_batched(50, traces=trace, seed=0)
    assert s.shape == (6, 50, 7) and post.prior.support(s.reshape(-1, 7)).all()
    with pytest.raises(ValueError, match="hybrid posterior reads raw traces; pass trace="):
        post.sample(10, features=feats[0])
    report = post.misspecification(trace=trace[0])
    assert report["score"] is not None and report["threshold"] is not None
