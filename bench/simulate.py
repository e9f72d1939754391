"""`farm simulate` end to end against the bare kernel loop on the same chunks, same run.

Baseline: this process loops `simulate_indices` over the same chunks with all cores (numba
threads), no Ray, no store. Farm: the real `farm simulate` command (Ray actors, Zarr writes,
progress), as a subprocess. Prints wall times, traces/s, the overhead ratio and the farm's peak
RSS (driver + actors, sampled from /proc).

    python bench/simulate.py [--n 1e6] [--chips 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numba
import numpy as np

from farm.defaults import default_chunk_size
from farm.prior import BoxPrior
from farm.simulate import simulate_indices
from farm.substrates.registry import get_substrate


def rss_of_tree(root_pid: int) -> int:
    """Resident bytes of a process, its descendants and Ray actor processes (not its children)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            if int(entry) == root_pid or ppid == root_pid or b"ChipActor" in cmd:
                with open(f"/proc/{entry}/statm") as f:
                    total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--chips", type=int, default=os.cpu_count() or 2)
    ap.add_argument(
        "--chunk",
        type=int,
        help="samples per store chunk (the farm's --chunk; default: the farm's for --n); "
        "the bare loop runs the same chunks",
    )
    ap.add_argument(
        "--baseline-fraction",
        type=float,
        default=0.2,
        help="share of the chunks the baseline runs (scaled up)",
    )
    args = ap.parse_args()
    n = int(args.n)
    chunk = args.chunk or default_chunk_size(n)
    numba.set_num_threads(os.cpu_count() or 2)
    prior, sub = BoxPrior(), get_substrate("emulator")
    simulate_indices(prior, 0, np.arange(10), sub)  # compile
    n_base = max(chunk, int(n * args.baseline_fraction) // chunk * chunk)
    t0 = time.perf_counter()
    for start in range(0, n_base, chunk):
        simulate_indices(prior, 0, np.arange(start, min(start + chunk, n_base)), sub)
    base_rate = n_base / (time.perf_counter() - t0)

    out = Path(tempfile.mkdtemp(prefix="bench-sim-")) / "sims.zarr"
    cmd = [
        sys.executable,
        "-m",
        "deploy.cli",
        "simulate",
        "--n",
        str(n),
        "--out",
        str(out),
        "--seed",
        "0",
        "--chips",
        str(args.chips),
        "--chunk",
        str(chunk),
        "--quiet",
        "--json",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_of_tree(proc.pid))
            time.sleep(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"farm simulate failed with exit code {proc.returncode}")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    shutil.rmtree(out.parent, ignore_errors=True)
    farm_rate = n / wall
    print(f"n = {n:,}  chips = {args.chips}  cores = {os.cpu_count()}  chunk = {chunk}")
    print(
        f"bare kernel loop (in-process, {n_base:,} sims): {base_rate:,.0f} traces/s  "
        f"-> {n / base_rate:,.1f} s for n"
    )
    print(
        f"farm simulate (Ray + Zarr, wall incl. start-up): {farm_rate:,.0f} traces/s  "
        f"-> {wall:,.1f} s"
    )
    print(
        f"farm overhead: {wall / (n / base_rate) - 1:+.1%}  "
        f"(ratio farm/bare time {wall / (n / base_rate):.2f})"
    )
    print(
        f"peak RSS (driver + actors): {peak / 2**30:.2f} GiB   "
        f"store on disk: {size / 2**20:,.0f} MiB"
    )
    summary = json.loads(stdout.strip().splitlines()[-1])
    print(
        f"of the wall time: {summary['seconds']:.1f} s in the farm "
        "(Ray start, simulation, writes), "
        f"{wall - summary['seconds']:.1f} s process start-up and Ray shutdown; "
        f"{summary.get('driver_chunks', 0)} chunks ran in the driver while Ray started"
    )


if __name__ == "__main__":
    main()
