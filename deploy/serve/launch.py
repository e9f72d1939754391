"""Start, block on and stop the posterior service: the implementation of ``farm serve``.

Why a separate module: the CLI only parses options; starting Ray, Serve and (for ``--detach``
without a cluster) a background ``farm serve`` process lives here, where tests can call it.
Serve binds 127.0.0.1 unless a host is given, so a laptop never exposes the model by accident.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_REQUEST_TIMEOUT_S

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Ray Serve's (experimental, 2.60) switch for replicas that answer HTTP on ports of their own.
DIRECT_INGRESS_ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
DIRECT_INGRESS_DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``farm serve`` deploys and where.

    Args:
        posterior: artifact directory from ``farm train npe``.
        host: interface the HTTP proxy binds (127.0.0.1 by default; 0.0.0.0 to expose).
        port: HTTP port of the proxy.
        replicas: Serve replicas of the posterior deployment.
        address: Ray cluster address (``auto``, ``ray://host:10001``); None starts a local Ray.
        max_batch_size: /sample requests per forward pass (1 turns batching off).
        direct_ingress: the replica also answers HTTP itself, on a port of its own (Ray Serve's
            experimental direct ingress), skipping the proxy hop; one replica, private local Ray
            only.
        circuits: circuits store (``farm fingerprint``) that `circuit` requests resolve through;
            circuit-aware posteriors only.
    """

    posterior: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    replicas: int = 1
    address: str | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    direct_ingress: bool = False
    circuits: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port={self.port} outside [1, 65535]")
        if not 1 <= self.replicas <= 64:
            raise ValueError(f"replicas={self.replicas} outside [1, 64]")
        if not 1 <= self.max_batch_size <= 256:
            raise ValueError(f"max_batch_size={self.max_batch_size} outside [1, 256]")
        if self.direct_ingress and (self.replicas != 1 or self.address is not None):
            # Several replicas need a load balancer reading Serve's target groups (Serve's HAProxy
            # mode), and a running cluster's Serve was started without the mode.
            what = (
                f"replicas={self.replicas}" if self.replicas != 1 else f"address={self.address!r}"
            )
            raise ValueError(
                f"direct_ingress with {what}: it works with one replica on a private local Ray "
                "(no --address, --replicas 1)"
            )

    @property
    def url(self) -> str:
        return self.url_at(self.port)

    def url_at(self, port: int) -> str:
        """A client's URL for ``port`` on the bound host (a wildcard bind via loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{port}"


def check_posterior(path: str) -> str:
    """Load the artifact once here so a bad directory fails before Ray starts.

    Returns:
        A one-line description (variant and fingerprint).
    """
    if not Path(path).is_dir():
        raise ValueError(
            f"{path!r} is not a directory; give the --out directory of `farm train npe`"
        )
    from inference import load_posterior

    posterior = load_posterior(path)
    return f"{posterior.variant} posterior {posterior.fingerprint}"


def check_circuits(circuits: str, posterior: str) -> str:
    """Read the circuits store once here so a wrong one fails before Ray starts.

    Raises:
        ValueError: one line: a circuit-marginal posterior, a missing or incomplete store, or a
            store taken at other reference settings than the posterior's
            (``deploy.serve.circuits.CircuitTable.load``).

    Returns:
        A one-line description of what the store covers.
    """
    from deploy.serve.circuits import CircuitTable
    from inference import load_posterior

    table = CircuitTable.load(circuits, load_posterior(posterior))
    return f"circuits {table.covers()}"


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on (host, port) yet."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def connect_ray(opts: ServeOptions) -> None:
    """Start a private local Ray (``opts.address`` None) or join the cluster, unless connected."""
    import ray

    from deploy.serve.limits import PROXY_CALLBACK, PROXY_CALLBACK_ENV
    from farm.run import raycluster

    if ray.is_initialized():
        return
    if opts.address is None:
        # Serve's proxy (started by this private Ray) refuses oversized bodies from their headers.
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    if opts.direct_ingress:
        # Read by Serve's controller and replicas when they start: they inherit this environment.
        os.environ[DIRECT_INGRESS_ENV] = "1"
        # Serve keeps a leaving replica's port open >= 30 s so a load balancer can notice; clients
        # of `farm serve` call the port themselves, so stop within seconds (in-flight requests
        # still finish).
        os.environ.setdefault(DIRECT_INGRESS_DRAIN_ENV, "2")
    # None: a private Ray bound to 127.0.0.1, never someone else's `ray start` cluster here.
    raycluster.connect_ray(
        opts.address,
        quiet=True,
        log_level=logging.INFO,
        object_store_memory=None,
        configure_logging=False,
    )


def replica_url(opts: ServeOptions, timeout_s: float = 120.0) -> str:
    """The URL at which the (one) replica answers HTTP itself, once Serve has given it a port.

    Serve publishes it only as a target group of its controller (what an external load balancer
    reads); there is no public call for it in Ray 2.60, hence the controller's own method.
    """
    import ray
    from ray.serve.context import _get_global_client

    from deploy.serve.app import APP_NAME

    controller = _get_global_client()._controller
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        details = ray.get(controller.get_serve_instance_details.remote())
        for group in details.get("target_groups") or []:
            if group.get("app_name") == APP_NAME and str(group.get("protocol")).upper().endswith(
                "HTTP"
            ):
                ports = [t["port"] for t in group.get("targets", []) if t["port"] != opts.port]
                if ports:
                    return opts.url_at(ports[0])
        time.sleep(0.5)
    raise RuntimeError(
        f"Serve gave the replica no HTTP port within {timeout_s:.0f} s (does this Ray honour "
        f"{DIRECT_INGRESS_ENV}?); serve without --direct-ingress"
    )


def deploy(opts: ServeOptions) -> str:
    """Connect to (or start) Ray, start Serve's proxy on (host, port) and deploy the app.

    Returns:
        The base URL of the service; with ``opts.direct_ingress``, followed by `` (direct: URL)``,
        the replica's own address.
    """
    from ray import serve

    from deploy.serve.app import APP_NAME, posterior_app

    connect_ray(opts)
    # One HTTP proxy, on the head: the node users reach (the only one a loopback bind can serve).
    # The proxy's deadline backs up the replica's own (504): no request hangs on a stuck replica.
    serve.start(
        proxy_location="HeadOnly",
        http_options={
            "host": opts.host,
            "port": opts.port,
            "request_timeout_s": 2 * DEFAULT_REQUEST_TIMEOUT_S,
        },
    )
    # A path that exists here is made absolute; on a cluster it must name the same shared mount on
    # every node.
    serve.run(
        posterior_app(
            _local(opts.posterior),
            num_replicas=opts.replicas,
            max_batch_size=opts.max_batch_size,
            circuits=None if opts.circuits is None else _local(opts.circuits),
        ),
        name=APP_NAME,
        route_prefix="/",
    )
    return f"{opts.url} (direct: {replica_url(opts)})" if opts.direct_ingress else opts.url


def serve_until_interrupted(opts: ServeOptions, announce) -> None:
    """Deploy, call ``announce(url)``, serve until Ctrl-C or SIGTERM, then take the app down.

    A local Ray this started goes down with it.

    The signal handling covers deployment too: an interrupt while Serve is still starting
    shuts down what was started instead of leaving a half-deployed app behind.
    """
    import ray
    from ray import serve

    from deploy.serve.app import APP_NAME

    def _terminate(signum, frame):  # SIGTERM behaves like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        connect_ray(opts)
        # ray.init installs Ray's own fatal-signal handler, which aborts on SIGTERM (exit -6) and
        # leaves Serve and the private Ray's processes behind: take SIGTERM back after it.
        signal.signal(signal.SIGTERM, _terminate)
        announce(deploy(opts))
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            try:
                if opts.address is None:
                    serve.shutdown()
                else:
                    serve.delete(APP_NAME)
            finally:
                ray.shutdown()


READY_MARKER = "Serving "


def wait_healthy(
    url: str,
    timeout_s: float = 180.0,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
    log_offset: int = 0,
) -> dict:
    """Poll ``GET /health`` until it answers 200; fail early if ``process`` exits.

    With ``log``, also wait until the server has written its ready line there (after
    ``log_offset``): the proxy can answer /health a moment before ``serve.run`` returns.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"farm serve exited with code {process.returncode} before answering"
                )
            try:
                r = client.get(f"{url}/health")
                if r.status_code == 200:
                    if log is None or ready_line(log, log_offset) is not None:
                        return r.json()
                    last = "healthy, not yet announced"
                else:
                    last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(0.5)
    raise TimeoutError(f"{url}/health did not answer within {timeout_s:.0f} s (last: {last})")


def ready_line(log: Path, offset: int) -> str | None:
    """The server's "Serving ... at URL" line in ``log`` after ``offset``; None until written."""
    with open(log, "rb") as fh:
        fh.seek(offset)
        for line in fh:
            if line.startswith(READY_MARKER.encode()):
                return line.decode(errors="replace").strip()
    return None


def _local(path: str) -> str:
    """A path that exists here made absolute (the detached server runs elsewhere); URLs as given."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def spawn_detached(
    opts: ServeOptions, log_path: Path | None = None
) -> tuple[subprocess.Popen, Path, int]:
    """Run ``farm serve`` (blocking form) in a new session that outlives this process.

    Returns:
        The process (stop it with SIGINT or SIGTERM), the path of its log file (appended to)
        and the log's size before this run, where this run's lines start.
    """
    log = log_path or Path(tempfile.gettempdir()) / f"farm-serve-{opts.port}.log"
    offset = log.stat().st_size if log.exists() else 0
    cmd = [
        sys.executable,
        "-m",
        "deploy.cli",
        "serve",
        "--posterior",
        str(Path(opts.posterior).resolve()),
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--replicas",
        str(opts.replicas),
        "--max-batch-size",
        str(opts.max_batch_size),
        *(["--direct-ingress"] if opts.direct_ingress else []),
        *(["--circuits", _local(opts.circuits)] if opts.circuits is not None else []),
    ]
    # Unbuffered, so the log shows "Serving ..." while it serves, not only after a clean exit.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return proc, log, offset
