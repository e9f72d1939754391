"""Posterior service: /sample latency (keep-alive client) and throughput, batching on vs off.

Deploys the same artifact twice in one local Ray Serve: ``/batched`` (waiting requests share a
pass, up to --max-batch-size requests per forward pass) and ``/unbatched`` (max_batch_size=1), one
replica each with the same CPU share. Baseline for latency: ``posterior.sample_and_assess`` (what
/sample runs: draws, densities, misspecification check) called directly in this process (the
floor HTTP + Serve add to); Ray's workers get this process's niceness (--worker-niceness), so both
sides run at one priority. Baseline for throughput: the unbatched app. The two apps (and, for
latency, the library floor) alternate in rounds (medians reported), so load changes on a shared
machine hit them alike. Where one request's time goes is printed too (bench/serve_split.py: CPU
time of each stage in this process, the restricted prior's rejection + classifier share, and the
replica's Server-Timing against the client's latency for what lies outside the handler).

Prints p50/p99 latencies, requests/s, and the ratios; --json writes them. The load run
(--load-clients 48) floods the batched app with 10 000-draw requests and reports an honest
client's p50/p99 against the unloaded figures of the same run, the status codes the flood got
(503s are shed load) and /health under load.

    python bench/serve.py [--posterior DIR] [--draws 1000] [--clients 16] [--requests 160]
        [--rounds 3]

Without --posterior a small handcrafted posterior is trained first (`farm train npe`, 2 epochs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from serve_split import print_split, request_split  # bench/ is sys.path[0] when run as a script

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_small_posterior(root: Path) -> Path:
    """A 3000-sample store and a 2-epoch handcrafted NPE, through the real CLI."""
    from deploy.cli import main as farm_main
    from farm import FarmConfig, run_farm

    store, out = root / "sims.zarr", root / "npe-handcrafted"
    run_farm(FarmConfig(str(store), 3000, seed=1, chunk_size=1000, in_process=True))
    code = farm_main(
        [
            "train",
            "npe",
            "--store",
            str(store),
            "--features",
            "handcrafted",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--quiet",
            "--json",
        ]
    )
    if code != 0:
        raise SystemExit(f"training the bench posterior failed (exit {code})")
    return out


def sequential_latency(
    url: str, body: dict, num: int, warmup: int = 5
) -> tuple[list[float], list[float]]:
    """Seconds per /sample request, one at a time on one keep-alive connection, and replica time.

    The replica's part is its ``Server-Timing: replica;dur=`` (handler start to encoded answer), so
    ``time - replica`` is what the request spent outside the handler: client, proxy hop, body
    parsing.
    """
    with httpx.Client(base_url=url, timeout=120.0) as client:
        for _ in range(warmup):
            client.post("/sample", json=body).raise_for_status()
        times, replica = [], []
        for _ in range(num):
            t0 = time.perf_counter()
            r = client.post("/sample", json=body)
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
            timing = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
            replica.append(float(timing["replica"]) / 1000)
    return times, replica


def library_latency(posterior: Any, draws: int, trace: np.ndarray, num: int) -> list[float]:
    """Seconds per call of what /sample runs (``sample_and_assess``), in this process.

    The observation is the one the HTTP requests send.
    """
    times = []
    for _ in range(num):
        t0 = time.perf_counter()
        posterior.sample_and_assess(draws, traces=trace[None], normalized=False)
        times.append(time.perf_counter() - t0)
    return times


async def _throughput(url: str, bodies: list[dict], clients: int) -> tuple[float, list[int]]:
    """Requests/s with ``clients`` concurrent keep-alive connections sharing the request list."""
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    batch_sizes: list[int] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            r = await client.post("/sample", json=body)
            r.raise_for_status()
            batch_sizes.append(r.json()["batch_size"])

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300.0, limits=limits) as client:
        for _ in range(clients):  # open the connections before timing
            await client.get("/health")
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return len(bodies) / elapsed, batch_sizes


async def _under_load(url: str, heavy: dict, honest: dict, clients: int, seconds: float) -> dict:
    """``clients`` loop on ``heavy`` requests; one honest client times ``honest`` ones and /health.

    Shed requests (503) are counted, not retried at once: a heavy client sleeps its ``Retry-After``.
    Every client sends its own ``X-Client-Id`` (they share one address here), as users behind a
    gateway that sets it would.
    """
    stop = time.monotonic() + seconds
    codes: dict[int, int] = {}
    honest_ms: list[float] = []
    honest_codes: dict[int, int] = {}
    health_ms: list[float] = []

    async def abuser(client: httpx.AsyncClient, k: int) -> None:
        while time.monotonic() < stop:
            r = await client.post("/sample", json=heavy, headers={"X-Client-Id": f"heavy-{k}"})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 503:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    async def honest_client(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(1.0)  # let the load build up first
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            r = await client.post("/sample", json=honest, headers={"X-Client-Id": "honest"})
            honest_codes[r.status_code] = honest_codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                honest_ms.append(1000 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            (await client.get("/health", headers={"X-Client-Id": "honest"})).raise_for_status()
            health_ms.append(1000 * (time.perf_counter() - t0))

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=300.0, limits=limits) as client:
        await asyncio.gather(honest_client(client), *[abuser(client, k) for k in range(clients)])
    return {
        "heavy_status_counts": codes,
        "honest_status_counts": honest_codes,
        "honest_p50_ms": percentile(honest_ms, 50) if honest_ms else None,
        "honest_p99_ms": percentile(honest_ms, 99) if honest_ms else None,
        "health_under_load_p50_ms": percentile(health_ms, 50),
        "health_under_load_max_ms": max(health_ms),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--posterior", help="artifact directory from `farm train npe` (default: train a small one)"
    )
    ap.add_argument("--draws", type=int, default=1000, help="num_samples per /sample request")
    ap.add_argument("--latency-requests", type=int, default=100)
    ap.add_argument(
        "--clients", type=int, default=16, help="concurrent clients for the throughput test"
    )
    ap.add_argument("--requests", type=int, default=160, help="requests per throughput measurement")
    ap.add_argument(
        "--small-draws",
        type=int,
        default=10,
        help="also measure throughput at this many draws (0: skip)",
    )
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--num-cpus", type=float, default=2.0, help="CPUs of the local Ray")
    ap.add_argument("--replica-cpus", type=float, default=0.5)
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating batched/unbatched rounds (medians are reported)",
    )
    ap.add_argument(
        "--load-clients",
        type=int,
        default=48,
        help="load run: clients asking for --load-draws each (0: skip)",
    )
    ap.add_argument("--load-draws", type=int, default=10_000)
    ap.add_argument("--load-seconds", type=float, default=30.0)
    ap.add_argument(
        "--split-reps",
        type=int,
        default=20,
        help="repetitions of each stage of the in-process request split",
    )
    ap.add_argument(
        "--worker-niceness",
        type=int,
        default=os.nice(0),
        help="niceness of the local Ray's workers (Serve proxy, replicas); default: this "
        "process's, so the library floor and the replica run at one priority "
        "(Ray's own default is 15)",
    )
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    import ray
    from ray import serve

    from deploy.serve.app import posterior_app
    from farm.simulate import simulate_theta
    from inference import load_posterior

    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    # Ray starts its workers at niceness 15: on a machine shared with other jobs the replica and the
    # proxy then yield to every normal process while the library floor (here) does not, and the
    # ratio measured priority, not HTTP. Same niceness for both unless asked otherwise.
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        artifact = Path(args.posterior) if args.posterior else train_small_posterior(Path(tmp.name))
        posterior = load_posterior(artifact)
        # Observations from the artifact's own prior: for a restricted posterior, the regime it
        # serves.
        obs = simulate_theta(posterior.prior.sample(32, seed=2), seed=2)
        traces = [t.tolist() for t in obs.trace]

        # Library floor: the same work as one /sample request, in this process, one thread.
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)  # as in a replica (deploy/serve/app.py)
        threadpool_limits(limits=1)
        library_latency(posterior, args.draws, obs.trace[0], 3)  # warm-up
        # What batching can gain inside the model: B requests as B calls vs one call of B rows.
        model_gain = {}
        for draws in [args.draws] + ([args.small_draws] if args.small_draws else []):
            b = args.max_batch_size
            one_by_one, batched = [], []
            for _ in range(3):
                t0 = time.perf_counter()
                for i in range(b):
                    posterior.sample_and_assess(
                        draws, traces=obs.trace[i % 32][None], normalized=False
                    )
                one_by_one.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                posterior.sample_and_assess(
                    draws, traces=obs.trace[np.arange(b) % 32], normalized=False
                )
                batched.append(time.perf_counter() - t0)
            model_gain[draws] = statistics.median(one_by_one) / statistics.median(batched)

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        common = {"num_cpus": args.replica_cpus, "num_replicas": 1}
        serve.run(
            posterior_app(
                str(artifact),
                max_batch_size=args.max_batch_size,
                batch_wait_timeout_s=0.005,
                **common,
            ),
            name="batched",
            route_prefix="/batched",
        )
        serve.run(
            posterior_app(str(artifact), max_batch_size=1, **common),
            name="unbatched",
            route_prefix="/unbatched",
        )
        base = f"http://127.0.0.1:{port}"

        body = {"trace": traces[0], "num_samples": args.draws}
        results: dict = {
            "draws": args.draws,
            "clients": args.clients,
            "max_batch_size": args.max_batch_size,
            "replica_cpus": args.replica_cpus,
            "fingerprint": posterior.fingerprint,
            "variant": posterior.variant,
        }
        results["niceness"] = {
            "library": os.nice(0),
            "ray_workers": ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote()),
        }
        for draws, gain in model_gain.items():
            results[f"model_batching_gain_{draws}"] = gain
        # The two apps and the library floor alternate in rounds, so a load change on a shared
        # machine hits all alike.
        lat: dict[str, list[float]] = {"batched": [], "unbatched": []}
        in_replica: dict[str, list[float]] = {"batched": [], "unbatched": []}
        floor: list[float] = []
        per_round = max(1, args.latency_requests // args.rounds)
        for _ in range(args.rounds):
            floor += library_latency(posterior, args.draws, obs.trace[0], max(3, per_round // 2))
            for app in ("batched", "unbatched"):
                t, r = sequential_latency(f"{base}/{app}", body, per_round)
                lat[app] += t
                in_replica[app] += r
        results["library_p50_ms"] = 1000 * percentile(floor, 50)
        # The floor of any request through the proxy and a replica: GET /health, no model work.
        with httpx.Client(base_url=f"{base}/unbatched", timeout=60.0) as client:
            health = []
            for _ in range(args.latency_requests):
                t0 = time.perf_counter()
                client.get("/health").raise_for_status()
                health.append(time.perf_counter() - t0)
        results["health_p50_ms"] = 1000 * percentile(health, 50)
        for app, values in lat.items():
            results[f"{app}_p50_ms"] = 1000 * percentile(values, 50)
            results[f"{app}_p99_ms"] = 1000 * percentile(values, 99)
            results[f"{app}_replica_p50_ms"] = 1000 * percentile(in_replica[app], 50)
            results[f"{app}_outside_replica_p50_ms"] = 1000 * percentile(
                [t - r for t, r in zip(values, in_replica[app])], 50
            )
        # Where one request's time goes, in this process on one thread (CPU time: robust to a busy
        # machine).
        results["split"] = request_split(posterior, obs.trace[0], args.draws, reps=args.split_reps)

        for draws in [args.draws] + ([args.small_draws] if args.small_draws else []):
            bodies = [{"trace": traces[i % 32], "num_samples": draws} for i in range(args.requests)]
            rps: dict[str, list[float]] = {"batched": [], "unbatched": []}
            sizes: dict[str, list[int]] = {"batched": [], "unbatched": []}
            for app in ("unbatched", "batched"):
                asyncio.run(
                    _throughput(f"{base}/{app}", bodies[: args.clients], args.clients)
                )  # warm-up
            for _ in range(args.rounds):
                for app in ("unbatched", "batched"):
                    r, b = asyncio.run(_throughput(f"{base}/{app}", bodies, args.clients))
                    rps[app].append(r)
                    sizes[app] += b
            for app in ("unbatched", "batched"):
                results[f"{app}_rps_{draws}"] = statistics.median(rps[app])
                results[f"{app}_mean_batch_{draws}"] = statistics.fmean(sizes[app])
            results[f"batching_speedup_{draws}"] = (
                results[f"batched_rps_{draws}"] / results[f"unbatched_rps_{draws}"]
            )
            results[f"batching_speedup_{draws}_per_round"] = [
                bb / uu for bb, uu in zip(rps["batched"], rps["unbatched"])
            ]
        # an honest client's latency while the replica is flooded (baseline: batched_p50/p99 above)
        if args.load_clients:
            heavy = {"trace": traces[1], "num_samples": args.load_draws}
            results["load"] = asyncio.run(
                _under_load(f"{base}/batched", heavy, body, args.load_clients, args.load_seconds)
            )
    finally:
        serve.shutdown()
        ray.shutdown()
        tmp.cleanup()

    print(
        f"posterior {results['variant']} {results['fingerprint']}; "
        f"/sample with {args.draws} draws; replica {args.replica_cpus} CPU, 1 torch thread; "
        f"niceness library {results['niceness']['library']}, "
        f"Ray workers {results['niceness']['ray_workers']}"
    )
    print(
        "  latency, keep-alive, one at a time:  "
        f"library {results['library_p50_ms']:.1f} ms p50 | "
        f"batched p50 {results['batched_p50_ms']:.1f} ms, "
        f"p99 {results['batched_p99_ms']:.1f} ms | "
        f"unbatched p50 {results['unbatched_p50_ms']:.1f} ms, "
        f"p99 {results['unbatched_p99_ms']:.1f} ms"
    )
    print(
        "  HTTP + Serve overhead over the library (p50): "
        f"{results['unbatched_p50_ms'] / results['library_p50_ms']:.2f}x unbatched, "
        f"{results['batched_p50_ms'] / results['library_p50_ms']:.2f}x batched (aim <= 1.2x); "
        f"GET /health p50 {results['health_p50_ms']:.1f} ms"
    )
    print_split(
        results["split"],
        results["unbatched_p50_ms"],
        results["unbatched_replica_p50_ms"],
        results["unbatched_outside_replica_p50_ms"],
        results["library_p50_ms"],
    )
    for draws in [args.draws] + ([args.small_draws] if args.small_draws else []):
        rounds = ", ".join(f"{v:.2f}" for v in results[f"batching_speedup_{draws}_per_round"])
        print(
            f"  throughput, {args.clients} clients, {draws} draws: "
            f"batched {results[f'batched_rps_{draws}']:.1f} req/s "
            f"(mean batch {results[f'batched_mean_batch_{draws}']:.1f}) "
            f"vs unbatched {results[f'unbatched_rps_{draws}']:.1f} req/s "
            f"-> {results[f'batching_speedup_{draws}']:.2f}x (rounds: {rounds})"
        )
        print(
            f"    in the model alone, {args.max_batch_size} observations in one call "
            f"vs {args.max_batch_size} calls: {results[f'model_batching_gain_{draws}']:.2f}x"
        )
    if "load" in results:
        load = results["load"]
        print(
            f"  load: {args.load_clients} clients x {args.load_draws} draws "
            f"for {args.load_seconds:.0f} s: heavy answers {load['heavy_status_counts']}"
        )
        if load["honest_p50_ms"] is not None:
            print(
                f"    honest client ({args.draws} draws): p50 {load['honest_p50_ms']:.1f} ms, "
                f"p99 {load['honest_p99_ms']:.1f} ms "
                f"({load['honest_p50_ms'] / results['batched_p50_ms']:.1f}x / "
                f"{load['honest_p99_ms'] / results['batched_p99_ms']:.1f}x unloaded); "
                f"answers {load['honest_status_counts']}"
            )
        print(
            f"    GET /health under load: p50 {load['health_under_load_p50_ms']:.1f} ms, "
            f"max {load['health_under_load_max_ms']:.1f} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
