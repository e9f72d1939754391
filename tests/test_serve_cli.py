"""The command line of the service: `farm query` against the served posterior, and `farm serve`.

`farm query` runs in-process against the shared Serve app (tests/serving.py); `farm serve
--detach` starts its own private Ray, answers, and stops on SIGTERM with nothing left behind.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from deploy.cli import main
from farm.defaults import PARAMETER_NAMES
from farm.prior import BoxPrior
from farm.simulate import simulate_theta
from tests.cluster import descendants, free_port
from tests.serving import raw_request


def test_farm_query_prints_the_posterior_of_a_store_sample(url, store, tmp_path, capsys):
    from farm.store.sim_store import open_dataset

    code = main(
        [
            "query",
            "--url",
            url,
            "--store",
            str(store),
            "--index",
            "3",
            "--n",
            "200",
            "--seed",
            "4",
            "--json",
            "--plot",
            str(tmp_path / "pair.png"),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = json.loads(out.out)["rows"]
    truth = open_dataset(str(store)).theta.values[3]
    assert [r["parameter"] for r in rows] == list(PARAMETER_NAMES)
    assert [r["true"] for r in rows] == pytest.approx(truth.tolist())
    assert all(r["lower"] <= r["mean"] <= r["upper"] and r["std"] > 0 for r in rows)
    assert (tmp_path / "pair.png").stat().st_size > 10_000


def test_farm_query_reports_a_rejected_trace(url, tmp_path, capsys):
    path = tmp_path / "short.npy"
    np.save(path, np.full(999, 500, dtype=np.int16))
    code = main(["query", "--url", url, "--trace", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "body.trace" in err and len(err.strip().splitlines()) == 1, err


def test_farm_query_warns_about_a_dead_neuron(url, dead_trace, tmp_path, capsys):
    path = tmp_path / "dead.npy"
    np.save(path, np.asarray(dead_trace, dtype=np.int16))
    code = main(["query", "--url", url, "--trace", str(path), "--n", "50", "--seed", "1", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    warning = [
        line
        for line in out.err.splitlines()
        if line.startswith("warning: observation unlike the training data: ")
    ]
    assert len(warning) == 1 and "spike_count=0" in warning[0], out.err
    assert json.loads(out.out)["misspecification"]["flagged"] is True


def _ray_processes_of(pid: int) -> dict[int, str]:
    """Descendants of ``pid`` (tests.cluster.descendants), with their command lines."""
    found = {}
    for child in descendants(pid):
        try:
            found[child] = (
                (Path("/proc") / str(child) / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            continue
    return found


def _alive(pid: int, cmdline: str) -> bool:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace"
        ) == cmdline
    except OSError:
        return False


def _exit_status(pid: int, timeout_s: float) -> int | None:
    """Wait for ``pid`` to end; its exit code if it is our child (reaped here), 0 if someone else
    reaped it, None on timeout."""
    import os

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # not our child: it is gone once signal 0 fails
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return 0
        time.sleep(0.2)
    return None


# its own private Ray, the costliest start of the suite (60-110 s on 2 cores): one test for the
# whole CLI path
@pytest.mark.slow
def test_farm_serve_detached_answers_through_proxy_and_replica_port_and_stops_on_sigterm(
    artifact, tmp_path, capsys
):
    """`farm serve --detach --direct-ingress`, other options at their defaults: proxy and replica
    port loopback only, 413 from both, `farm query` answers on both; SIGTERM (what systemd and
    Kubernetes send) stops it with exit 0, closes both ports and leaves no Ray process behind.
    (--direct-ingress only adds the replica's own port; the proxy path is the default one.
    In-process tests cover the app behind it.)"""
    import os
    import signal

    import ray

    port = free_port()
    pid_file, log = tmp_path / "serve.pid", tmp_path / "serve.log"
    code = main(
        [
            "serve",
            "--posterior",
            str(artifact),
            "--port",
            str(port),
            "--detach",
            "--direct-ingress",
            "--pid-file",
            str(pid_file),
            "--log",
            str(log),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and f"http://127.0.0.1:{port}" in out, out
    direct = re.search(r"direct: (http://127\.0\.0\.1:(\d+))", out)
    assert direct is not None and int(direct.group(2)) != port, out
    direct_url, direct_port = direct.group(1), int(direct.group(2))
    pid = int(pid_file.read_text())
    ray_procs: dict[int, str] = {}
    try:
        ray_procs = {
            p: c
            for p, c in _ray_processes_of(pid).items()
            if any(k in c for k in ("raylet", "gcs_server", "dashboard", "runtime_env", "ray::"))
        }
        assert any("raylet" in c for c in ray_procs.values()) and any(
            "gcs_server" in c for c in ray_procs.values()
        ), ray_procs
        node_ip = ray.util.get_node_ip_address()
        if not node_ip.startswith(
            "127."
        ):  # the DEFAULT host: nothing listens on the node's own address
            for p in (port, direct_port):
                with socket.socket() as s:
                    s.settimeout(2.0)
                    assert s.connect_ex((node_ip, p)) != 0, (
                        f"farm serve listens on {node_ip}:{p} by default"
                    )
        obs = simulate_theta(BoxPrior().sample(1, seed=3), seed=3)
        np.save(tmp_path / "obs.npy", obs.trace[0])
        for url in (f"http://127.0.0.1:{port}", direct_url):
            assert (
                main(["query", "--url", url, "--trace", str(tmp_path / "obs.npy"), "--n", "100"])
                == 0
            )
            assert "leak_i_bias" in capsys.readouterr().out
        # The same seeded request gives the same draws on both paths: one replica behind both.
        body = {"trace": obs.trace[0].tolist(), "num_samples": 50, "seed": 7}
        via_proxy = httpx.post(f"http://127.0.0.1:{port}/sample", json=body, timeout=60.0).json()[
            "samples"
        ]
        assert (
            httpx.post(f"{direct_url}/sample", json=body, timeout=60.0).json()["samples"]
            == via_proxy
        )
        # Serve's proxy itself refuses the announced 100 MB
        # (deploy.serve.limits.ContentLengthLimit), and so does the replica's own server.
        for p in (port, direct_port):
            answer = raw_request(
                p, b"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n", b"{}"
            )
            assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower(), (
                p,
                answer[:300],
            )
    finally:
        os.kill(pid, signal.SIGTERM)
        status = _exit_status(pid, timeout_s=120.0)
        if status is None:
            os.killpg(pid, signal.SIGKILL)
    assert status == 0, f"farm serve exited {status} after SIGTERM: {log.read_text()[-2000:]}"
    assert "Serving" in log.read_text()
    deadline = (
        time.monotonic() + 30
    )  # Ray's processes exit on their own after the driver's shutdown; allow them time
    while time.monotonic() < deadline and any(_alive(p, c) for p, c in ray_procs.items()):
        time.sleep(0.5)
    left = {p: c[:120] for p, c in ray_procs.items() if _alive(p, c)}
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"Ray processes outlived farm serve: {left}"
    for url in (f"http://127.0.0.1:{port}", direct_url):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5.0)
