"""`farm simulate` end to end against the bare kernel loop on the same chunks, same run.

Baseline: this process loops `simulate_indices` over the same chunks with all cores (numba
threads), no Ray, no store. Farm: the real `farm simulate` command (Ray actors, Zarr writes,
progress), as a subprocess. Each of ``--repeats`` rounds runs the baseline, then the farm, so a
ratio pairs two measurements taken minutes apart at most; the medians close the output. Prints wall
times, traces/s, the overhead ratio, the farm's peak RSS (driver + actors, sampled from /proc), and
where the farm's wall time went (process start, Ray and actor start-up, simulating vs writing,
exit and Ray shutdown).

    python bench/simulate.py [--n 1e6] [--chips 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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


def bare_rate(n: int, chunk: int, fraction: float) -> float:
    """Traces/s of the bare kernel loop over the first ``fraction`` of the chunks."""
    prior, sub = BoxPrior(), get_substrate("emulator")
    simulate_indices(prior, 0, np.arange(10), sub)  # compile
    n_base = max(chunk, int(n * fraction) // chunk * chunk)
    t0 = time.perf_counter()
    for start in range(0, n_base, chunk):
        simulate_indices(prior, 0, np.arange(start, min(start + chunk, n_base)), sub)
    return n_base / (time.perf_counter() - t0)


def run_farm_cli(n: int, chips: int, chunk: int) -> dict:
    """One `farm simulate` subprocess: wall time, peak RSS, store size and its JSON summary."""
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
        str(chips),
        "--chunk",
        str(chunk),
        "--quiet",
        "--json",
    ]
    launched = time.time()
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
    try:
        stdout, _ = proc.communicate()
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        if proc.returncode != 0:
            raise SystemExit(f"farm simulate failed with exit code {proc.returncode}")
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)  # a 1e7 store is ~7 GB
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"wall": wall, "peak": peak, "size": size, "summary": summary, "launched": launched}


def print_split(run: dict) -> None:
    """Where one farm run's wall time went, from its summary's timings."""
    s, wall = run["summary"], run["wall"]
    before = s.get("started_at", run["launched"]) - run["launched"]
    after = wall - before - s["seconds"]
    line = f"  split: {before:.1f} s process start, imports, store creation"
    if s.get("ray_start_seconds") is not None:
        line += f"; {s['ray_start_seconds']:.1f} s until Ray answered"
    if s.get("actors_up_seconds") is not None:
        line += f", {s['actors_up_seconds']:.1f} s until every actor was up"
    line += (
        f"; run {s['seconds']:.1f} s ({s.get('driver_chunks', 0)} chunks in the driver);"
        f" {after:.1f} s summary, exit and Ray shutdown"
    )
    print(line)
    sim, write = s.get("worker_sim_seconds"), s.get("worker_write_seconds")
    if sim:
        print(
            f"  worker seconds: simulating {sim:.1f} s, writing {write:.1f} s "
            f"(writes {write / sim:.1%} of simulating)"
        )


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
    ap.add_argument("--repeats", type=int, default=1, help="rounds of baseline + farm")
    args = ap.parse_args()
    n = int(args.n)
    chunk = args.chunk or default_chunk_size(n)
    numba.set_num_threads(os.cpu_count() or 2)
    print(f"n = {n:,}  chips = {args.chips}  cores = {os.cpu_count()}  chunk = {chunk}")
    ratios, walls = [], []
    for r in range(args.repeats):
        base_rate = bare_rate(n, chunk, args.baseline_fraction)
        run = run_farm_cli(n, args.chips, chunk)
        wall, ratio = run["wall"], run["wall"] / (n / base_rate)
        ratios.append(ratio)
        walls.append(wall)
        print(
            f"round {r + 1}: bare loop {base_rate:,.0f} traces/s -> {n / base_rate:,.1f} s;  "
            f"farm {n / wall:,.0f} traces/s -> {wall:,.1f} s;  overhead {ratio - 1:+.1%}"
        )
        print(
            f"  peak RSS (driver + actors) {run['peak'] / 2**30:.2f} GiB, "
            f"store on disk {run['size'] / 2**20:,.0f} MiB"
        )
        print_split(run)
    print(
        f"median over {args.repeats}: farm {statistics.median(walls):,.1f} s, "
        f"overhead {statistics.median(ratios) - 1:+.1%} "
        f"(ratio farm/bare time {statistics.median(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
