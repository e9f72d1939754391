"""Measure `farm infer` on a farm store: wall time with start-up, coverage, flagged share.

Why a farm store: its rows carry the true parameters and spike counts, so the same run that is
timed also says whether the answers are right (90 % intervals covering the truth on in-regime
traces) and whether out-of-regime traces get flagged.

Usage:
    farm simulate --n 2048 --seed 21 --out /tmp/f/rec.zarr -q
    python bench/infer.py --posterior /tmp/base/pre/npe-hc --store /tmp/f/rec.zarr \
        --out /tmp/f/post.zarr --draws 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from farm import Regime
from inference.batch.store import KIND


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posterior", required=True)
    ap.add_argument("--store", required=True, help="a `farm simulate` store (truth known)")
    ap.add_argument("--out", required=True, help="the infer store; an old one is replaced")
    ap.add_argument("--draws", default="500")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--in-process", action="store_true", help="no Ray (one core)")
    ap.add_argument(
        "--http", type=int, default=0, help="also time N one-trace /sample calls of `farm serve`"
    )
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        if zarr.open_group(str(out), mode="r").attrs.get("kind") != KIND:
            sys.exit(f"--out {out} exists and is not a `farm infer` store; not replacing it")
        shutil.rmtree(out)
    farm = str(Path(sys.executable).with_name("farm"))
    cmd = [farm, "infer", "--posterior", args.posterior, "--store", args.store, "--out", str(out)]
    cmd += ["--draws", args.draws, "--seed", args.seed, "--json", "-q"]
    cmd += ["--in-process"] if args.in_process else []
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode:
        sys.exit(run.stderr.strip())
    summary = json.loads(run.stdout)
    rec, post = zarr.open_group(args.store, mode="r"), zarr.open_group(str(out), mode="r")
    theta = np.asarray(rec["theta"][:], dtype=np.float64)
    regime = Regime.from_dict(rec.attrs.get("regime"))
    inside = regime.contains(np.asarray(rec["spike_count"][:]))
    lo, hi = np.asarray(post["q05"][:]), np.asarray(post["q95"][:])
    covered = (lo <= theta) & (theta <= hi)
    flagged = np.asarray(post["misspecification_flagged"][:])
    names = [str(n) for n in post["parameter"][:]]
    figures = {}
    if args.http:
        traces = np.asarray(rec["trace"][: args.http])
        rate = http_loop(farm, args.posterior, traces, int(float(args.draws)), args.port)
        figures = {
            "http_loop_traces_per_s": round(rate, 2),
            "batch_vs_http_loop": round(summary["observations"] / wall / rate, 1),
        }
    print(
        json.dumps(
            {
                **figures,
                "observations": summary["observations"],
                "draws": summary["num_draws"],
                "workers": summary["num_workers"],
                "wall_s_with_startup": round(wall, 1),
                "infer_s": round(summary["seconds"], 1),
                "observations_per_s_with_startup": round(summary["observations"] / wall, 1),
                "load_average_1min": round(os.getloadavg()[0], 1),
                "in_regime": int(inside.sum()),
                "coverage_90_in_regime": round(float(covered[inside].mean()), 3),
                "coverage_90_per_parameter": {
                    n: round(float(c), 3) for n, c in zip(names, covered[inside].mean(axis=0))
                },
                "flagged_out_of_regime": round(float(flagged[~inside].mean()), 3),
                "flagged_in_regime": round(float(flagged[inside].mean()), 3),
            },
            indent=1,
        )
    )


def http_loop(farm: str, posterior: str, traces: np.ndarray, draws: int, port: int) -> float:
    """Traces/s of one client looping over /sample (the service already up, start-up excluded)."""
    import signal

    from deploy.client import PosteriorClient

    cmd = [farm, "serve", "--posterior", posterior, "--port", str(port)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        with PosteriorClient(f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    client.health()
                    break
                except Exception:  # not up yet
                    if proc.poll() is not None or time.monotonic() > deadline:
                        sys.exit("farm serve did not come up")
                    time.sleep(1.0)
            client.sample(traces[0], num_samples=draws, seed=0)  # warm the replica
            t0 = time.perf_counter()
            for i, trace in enumerate(traces):
                client.sample(trace, num_samples=draws, seed=i)
            return len(traces) / (time.perf_counter() - t0)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # the server this function started, and its Ray
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
