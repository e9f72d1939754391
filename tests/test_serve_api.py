"""The posterior service's contract over real HTTP: each endpoint answers what the library answers.

Health and info, seeded and batched sampling, log-densities, the posterior predictive, server
timing, loopback-only binding and the published request schemas. The served posterior and Serve's
single start come from tests/serving.py.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from deploy.serve.app import package_version
from deploy.serve.schemas import MAX_NUM_SAMPLES
from farm.defaults import PARAMETER_NAMES, PriorBox
from farm.features import FEATURE_NAMES, summarize
from farm.prior import BoxPrior
from farm.simulate import simulate_theta


# ---------------------------------------------------------------- endpoints
def test_health_and_info(client, posterior):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["variant"] == "handcrafted"
    assert health["fingerprint"] == posterior.fingerprint and health["version"] == package_version()
    info = client.get("/info").json()
    assert [p["name"] for p in info["parameters"]] == list(PARAMETER_NAMES)
    assert [p["low"] for p in info["parameters"]] == list(PriorBox().low) and [
        p["high"] for p in info["parameters"]
    ] == list(PriorBox().high)
    assert (
        info["trace_length"] == 1000
        and info["feature_names"] == list(FEATURE_NAMES)
        and info["accepts_features"]
    )
    assert info["limits"]["max_num_samples"] == MAX_NUM_SAMPLES


def test_sample_summaries_match_draws(client, obs):
    r = client.post("/sample", json={"trace": obs.trace[0].tolist(), "num_samples": 300})
    assert r.status_code == 200, r.text
    body = r.json()
    samples = np.asarray(body["samples"])
    assert body["parameter_names"] == list(PARAMETER_NAMES) and samples.shape == (300, 7)
    assert BoxPrior().support(samples).all()
    np.testing.assert_allclose(body["mean"], samples.mean(0), rtol=1e-9)
    np.testing.assert_allclose(body["std"], samples.std(0, ddof=1), rtol=1e-9)
    assert any(np.array_equal(row, body["map"]) for row in samples)


def test_seeded_sample_is_reproducible_and_equals_library(client, obs, posterior):
    body = {"trace": obs.trace[1].tolist(), "num_samples": 200, "seed": 123}
    a, b = client.post("/sample", json=body).json(), client.post("/sample", json=body).json()
    assert a["samples"] == b["samples"] and a["seed"] == 123 and a["batch_size"] == 1
    local = posterior.sample(200, trace=obs.trace[1], seed=123)
    np.testing.assert_allclose(np.asarray(a["samples"]), local, rtol=1e-4)
    other = client.post("/sample", json={**body, "seed": 124}).json()
    assert other["samples"] != a["samples"]
    # The MAP is the draw of highest density (densities from the sampling pass, not a second one).
    lp = posterior.log_prob(np.asarray(a["samples"]), trace=obs.trace[1])
    assert posterior.log_prob(np.asarray(a["map"]), trace=obs.trace[1])[0] >= lp.max() - 1e-3


def test_sample_reports_where_the_time_went(client, obs):
    r = client.post("/sample", json={"trace": obs.trace[0].tolist(), "num_samples": 50})
    timing = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
    assert 0.0 < float(timing["draws"]) <= float(timing["replica"]) < 60_000


def test_features_give_the_same_posterior_as_the_trace(client, obs):
    features = summarize(obs.trace[2:3])[0]
    by_trace = client.post(
        "/sample", json={"trace": obs.trace[2].tolist(), "num_samples": 50, "seed": 5}
    ).json()
    by_features = client.post(
        "/sample", json={"features": features.tolist(), "num_samples": 50, "seed": 5}
    ).json()
    np.testing.assert_allclose(by_trace["samples"], by_features["samples"], rtol=1e-5)


def test_log_prob_equals_library(client, obs, posterior):
    theta = np.vstack(
        [posterior.sample(5, trace=obs.trace[0], seed=1), PriorBox().low, PriorBox().high]
    )
    r = client.post("/log_prob", json={"trace": obs.trace[0].tolist(), "theta": theta.tolist()})
    assert r.status_code == 200, r.text
    got = np.array([np.nan if v is None else v for v in r.json()["log_prob"]])
    want = posterior.log_prob(theta.astype(np.float32), trace=obs.trace[0])
    assert np.array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-5)


def test_predictive_simulates_on_the_emulator(client, obs, posterior):
    r = client.post(
        "/predictive", json={"trace": obs.trace[3].tolist(), "num_samples": 6, "seed": 9}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    theta = np.asarray(body["theta"], dtype=np.float32)
    assert theta.shape == (6, 7) and body["seed"] == 9
    sims = simulate_theta(
        theta, seed=9, protocol=posterior.protocol, chip_model=posterior.chip_model
    )
    np.testing.assert_array_equal(np.asarray(body["traces"]), sims.trace)
    assert body["spike_count"] == sims.spike_count.tolist()
    assert body["observed_spike_count"] == int(summarize(obs.trace[3:4])[0][0])


def test_concurrent_requests_share_a_forward_pass(url, obs, posterior):
    def one(i: int) -> dict:
        with httpx.Client(base_url=url, timeout=120.0) as c:
            r = c.post("/sample", json={"trace": obs.trace[i % 4].tolist(), "num_samples": 20 + i})
            assert r.status_code == 200, r.text
            return r.json()

    with ThreadPoolExecutor(12) as ex:
        results = list(ex.map(one, range(12)))
    assert [len(r["samples"]) for r in results] == [20 + i for i in range(12)]
    assert max(r["batch_size"] for r in results) > 1
    # Each request of a batch gets its own observation's misspecification check, not its
    # neighbour's.
    for i, r in enumerate(results):
        want = posterior.misspecification(trace=obs.trace[i % 4])
        assert (
            r["misspecification"]["flagged"] == want["flagged"]
            and r["misspecification"]["reasons"] == want["reasons"]
        ), (i, r["misspecification"], want)


def test_binds_loopback_only(url):
    import ray

    port = int(url.rsplit(":", 1)[1])
    node_ip = ray.util.get_node_ip_address()
    if node_ip.startswith("127."):
        pytest.skip("node has no non-loopback address")
    with socket.socket() as s:
        s.settimeout(2.0)
        assert s.connect_ex((node_ip, port)) != 0, f"Serve listens on {node_ip}:{port}"


def test_openapi_request_bodies_take_no_paths(client):
    """The published schema: closed request models whose only fields are observations and
    numbers."""
    assert client.get("/docs").status_code == 200
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("SampleRequest", "LogProbRequest", "PredictiveRequest"):
        schema = schemas[name]
        assert schema.get("additionalProperties") is False, name
        assert set(schema["properties"]) <= {"trace", "features", "num_samples", "seed", "theta"}, (
            name
        )
