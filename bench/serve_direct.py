"""/sample through Serve's HTTP proxy vs straight to the replica (Serve's direct ingress), same run.

The HTTP-over-library ratio of ``bench/serve.py`` includes one hop a request makes before any of our
code runs: client -> Serve's proxy actor -> (Ray actor call) -> replica. Ray Serve 2.60 has an
experimental mode, ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``, in which the ingress replica runs its own
HTTP server (a port from 30000 up, on Serve's host), meant to sit behind an external load balancer
that reads Serve's target groups. This measures what that hop costs: one posterior, one replica
(max_batch_size 1, 1 torch thread), and per round the library floor (``sample_and_assess``, this
process, one thread), then sequential keep-alive /sample requests through the proxy and straight to
the replica's port; medians over interleaved rounds, so load changes hit all three alike.

    python bench/serve_direct.py --posterior demo-out/npe-summary-net [--draws 1000]
        [--requests 60] [--rounds 3]

`farm serve --direct-ingress` serves the same way (one replica, local Ray); this bench sets the
replica up itself for max_batch_size 1 and half a CPU, as bench/serve.py does.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from serve import (
    free_port,
    library_latency,
    percentile,
    sequential_latency,
)  # bench/ is sys.path[0] when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posterior", required=True, help="artifact directory from `farm train npe`")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=60, help="requests per path and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--user-code-on-loop",
        action="store_true",
        help="RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0: the handler on the replica's main "
        "event loop (one thread less contending for the GIL)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from deploy.serve.launch import DIRECT_INGRESS_DRAIN_ENV, DIRECT_INGRESS_ENV

    os.environ[DIRECT_INGRESS_ENV] = "1"  # read by Serve's controller and replicas at import
    os.environ.setdefault(
        DIRECT_INGRESS_DRAIN_ENV, "2"
    )  # as `farm serve --direct-ingress`: no 30 s drain at shutdown
    if args.user_code_on_loop:
        os.environ["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] = "0"
    os.environ["RAY_worker_niceness"] = str(
        os.nice(0)
    )  # replica and proxy at this process's priority (bench/serve.py)
    import ray
    import torch
    from ray import serve
    from threadpoolctl import threadpool_limits

    from deploy.serve.app import APP_NAME, posterior_app
    from deploy.serve.launch import ServeOptions, replica_url
    from farm.simulate import simulate_theta
    from inference import load_posterior

    posterior = load_posterior(args.posterior)
    obs = simulate_theta(
        posterior.prior.sample(1, seed=2),
        seed=2,
        protocol=posterior.protocol,
        chip_model=posterior.chip_model,
    )
    body = {"trace": obs.trace[0].tolist(), "num_samples": args.draws}
    torch.set_num_threads(1)
    threadpool_limits(limits=1)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            posterior_app(str(args.posterior), max_batch_size=1, num_cpus=0.5, num_replicas=1),
            name=APP_NAME,
            route_prefix="/",
        )
        direct = replica_url(
            ServeOptions(posterior=str(args.posterior), port=port, direct_ingress=True)
        )
        proxy = f"http://127.0.0.1:{port}"
        library_latency(posterior, args.draws, obs.trace[0], 3)  # warm-up
        lat: dict[str, list[float]] = {"library": [], "proxy": [], "direct": []}
        inside: dict[str, list[float]] = {"proxy": [], "direct": []}
        for _ in range(args.rounds):
            lat["library"] += library_latency(
                posterior, args.draws, obs.trace[0], max(3, args.requests // 2)
            )
            for name, url in (("proxy", proxy), ("direct", direct)):
                t, r = sequential_latency(url, body, args.requests)
                lat[name] += t
                inside[name] += r
    finally:
        serve.shutdown()
        ray.shutdown()
    p50 = {k: 1000 * percentile(v, 50) for k, v in lat.items()}
    outside = {
        k: 1000 * percentile([t - r for t, r in zip(lat[k], inside[k], strict=True)], 50)
        for k in inside
    }
    print(
        f"/sample {args.draws} draws, {posterior.variant} {posterior.fingerprint}, "
        f"{args.rounds} rounds x {args.requests} requests per path"
    )
    print(f"  library p50 {p50['library']:.1f} ms")
    for k in ("proxy", "direct"):
        print(
            f"  {k:6s} p50 {p50[k]:.1f} ms = {p50[k] / p50['library']:.2f}x library; "
            f"outside the handler {outside[k]:.1f} ms (aim <= 1.2x)"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"p50_ms": p50, "outside_handler_p50_ms": outside, "draws": args.draws}, indent=2
            )
        )


if __name__ == "__main__":
    main()
