"""Bad input over real HTTP: every malformed request is a 422 naming its field, never a 500.

A table of bad bodies (one per field and rule), a fuzz of arbitrary bodies (issue 7), and the
replica that must outlive both. Serve and the served posterior come from tests/serving.py.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.serve.schemas import MAX_NUM_SAMPLES, MAX_PREDICTIVE_SAMPLES
from farm.features import FEATURE_NAMES
from tests.serving import post_raw

# ---------------------------------------------------------------- bad input -> 422 naming the field
TRACE = [500] * 1000
FEATS = [1.0] * len(FEATURE_NAMES)
BAD = [
    ("/sample", {"trace": [500] * 10}, "trace"),
    ("/sample", {"trace": [500] * 1001}, "trace"),
    ("/sample", '{"trace": [NaN' + ", 500" * 999 + "]}", "trace"),
    ("/sample", '{"features": [Infinity' + ", 1.0" * (len(FEATURE_NAMES) - 1) + "]}", "features"),
    ("/sample", {"features": FEATS[:3]}, "features"),
    ("/sample", {"trace": [2000] * 1000}, "trace"),
    ("/sample", {"trace": [-1] * 1000}, "trace"),
    ("/sample", {"trace": [500.5] * 1000}, "trace"),
    ("/sample", {"trace": TRACE, "num_samples": 0}, "num_samples"),
    ("/sample", {"trace": TRACE, "num_samples": MAX_NUM_SAMPLES + 1}, "num_samples"),
    ("/sample", {"trace": TRACE, "num_samples": "many"}, "num_samples"),
    ("/sample", {"trace": TRACE, "seed": -1}, "seed"),
    ("/sample", {"trace": TRACE, "features": FEATS}, "exactly one"),
    ("/sample", {}, "exactly one"),
    ("/sample", {"trace": TRACE, "posterior": "/etc/passwd"}, "posterior"),
    ("/sample", {"trace": TRACE, "store": "s3://bucket/sims.zarr"}, "store"),
    ("/log_prob", {"trace": TRACE, "theta": [[1.0] * 7]}, "leak_i_bias=1"),
    ("/log_prob", {"trace": TRACE, "theta": [[400.0] * 6]}, "theta"),
    ("/log_prob", {"trace": TRACE, "theta": []}, "theta"),
    (
        "/log_prob",
        '{"trace": [500' + ", 500" * 999 + '], "theta": [[NaN, 400, 700, 300, 100, 100, 500]]}',
        "theta",
    ),
    ("/log_prob", {"trace": TRACE}, "theta"),
    ("/predictive", {"trace": TRACE, "num_samples": MAX_PREDICTIVE_SAMPLES + 1}, "num_samples"),
    ("/predictive", {"features": FEATS, "num_samples": 2}, "trace"),
    ("/predictive", {"trace": TRACE, "artifact": "/tmp/x"}, "artifact"),
    ("/sample", b"hello", "body"),
    ("/sample", "[1, 2]", "body"),
    ("/sample", '{"trace": ', "body"),
]


@pytest.mark.parametrize(
    "path, body, field", BAD, ids=[f"{p}-{f}-{i}" for i, (p, _, f) in enumerate(BAD)]
)
def test_bad_request_is_422_naming_the_field(client, path, body, field):
    r = client.post(path, json=body) if isinstance(body, dict) else post_raw(client, path, body)
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    assert field in message and "\n" not in message, message
    assert r.json()["detail"][0]["loc"][0] == "body"


# ---------------------------------------------------------------- fuzz (issue 7)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)


def _json_containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_value = st.recursive(json_leaf, _json_containers, max_leaves=12)
trace_value = st.one_of(
    st.just(TRACE),
    st.lists(st.integers(-5, 1030), min_size=995, max_size=1005),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1000, max_size=1000),
    st.lists(json_leaf, max_size=5),
    json_leaf,
)
field_values = {
    "trace": trace_value,
    "features": st.one_of(
        st.lists(st.floats(-1e6, 1e6), min_size=len(FEATURE_NAMES), max_size=len(FEATURE_NAMES)),
        st.lists(st.floats(allow_nan=True), max_size=12),
        json_leaf,
    ),
    "num_samples": st.one_of(
        st.integers(1, 30),
        st.integers(-(2**40), 0),
        st.integers(MAX_NUM_SAMPLES + 1, 2**40),
        json_leaf,
    ),
    "seed": st.one_of(st.integers(-(2**40), 2**40), json_leaf),
    "theta": st.one_of(
        st.lists(st.lists(st.floats(0, 1100), min_size=7, max_size=7), min_size=1, max_size=4),
        st.lists(st.lists(json_leaf, max_size=8), max_size=3),
        json_leaf,
    ),
    "posterior": st.text(max_size=20),
    "store": st.text(max_size=20),
}
structured_body = st.fixed_dictionaries({}, optional=field_values).map(
    lambda d: json.dumps(d, allow_nan=True)
)
body_text = st.one_of(
    structured_body,
    json_value.map(lambda v: json.dumps(v, allow_nan=True)),
    st.binary(max_size=64),
    st.text(max_size=64),
)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(path=st.sampled_from(["/sample", "/log_prob", "/predictive"]), body=body_text)
def test_fuzzed_bodies_never_500(url, path, body):
    with httpx.Client(base_url=url, timeout=120.0) as c:
        r = post_raw(c, path, body)
    assert r.status_code in (200, 422), (path, body[:300], r.status_code, r.text[:300])


def test_replica_survives_the_fuzz_and_bad_requests(client):
    before = client.get("/health").json()["replica"]
    for path, body, _ in BAD:
        client.post(path, json=body) if isinstance(body, dict) else post_raw(client, path, body)
    assert client.get("/health").json()["replica"] == before
