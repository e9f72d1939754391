"""Restriction classifier: beats chance widely, keeps the target recall, its prior drives sims.

The restricted prior it writes is what `farm simulate --prior` draws from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from farm.prior import RestrictedPrior, load_prior
from farm.run.runner import run_farm
from farm.store.sim_store import SimStore
from inference.nets.classifier import ClassifierConfig, RegimeClassifier
from inference.training.restricted_prior import classification_metrics, threshold_for_recall


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_session):
    """A classifier trained with Ray Train on an 8000-sample pilot store.

    It is checked on a held-out store.
    """
    from inference.training.api import train
    from inference.training.tasks import ClassifierTask

    root = tmp_path_factory.mktemp("cls")
    pilot, heldout = str(root / "pilot.zarr"), str(root / "heldout.zarr")
    run_farm(pilot, num_sims=8000, seed=11, chunk_size=1000, in_process=True)
    run_farm(heldout, num_sims=3000, seed=12, chunk_size=1000, in_process=True)
    out = root / "restricted"
    metrics = train(
        ClassifierTask(heldout=(heldout,)),
        [pilot],
        str(out),
        epochs=12,
        patience=4,
        cpus_per_worker=1,
        quiet=True,
    )
    return out, metrics, heldout


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels.astype(bool)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def test_classifier_beats_chance_by_a_wide_margin_on_a_heldout_store(trained) -> None:
    out, metrics, heldout = trained
    prior = RestrictedPrior.load(out)
    s = SimStore.open(heldout)
    theta = np.asarray(s.group["theta"][:])
    sc = np.asarray(s.group["spike_count"][:])
    y = (sc >= 1) & (sc <= 40)
    assert _auc(prior.logit(theta), y) > 0.9  # chance is 0.5
    h = metrics["heldout"]
    assert h["recall"] >= 0.95  # target 0.99 on validation; held-out is close
    assert h["precision"] > 2 * y.mean()  # the restricted region is much richer than the box
    t = metrics[
        "test"
    ]  # the pilot's own test split: used neither to train nor to pick the threshold
    assert t["recall"] >= 0.9 and 500 < t["num_samples"] < 1100  # 10 % of 8000


def test_restricted_prior_concentrates_the_regime_and_drives_farm_simulate(
    trained, tmp_path
) -> None:
    out, metrics, _ = trained
    assert metrics["restricted_in_regime_fraction"] > 2 * metrics["box_in_regime_fraction"]
    assert 0.0 < metrics["acceptance_rate"] < 0.8
    prior = load_prior(out)  # what `farm simulate --prior OUT` loads, numpy only
    summary = run_farm(
        str(tmp_path / "r.zarr"),
        num_sims=1000,
        seed=5,
        chunk_size=500,
        in_process=True,
        prior=prior,
    )
    assert summary["fraction_in_regime"] > 2 * metrics["box_in_regime_fraction"]
    assert SimStore.open(tmp_path / "r.zarr").attrs["prior"]["fingerprint"] == prior.fingerprint


def test_numpy_export_matches_the_torch_classifier(trained) -> None:
    out, _, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["kind"] == "restriction_classifier"
        and manifest["emulator_version"]
        and manifest["package_version"]
    )
    model = RegimeClassifier(ClassifierConfig(**manifest["architecture"]), [0.0] * 7, [1.0] * 7)
    model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    theta = load_prior(None).sample(500, seed=3)
    np.testing.assert_allclose(
        RestrictedPrior.load(out).logit(theta),
        model(torch.from_numpy(theta)).detach().double().numpy(),
        rtol=1e-4,
        atol=1e-4,
    )


def test_threshold_keeps_the_target_recall() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.3
    logits = rng.normal(size=5000) + 2.0 * labels
    for recall in (0.9, 0.99, 1.0):
        thr = threshold_for_recall(logits, labels, recall)
        got = classification_metrics(logits, labels, thr)["recall"]
        assert recall <= got <= recall + 2.0 / labels.sum()
    with pytest.raises(ValueError, match="target_recall"):
        threshold_for_recall(logits, labels, 1.5)
