"""A refused observation answers in the shape of an answer: 422 with its `misspecification` object.

An untrained flow under a restricted prior that keeps only a sliver of the box at leak_i_bias's
low edge: no flow reaches it, so every draw spends the rejection budget. The service refuses with
422 ``rejection_budget_exceeded``, one line naming the budget, and the observation's check,
flagged, with the budget as a reason (docs/http-api.md, "Refusals"); ``farm query`` exits 2 with
one line and, with ``--json``, prints the same object.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from ray import serve

from deploy.cli import main
from deploy.serve.app import posterior_app
from deploy.serve.http_errors import rejection, unprocessable
from deploy.serve.model_calls import Job, Refused, draw_batch, draw_one
from farm.defaults import PriorBox
from farm.prior import BoxPrior, RestrictedPrior
from farm.simulate import simulate_theta
from tests.cluster import free_port
from tests.test_openapi import write_untrained_artifact


def unreachable_prior() -> RestrictedPrior:
    """Only leak_i_bias within 1e-12 of the box's low edge: no flow puts mass there."""
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


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_artifact(
        tmp_path_factory.mktemp("refusals") / "npe-unreachable", unreachable_prior()
    )


@pytest.fixture(scope="module")
def posterior(artifact: Path):
    from inference import load_posterior

    return load_posterior(artifact)


@pytest.fixture(scope="module")
def trace() -> np.ndarray:
    return simulate_theta(BoxPrior().sample(1, seed=5), seed=5).trace[0]


def _is_refusal_check(check: dict) -> bool:
    reasons = check["reasons"]
    return (
        check["flagged"] is True
        and any("outside the restricted prior" in r and "no draws" in r for r in reasons)
        and set(check)
        == {"score", "threshold", "trace_score", "trace_threshold", "flagged", "reasons", "note"}
    )


def test_a_refused_draw_carries_the_observations_check(posterior, trace):
    observation = {"trace": trace}
    with pytest.raises(Refused) as info:
        draw_one(posterior, 20, observation, seed=1)
    assert isinstance(info.value, ValueError) and _is_refusal_check(info.value.misspecification)
    # The check is the observation's own, plus the budget: the regime reasons are still there.
    own = posterior.misspecification(trace=trace)
    assert info.value.misspecification["reasons"][: len(own["reasons"])] == own["reasons"]
    # In a batch, the refused request gets its refusal; the batch is not lost for the others.
    (result,) = draw_batch(posterior, [Job(20, observation)])
    assert isinstance(result, Refused) and _is_refusal_check(result.misspecification)


def test_the_refusal_is_a_422_with_the_object(posterior, trace):
    with pytest.raises(Refused) as info:
        draw_one(posterior, 20, {"trace": trace}, seed=1)
    rejected = rejection(info.value)
    assert rejected.kind == "rejection_budget_exceeded"
    response = unprocessable(
        [{"loc": ["body", rejected.field], "msg": rejected.message, "type": rejected.kind}],
        rejected.misspecification,
    )
    body = json.loads(response.body)
    assert response.status_code == 422 and "\n" not in body["message"]
    assert "200 x num_samples = 4000 proposals" in body["message"], body["message"]
    assert _is_refusal_check(body["misspecification"])


def test_bad_input_stays_a_plain_422(posterior):
    """Only the refused observation carries the object; a malformed one keeps today's answer."""
    rejected = rejection(ValueError("trace shape (3,) must be (1000,) ADC codes"))
    assert rejected.misspecification is None and rejected.kind == "value_error"


@pytest.fixture(scope="module")
def url(ray_session, artifact: Path) -> str:
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(posterior_app(str(artifact), max_batch_size=4), name="refusals", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.mark.parametrize(
    "path, extra",
    [("/sample", {"seed": 3}), ("/sample", {}), ("/predictive", {"seed": 3})],
    ids=["sample-seeded", "sample-batched", "predictive"],
)
def test_served_refusal_has_the_misspecification_object(url, trace, path, extra):
    body = {"trace": trace.tolist(), "num_samples": 10, **extra}
    r = httpx.post(f"{url}{path}", json=body, timeout=120)
    assert r.status_code == 422, r.text[:300]
    answer = r.json()
    assert answer["detail"][0]["type"] == "rejection_budget_exceeded"
    assert "\n" not in answer["message"] and "rejection budget" in answer["message"]
    assert _is_refusal_check(answer["misspecification"]), answer
    # A refused observation is not a sick replica, and bad input keeps its plain 422.
    assert httpx.get(f"{url}/health", timeout=60).status_code == 200
    bad = httpx.post(f"{url}{path}", json={"trace": [500] * 10}, timeout=60)
    assert bad.status_code == 422 and "misspecification" not in bad.json()


def test_farm_query_exits_2_with_one_line_and_prints_the_object(url, trace, tmp_path, capsys):
    path = tmp_path / "trace.npy"
    np.save(path, trace.astype(np.int16))
    code = main(["query", "--url", url, "--trace", str(path), "--n", "10", "--json"])
    out = capsys.readouterr()
    assert code == 2 and len(out.err.strip().splitlines()) == 1, out.err
    assert "rejection budget" in out.err
    printed = json.loads(out.out)
    assert (
        _is_refusal_check(printed["misspecification"]) and "rejection budget" in printed["refused"]
    )
    code = main(["query", "--url", url, "--trace", str(path), "--n", "10"])
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and len(out.err.strip().splitlines()) == 1, out
    assert "(misspecification: " in out.err and "no draws)" in out.err  # its reasons, one line


def test_farm_infer_writes_the_refusal_in_the_same_shape(posterior, trace):
    """`farm infer` flags a refused trace with the same check a 422 carries: the observation's
    own reasons, then the spent budget; its draws stay NaN and the other rows are answered."""
    from inference.batch.block import infer_block

    traces = np.stack([trace, trace]).astype(np.float64)
    traces[1, :3] = np.nan  # unusable: flagged by the block itself, never sent to the posterior
    got = infer_block(posterior, traces, 8, seed=1)
    with pytest.raises(Refused) as info:
        draw_one(posterior, 8, {"trace": trace}, seed=1)
    served = info.value.misspecification
    assert got.flagged.tolist() == [True, True]
    # the same reasons; the budget's line names this call's own draw count
    assert got.reasons[0].split("; ")[:-1] == served["reasons"][:-1]
    assert got.reasons[0].split("; ")[-1].startswith("posterior outside the restricted prior")
    assert np.isnan(got.draws[0]).all() and "NaN" in got.reasons[1]
