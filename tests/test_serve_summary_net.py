"""The service with a summary-net posterior: the trace is the only input, features are a 422.

Serves the session's 1-epoch summary-net NPE (tests/conftest.py, real Ray Train) over HTTP on
127.0.0.1, as its own app on the Serve that the test_serve_* modules share (tests/serving.py).
Slow-marked: it needs that Ray Train run.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from deploy.serve.app import posterior_app
from farm.features import summarize
from farm.prior import BoxPrior
from farm.simulate import simulate_theta

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifact(summary_net_npe) -> Path:
    return summary_net_npe[0]


@pytest.fixture(scope="module")
def client(serve_url: str, artifact: Path):
    from ray import serve

    serve.run(posterior_app(str(artifact)), name="summary-net", route_prefix="/sn")
    with httpx.Client(base_url=f"{serve_url}/sn", timeout=120.0) as c:
        yield c
    serve.delete("summary-net")


@pytest.fixture(scope="module")
def obs():
    return simulate_theta(BoxPrior().sample(2, seed=8), seed=8)


def test_info_says_trace_only(client):
    info = client.get("/info").json()
    assert (
        info["variant"] == "summary-net"
        and not info["accepts_features"]
        and info["feature_names"] == []
    )
    assert client.get("/health").json()["variant"] == "summary-net"


def test_trace_sample_equals_library(client, artifact, obs):
    from inference import load_posterior

    body = client.post(
        "/sample", json={"trace": obs.trace[0].tolist(), "num_samples": 100, "seed": 2}
    ).json()
    posterior = load_posterior(artifact)
    local = posterior.sample(100, trace=obs.trace[0], seed=2)
    np.testing.assert_allclose(np.asarray(body["samples"]), local, rtol=1e-4)
    # The misspecification check of a trace-only posterior (CNN embedding space) is the library's.
    want = posterior.misspecification(trace=obs.trace[0])
    assert (
        body["misspecification"]["flagged"] == want["flagged"]
        and body["misspecification"]["reasons"] == want["reasons"]
    ), (body["misspecification"], want)
    assert BoxPrior().support(np.asarray(body["samples"])).all()


@pytest.mark.parametrize(
    "path, extra",
    [
        ("/sample", {"num_samples": 5}),
        ("/log_prob", {"theta": [[400.0, 500.0, 700.0, 300.0, 100.0, 100.0, 500.0]]}),
    ],
)
def test_features_are_refused(client, obs, path, extra):
    r = client.post(path, json={"features": summarize(obs.trace[:1])[0].tolist(), **extra})
    assert r.status_code == 422 and r.json()["message"].startswith(
        "body.features: this posterior (summary-net) takes `trace` only"
    ), r.text


def test_predictive_and_log_prob(client, obs):
    pred = client.post(
        "/predictive", json={"trace": obs.trace[1].tolist(), "num_samples": 3, "seed": 1}
    ).json()
    assert np.asarray(pred["traces"]).shape == (3, 1000)
    lp = client.post(
        "/log_prob", json={"trace": obs.trace[1].tolist(), "theta": pred["theta"]}
    ).json()["log_prob"]
    assert len(lp) == 3 and all(v is not None for v in lp)
