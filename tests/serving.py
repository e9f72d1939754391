"""What the test_serve_* modules share: one Ray Serve start, the served posterior, HTTP helpers.

Registered as a plugin in tests/conftest.py, so its fixtures reach every module. Serve starts once
(controller, proxy and a replica that imports torch: the costliest part of these modules) and stays
up while the next module to run serves too; the last one shuts it down, so the modules that follow
in the same pytest worker get back the CPUs its replicas hold. Each module deploys its own apps.

The session's handcrafted posterior (tests/conftest.py: real Ray Train on an 8000-sample store) is
served on 127.0.0.1 inside the session's local Ray; the tests compare answers with the same artifact
loaded in the test process, so the service must answer what the library answers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # loaded with the conftest by every test run: no heavy import at the top
    import httpx

JSON = {"content-type": "application/json"}

#: The item pytest runs after the one being torn down (None at the end), for `serve_url`'s teardown.
_next_item: list[pytest.Item | None] = [None]


@pytest.hookimpl(tryfirst=True)  # before the runner's own teardown, which finalizes the fixtures
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _next_item[0] = nextitem


def _module_serves(item: pytest.Item | None) -> bool:
    """Whether any test of ``item``'s module uses Serve (`serve_url`, directly or through `url`)."""
    if item is None:
        return False
    module = item.nodeid.split("::", 1)[0]
    return any(
        "serve_url" in getattr(i, "fixturenames", ())
        for i in item.session.items
        if i.nodeid.split("::", 1)[0] == module
    )


class ServeInstance:
    """Ray Serve in the session's Ray: started on first use, shut down by `stop`."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.apps: set[str] = set()

    def start(self) -> str:
        """Start Serve's proxy on a free loopback port unless it runs; its base URL."""
        from ray import serve

        from tests.cluster import free_port

        if self.port is None:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            self.port = port
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        from ray import serve

        if self.port is not None:
            serve.shutdown()
            self.port = None
            self.apps.clear()


@pytest.fixture(scope="session")
def serve_instance(ray_session) -> Iterator[ServeInstance]:
    """The session's Serve; whatever still runs at the end stops before Ray does."""
    instance = ServeInstance()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def serve_url(serve_instance: ServeInstance) -> Iterator[str]:
    """Serve's base URL; it stays up for the next module only if that module serves too."""
    yield serve_instance.start()
    if not _module_serves(_next_item[0]):
        serve_instance.stop()


@pytest.fixture(scope="module")
def store(npe_stores) -> Path:
    return Path(npe_stores[0])


@pytest.fixture(scope="module")
def artifact(handcrafted_npe) -> Path:
    return handcrafted_npe[0]


@pytest.fixture(scope="module")
def posterior(artifact: Path):
    from inference import load_posterior

    return load_posterior(artifact)


@pytest.fixture(scope="module")
def obs():
    """Four emulator observations with their true parameters."""
    from farm.prior import BoxPrior
    from farm.simulate import simulate_theta

    return simulate_theta(BoxPrior().sample(4, seed=7), seed=7)


@pytest.fixture(scope="module")
def url(serve_url: str, serve_instance: ServeInstance, handcrafted_npe) -> str:
    """The handcrafted posterior served at the root of `serve_url` (deployed once per start)."""
    from ray import serve

    from deploy.serve.app import APP_NAME, posterior_app

    if APP_NAME not in serve_instance.apps:
        serve.run(
            posterior_app(str(handcrafted_npe[0]), max_batch_size=8, batch_wait_timeout_s=0.05),
            name=APP_NAME,
            route_prefix="/",
        )
        serve_instance.apps.add(APP_NAME)
    return serve_url


@pytest.fixture
def client(url: str):
    import httpx

    with httpx.Client(base_url=url, timeout=120.0) as c:
        yield c


@pytest.fixture(scope="module")
def dead_trace(store: Path) -> list[int]:
    """A dead neuron: every code at the store's resting level (median before the step), no spike."""
    import numpy as np

    from farm.defaults import Protocol
    from farm.store.sim_store import open_dataset

    pre = int(Protocol().t_pre_us)  # samples before the step current (1 MSa/s)
    return [int(np.median(open_dataset(str(store)).trace.values[:, :pre]))] * 1000


def post_raw(client: httpx.Client, path: str, text: str | bytes) -> httpx.Response:
    """POST ``text`` as it is (not re-encoded as JSON) with a JSON content type."""
    return client.post(
        path, content=text if isinstance(text, bytes) else text.encode(), headers=JSON
    )


def raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` + ``body`` on a plain socket; read the answer until its body is complete or
    the server closes."""
    # 60 s only detects a hang
    with socket.create_connection(("127.0.0.1", port), timeout=60.0) as s:
        s.sendall(head + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk:
                return data
            if b"\r\n\r\n" in data:
                header, rest = data.split(b"\r\n\r\n", 1)
                lengths = [
                    int(line.split(b":", 1)[1])
                    for line in header.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if lengths and len(rest) >= lengths[0]:
                    return data
