"""The service's bounds (issue 11): body caps (413), load shedding (503), deadlines (504).

A body past the cap is refused before it is read, a full replica sheds with Retry-After while
/health stays up and a light client is served beside a heavy one, and a request past its deadline
is a 504 that leaves a serving deployment behind. Each bound is its own app on the shared Serve
(tests/serving.py).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from ray import serve

from deploy.serve.app import posterior_app
from deploy.serve.schemas import MAX_BODY_BYTES, MAX_NUM_SAMPLES
from tests.serving import JSON, raw_request


@pytest.fixture(scope="module")
def tight_url(url, artifact: Path):
    """The same artifact as a second app whose replica holds 2 model requests; one more is a 503."""
    serve.run(
        posterior_app(str(artifact), max_model_queue=2, num_cpus=0.01),
        name="tight",
        route_prefix="/tight",
    )
    yield f"{url}/tight"
    serve.delete("tight")


def test_huge_content_length_is_413_before_the_body_is_read(url):
    port = int(url.rsplit(":", 1)[1])
    # 100 MB announced, 2 bytes sent: an answer at all proves the body was never awaited.
    answer = raw_request(
        port,
        b"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n",
        b"{}",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert str(MAX_BODY_BYTES) in body["message"] and "100000000" in body["message"]


def test_streamed_body_past_the_cap_is_413(client):
    def chunks():  # no Content-Length: chunked transfer, 64 KiB at a time, 3 MiB in all
        yield b'{"trace": [' + b"500, " * 13_000
        for _ in range(48):
            yield b"500, " * 13_107

    r = client.post("/sample", content=chunks(), headers=JSON)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.json()["message"], r.text[:300]


def test_full_replica_answers_503_with_retry_after_and_health_stays_up(tight_url, obs):
    """Waves of 8 concurrent 10 000-draw requests against a replica that holds 2, until one is
    shed."""
    body = {"trace": obs.trace[0].tolist(), "num_samples": MAX_NUM_SAMPLES}
    statuses: list[int] = []
    retry_after: list[str | None] = []
    health_codes: list[int] = []

    def one(_: int) -> None:
        with httpx.Client(base_url=tight_url, timeout=120.0) as c:
            r = c.post("/sample", json=body)
            statuses.append(r.status_code)
            if r.status_code == 503:
                retry_after.append(r.headers.get("retry-after"))

    with httpx.Client(base_url=tight_url, timeout=120.0) as probe:
        for _ in range(
            20
        ):  # derived from progress: stop at the first wave that saturated the replica
            with ThreadPoolExecutor(9) as ex:
                futures = [ex.submit(one, i) for i in range(8)]
                while not retry_after and not all(f.done() for f in futures):
                    time.sleep(0.01)
                health_codes.append(probe.get("/health").status_code)  # asked while the wave runs
                for f in futures:
                    f.result()
            if 503 in statuses:
                break
    assert 503 in statuses and set(statuses) <= {200, 503}, statuses
    assert all(v is not None and int(v) >= 1 for v in retry_after), retry_after
    assert set(health_codes) == {200}, health_codes


def test_a_light_client_is_served_while_a_heavy_one_floods_the_queue(tight_url, obs):
    """Clients named by X-Client-Id: the one that floods a full replica is shed, a light one beside
    it is not."""
    flood_body = {
        "trace": obs.trace[0].tolist(),
        "num_samples": MAX_NUM_SAMPLES,
        "seed": 1,
    }  # seeded: one pass each
    light_body = {"trace": obs.trace[0].tolist(), "num_samples": 100}
    flood_codes: list[int] = []
    light_codes: list[int] = []

    def flood(_: int) -> None:
        with httpx.Client(base_url=tight_url, timeout=120.0, headers={"X-Client-Id": "flood"}) as c:
            flood_codes.append(c.post("/sample", json=flood_body).status_code)

    with httpx.Client(base_url=tight_url, timeout=120.0, headers={"X-Client-Id": "light"}) as light:
        for _ in range(20):  # derived from progress: stop at the first wave that filled the replica
            with ThreadPoolExecutor(8) as ex:
                futures = [ex.submit(flood, i) for i in range(8)]
                while 503 not in flood_codes and not all(f.done() for f in futures):
                    time.sleep(0.01)
                light_codes.append(
                    light.post("/sample", json=light_body).status_code
                )  # the queue is full now
                for f in futures:
                    f.result()
            if 503 in flood_codes:
                break
    assert 503 in flood_codes and set(flood_codes) <= {200, 503}, flood_codes
    assert set(light_codes) == {200}, light_codes


def test_request_past_its_deadline_is_504(url, artifact, obs):
    serve.run(
        posterior_app(str(artifact), request_timeout_s=1e-6, num_cpus=0.01),
        name="deadline",
        route_prefix="/deadline",
    )
    try:
        with httpx.Client(base_url=f"{url}/deadline", timeout=120.0) as c:
            r = c.post(
                "/sample", json={"trace": obs.trace[0].tolist(), "num_samples": MAX_NUM_SAMPLES}
            )
            assert r.status_code == 504 and "request_timeout_s" in r.json()["message"], r.text[:300]
            # The abandoned model call runs on in the replica; a health check (every 2 s) that
            # lands while it does finds it past 2 x request_timeout_s and reports the replica
            # unhealthy until it ends (deploy/serve/health.py): how long depends on the CPU. So
            # wait for the service to answer again, polling; the bound is a cap for a hung
            # replica, not a timing requirement.
            cap = time.monotonic() + 120.0
            while (code := c.get("/health").status_code) != 200 and time.monotonic() < cap:
                assert code == 503, code  # unhealthy or being replaced; never another error
                time.sleep(0.2)
            assert code == 200  # a 504 leaves a serving deployment behind
    finally:
        serve.delete("deadline")
