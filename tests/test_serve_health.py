"""What the service says about observations and models it cannot trust, and replicas it loses.

Misspecification flags (a dead neuron flagged, a typical trace not), a restricted prior that no
draw reaches (422 naming the rejection budget), NaN weights that fail the health probe (issues
11/12), and a killed replica that Serve replaces (issue 7). Serve and the served posterior come
from tests/serving.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray import serve

from deploy.serve.app import posterior_app
from farm.defaults import PriorBox

# ---------------------------------------- misspecification, rejection budget, health (issues 11/12)


def test_dead_neuron_trace_is_answered_and_flagged(client, dead_trace, posterior):
    r = client.post("/sample", json={"trace": dead_trace, "num_samples": 50, "seed": 1})
    assert r.status_code == 200, r.text
    check = r.json()["misspecification"]
    assert check["flagged"] is True and any(
        reason.startswith("spike_count=0 outside the training regime")
        for reason in check["reasons"]
    ), check
    want = posterior.misspecification(
        trace=np.asarray(dead_trace)
    )  # the service answers what the library answers
    assert {k: check[k] for k in ("threshold", "flagged", "reasons", "note")} == {
        k: want[k] for k in ("threshold", "flagged", "reasons", "note")
    }
    assert (check["score"] is None) == (want["score"] is None) and (
        want["score"] is None or check["score"] == pytest.approx(want["score"], rel=1e-4)
    )  # float32 cdist; thread count may reorder sums
    # The other two model endpoints carry the same check for the same observation.
    lp = client.post("/log_prob", json={"trace": dead_trace, "theta": [list(PriorBox().low)]})
    pred = client.post("/predictive", json={"trace": dead_trace, "num_samples": 1, "seed": 1})
    assert lp.status_code == pred.status_code == 200, (lp.text[:300], pred.text[:300])
    assert (
        lp.json()["misspecification"]["reasons"]
        == pred.json()["misspecification"]["reasons"]
        == check["reasons"]
    )


@pytest.fixture(scope="module")
def typical_index(store: Path) -> int:
    """The store's most typical in-regime trace: nearest (standardised features) to the in-regime
    median.

    Chosen deterministically from the data, not by trying the service: a single trace, so which one
    matters. Its spike count is in the regime and it sits at the centre of the training summaries.
    """
    from farm.defaults import Regime
    from farm.store.sim_store import open_dataset

    ds = open_dataset(str(store))
    rows = np.flatnonzero(Regime().contains(ds.spike_count.values))
    f = ds.features.values[rows].astype(np.float64)
    z = (f - np.median(f, axis=0)) / np.maximum(f.std(axis=0), 1e-9)
    return int(rows[np.argmin(np.linalg.norm(z, axis=1))])


def test_in_distribution_trace_is_not_flagged(client, store, typical_index, posterior):
    from farm.store.sim_store import open_dataset

    trace = open_dataset(str(store)).trace.values[typical_index]
    check = client.post(
        "/sample", json={"trace": trace.tolist(), "num_samples": 20, "seed": 1}
    ).json()["misspecification"]
    assert check["reasons"] == [] and check["flagged"] is False, check
    if posterior.detector is not None:
        # The threshold is the 95 % quantile of held-out in-regime scores, so ~5 % of fresh
        # in-regime traces exceed it; the median-typical training trace sits deep inside the
        # reference cloud.
        assert check["score"] <= check["threshold"], check
    else:
        # too few in-regime validation rows to calibrate: regime checks only, and the answer says so
        assert check["score"] is None and check["note"], check


def _derived_artifact(src: Path, out: Path, prior=None, nan_weights: bool = False) -> Path:
    """A real artifact (write_artifact) from ``src``'s weights, with another prior or NaN
    weights."""
    import torch

    from inference.artifacts import read_artifact, write_artifact
    from inference.posteriors.amortized import KIND, PRIOR_SUBDIR

    m, state = read_artifact(src, KIND)
    stamped = (
        "kind",
        "format_version",
        "package_version",
        "emulator_version",
        "weights",
        "fingerprint",
        "misspecification",
        "trace_misspecification",
    )
    manifest = {
        k: v for k, v in m.items() if k not in stamped
    }  # no detector file copied: regime checks only
    if prior is not None:
        prior.save(out / PRIOR_SUBDIR)
        manifest |= {"prior": prior.to_dict(), "prior_dir": PRIOR_SUBDIR}
    if nan_weights:
        state = {
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
            for k, v in state.items()
        }
    write_artifact(out, KIND, state, manifest)
    return out


def _unreachable_prior():
    """A restricted prior that keeps only leak_i_bias within 1e-12 of the box's low edge: no flow
    reaches it."""
    from farm.prior import RestrictedPrior

    box = PriorBox()
    low, high = np.asarray(box.low, dtype=np.float64), np.asarray(box.high, dtype=np.float64)
    w = np.zeros((7, 1))
    w[0, 0] = -1.0
    return RestrictedPrior(
        box,
        [w],
        [np.array([-(1.0 - 1e-12)])],
        (low + high) / 2,
        (high - low) / 2,
        threshold_logit=0.0,
        acceptance_rate=1e-12,
    )


def test_restricted_prior_out_of_reach_is_422_naming_the_budget(url, artifact, obs, tmp_path):
    from inference import load_posterior
    from inference.errors import RejectionBudgetExceeded

    restricted = _derived_artifact(
        artifact, tmp_path / "npe-unreachable", prior=_unreachable_prior()
    )
    with pytest.raises(
        RejectionBudgetExceeded
    ) as info:  # the library's typed error, still a ValueError
        load_posterior(restricted).sample(5, trace=obs.trace[0], seed=0)
    assert info.value.budget == 200 * 5 and isinstance(info.value, ValueError)
    serve.run(
        posterior_app(str(restricted), num_cpus=0.01),
        name="unreachable",
        route_prefix="/unreachable",
    )
    try:
        with httpx.Client(base_url=f"{url}/unreachable", timeout=120.0) as c:
            for body in (
                {"trace": obs.trace[0].tolist(), "num_samples": 50, "seed": 3},
                {"trace": obs.trace[0].tolist(), "num_samples": 50},
            ):
                r = c.post("/sample", json=body)
                assert r.status_code == 422, r.text[:300]
                message, detail = r.json()["message"], r.json()["detail"][0]
                assert "200 x num_samples = 10000 proposals" in message and "\n" not in message, (
                    message
                )
                assert (
                    detail["type"] == "rejection_budget_exceeded" and detail["loc"][0] == "body"
                ), detail
            assert (
                c.get("/health").status_code == 200
            )  # a refused observation is not a sick replica
    finally:
        serve.delete("unreachable")


def test_nan_weights_fail_the_health_probe(artifact, posterior, tmp_path):
    """A real posterior whose weights are NaN: the probe behind check_health and /health refuses
    it."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor as Pool

    from deploy.serve.health import HealthMonitor, ModelUnhealthy, probe
    from inference import load_posterior

    sick = load_posterior(_derived_artifact(artifact, tmp_path / "npe-nan", nan_weights=True))
    with pytest.raises(ModelUnhealthy, match="not finite"):
        probe(sick)
    with Pool(1) as pool:
        healthy, unhealthy = HealthMonitor(posterior, pool, 30.0), HealthMonitor(sick, pool, 30.0)
        asyncio.run(healthy.check(pending=0))
        assert healthy.answer("r1") is None
        with pytest.raises(RuntimeError, match="probe draw failed: ModelUnhealthy"):
            asyncio.run(unhealthy.check(pending=0))
        assert unhealthy.answer("r2") == {
            "status": "unhealthy",
            "message": unhealthy.unhealthy,
            "replica": "r2",
        }


# ---------------------------------------------------------------- replica loss (issue 7); keep last
# (of the handcrafted app's users: test_serve_summary_net, after this module, serves its own app)
def test_killed_replica_is_replaced_and_requests_are_answered(client, obs):
    import ray

    old = client.get("/health").json()["replica"]
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if old in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    body = {"trace": obs.trace[0].tolist(), "num_samples": 10, "seed": 3}
    deadline = time.monotonic() + 120
    answered = None
    while time.monotonic() < deadline:
        try:
            r = client.post("/sample", json=body, timeout=10.0)
            if r.status_code == 200 and client.get("/health").json()["replica"] != old:
                answered = r.json()
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    assert answered is not None, "no answer from a new replica within 120 s"
    assert np.asarray(answered["samples"]).shape == (10, 7)
