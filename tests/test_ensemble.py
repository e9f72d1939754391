"""Ensembles (`farm train npe --ensemble K`): mixture density and draws, artifact, command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from typer.testing import CliRunner

from deploy.cli import app
from deploy.serve.model_calls import draw_and_assess
from farm.run.runner import run_farm
from farm.store.sim_store import SimStore
from inference import load_posterior
from inference.errors import ArtifactError
from inference.posteriors.ensemble import EnsemblePosterior, mixture_log_prob


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ens") / "train.zarr")
    run_farm(path, num_sims=2000, seed=41, chunk_size=500, in_process=True)
    return path


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory, ray_session) -> tuple[str, str]:
    """`farm train npe --ensemble 2` end to end.

    Two short Ray Train runs side by side on the 2-CPU session cluster.
    """
    out = str(tmp_path_factory.mktemp("ens") / "npe-ens")
    result = CliRunner().invoke(
        app,
        [
            "train",
            "npe",
            "--store",
            store,
            "--out",
            out,
            "--ensemble",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "128",
            "--seed",
            "5",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def _obs(store: str, n: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = SimStore.open(store)
    return (
        np.asarray(s.group["theta"][-n:]),
        np.asarray(s.group["trace"][-n:]),
        np.asarray(s.group["features"][-n:]),
    )


def test_farm_train_npe_ensemble_2_writes_one_loadable_mixture(trained) -> None:
    out, output = trained
    doc = json.loads(open(f"{out}/ensemble.json").read())
    assert doc["kind"] == "npe_ensemble" and [m["seed"] for m in doc["members"]] == [5, 6]
    assert doc["metrics"]["ensemble"]["parallel"]  # 2 free CPUs, 2 one-worker members: side by side
    assert "ensemble of 2 posteriors" in output and "member 1 (seed 6)" in output
    post = load_posterior(out)
    assert isinstance(post, EnsemblePosterior) and post.num_members == 2
    fps = {m.fingerprint for m in post.members}
    assert (
        len(fps) == 2 and post.fingerprint not in fps
    )  # different seeds, different members; the mixture has its own identity
    from deploy.serve.launch import check_posterior  # what `farm serve` loads before it starts Ray

    assert check_posterior(out) == f"handcrafted posterior {post.fingerprint}"


def test_mixture_log_prob_is_logsumexp_of_members_minus_log_k(trained, store) -> None:
    post = load_posterior(trained[0])
    _, trace, feats = _obs(store)
    theta = post.sample(50, trace=trace[0], seed=3).astype(np.float64)
    theta = np.vstack([theta, post.prior.high + 1.0])  # one point outside the support
    members = np.stack([m.log_prob(theta, trace=trace[0]) for m in post.members])
    lp = post.log_prob(theta, trace=trace[0])
    # float64 throughout; only the summation order differs from scipy's
    np.testing.assert_allclose(
        lp[:-1], logsumexp(members[:, :-1], axis=0) - np.log(2), rtol=0, atol=1e-9
    )
    assert lp[-1] == -np.inf
    np.testing.assert_allclose(
        post.log_prob(theta[:5], features=feats[0]), lp[:5], rtol=0, atol=1e-4
    )  # features = summarised trace, float32 path
    draws, lp_draws = post.sample_and_log_prob(20, traces=trace, seed=9)
    np.testing.assert_array_equal(draws, post.sample_batched(20, traces=trace, seed=9))
    np.testing.assert_allclose(
        lp_draws[1], post.log_prob(draws[1], trace=trace[1]), rtol=0, atol=1e-9
    )
    # what a served /sample calls: the same draws and densities, plus member 0's misspecification
    # checks
    served, served_lp, checks = draw_and_assess(post, 20, 9, traces=trace)
    np.testing.assert_array_equal(served, draws)
    np.testing.assert_array_equal(served_lp, lp_draws)
    assert checks == post.members[0].misspecification_batched(traces=trace)


def test_mixture_log_prob_handles_minus_infinity() -> None:
    lp = np.array([[0.0, -np.inf, -np.inf], [np.log(3.0), -np.inf, 1.0]])
    out = mixture_log_prob(lp)
    np.testing.assert_allclose(out[[0, 2]], [np.log(2.0), 1.0 - np.log(2.0)], atol=1e-12)
    assert out[1] == -np.inf


def test_draws_follow_a_seeded_multinomial_member_split(trained, store) -> None:
    post = load_posterior(trained[0])
    _, trace, _ = _obs(store)
    n = 400
    draws = post.sample_batched(n, traces=trace, seed=11)
    who = post.member_split(n, traces=trace, seed=11)
    rng = np.random.default_rng(11)  # the split's recipe: counts per row, then one seed per member
    counts = rng.multinomial(n, [0.5, 0.5], size=len(trace))
    seeds = rng.integers(0, 2**31 - 1, size=2)
    for k, member in enumerate(post.members):
        np.testing.assert_array_equal((who == k).sum(axis=1), counts[:, k])
        mine = member.sample_batched(int(counts[:, k].max()), traces=trace, seed=int(seeds[k]))
        for b in range(len(trace)):
            got = draws[b][who[b] == k]
            np.testing.assert_array_equal(
                np.sort(got, axis=0), np.sort(mine[b, : counts[b, k]], axis=0)
            )
    assert np.all(
        np.abs(counts[:, 0] - n / 2) < 4 * np.sqrt(n / 4)
    )  # a uniform pick, not one member
    np.testing.assert_array_equal(draws, post.sample_batched(n, traces=trace, seed=11))
    one = post.sample(n, trace=trace[0], seed=11)
    assert one.shape == (n, 7) and post.prior.support(one).all()
    m = post.map(trace=trace[0], num_samples=50)
    assert post.log_prob(m, trace=trace[0])[0] >= post.log_prob(one, trace=trace[0]).max() - 1e-6


def test_artifact_round_trips_without_pickle_and_refuses_edits(
    trained, store, tmp_path, monkeypatch
) -> None:
    real_load = torch.load
    seen = []

    def weights_only_load(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", weights_only_load)
    _, trace, _ = _obs(store, 1)
    copy = tmp_path / "copy"
    shutil.copytree(trained[0], copy, ignore=shutil.ignore_patterns("checkpoints"))
    a, b = load_posterior(trained[0]), load_posterior(copy)
    assert seen and all(w is True for w in seen)
    np.testing.assert_array_equal(
        a.sample(64, trace=trace[0], seed=2), b.sample(64, trace=trace[0], seed=2)
    )
    man = copy / "member-1" / "manifest.json"
    man.write_text(man.read_text().replace('"best_epoch"', '"best_epoch_"', 1))
    with pytest.raises(ArtifactError, match="member-1.*checksum"):
        load_posterior(copy)
    shutil.rmtree(copy / "member-1")
    with pytest.raises(ArtifactError, match="member artifact missing"):
        load_posterior(copy)


@pytest.mark.parametrize("k", ["0", "17"])
def test_ensemble_out_of_range_exits_2_with_one_line(store, tmp_path, k) -> None:
    result = CliRunner().invoke(
        app, ["train", "npe", "--store", store, "--out", str(tmp_path / "o"), "--ensemble", k]
    )
    assert result.exit_code == 2, result.output
    assert "--ensemble" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_library_refuses_bad_ensembles(store, tmp_path) -> None:
    from inference.training.api import train

    with pytest.raises(ValueError, match=r"ensemble=0 outside \[1, 16\]"):
        train("npe", [store], str(tmp_path / "o"), ensemble=0)
    with pytest.raises(ValueError, match="only npe posteriors"):
        train("classifier", [store], str(tmp_path / "o"), ensemble=2)
