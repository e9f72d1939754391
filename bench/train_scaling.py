"""Data-parallel training: samples/s against Ray Train workers, and a projection to 16 nodes.

Measured in this run, on this machine (only the ratios carry to another one):

1. Ray Train ``farm train npe`` runs, samples/s over whole epochs (median of the epochs after the
   first, which includes warm-up): one worker on one core (the baseline), two workers on one core
   each on this machine's local Ray, and two workers on a 2-node `ray start` cluster on loopback
   (one 1-CPU node each, gradients all-reduced between nodes over TCP, as on a lab's cluster);
   with a CUDA GPU, also one worker with ``--gpus-per-worker 1`` against the CPU worker;
2. the parts a projection is built from: one training step's compute (forward, backward, clipping,
   Adam, one torch thread, no all-reduce) and the time gloo takes to all-reduce the model's
   gradients between two processes (and 8x as many values, to separate latency from bandwidth).

The projection for N single-core workers, each with the batch of ``--batch-size`` (weak scaling:
the global batch is N x batch) is ``N * batch / (step + allreduce(N))``, ``step`` the one-worker
Ray Train run's time per step (data, validation and reports included), a ring all-reduce of
``S`` gradient bytes taking ``2 (N - 1) / N * S / bandwidth + 2 (N - 1) * latency``. DDP overlaps
the all-reduce with the backward pass; the projection does not, so it is a lower bound on the
rate. The network is an assumption (``--bandwidth-gbit``, ``--latency-us``), not a measurement.

Example: .venv/bin/python bench/train_scaling.py --n 10000 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from farm.run.config import FarmConfig
from farm.run.runner import run_farm
from inference.data.datasets import ChunkStream, StoreSet, plan_data
from inference.defaults import FEATURES, INPUT_FIELDS, architecture_defaults
from inference.nets.embeddings import model_input
from inference.nets.nsf import FlowConfig, NPEModel
from inference.training.loop import TrainConfig, model_stats, run_training

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not an installed package
from tests.cluster import LoopbackCluster  # noqa: E402


def step_seconds(store: str, variant: str, batch_size: int, steps: int) -> tuple[float, int]:
    """Median seconds of one training step on one thread, and the model's parameter count."""
    stores = StoreSet([store])
    plan = plan_data(stores)
    stats = model_stats(plan, stores)
    fields = INPUT_FIELDS[variant]
    torch.manual_seed(0)
    model = NPEModel(FlowConfig(variant=variant, **architecture_defaults(variant)), stats)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stream = ChunkStream(stores, plan, "train", ("theta", *fields), batch_size)
    batches = [
        (
            torch.from_numpy(b["theta"]),
            torch.from_numpy(np.ascontiguousarray(model_input(b, fields))),
        )
        for b in stream.batches(0, drop_last=True)
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for i in range(steps + 5):  # 5 warm-up steps
            theta, x = batches[i % len(batches)]
            t0 = time.perf_counter()
            loss = model(theta, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times[5:]), sum(p.numel() for p in model.parameters())


def _allreduce_worker(rank: int, port: int, sizes: list[int], reps: int, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for n in sizes:
            t = torch.ones(n)
            for _ in range(5):
                dist.all_reduce(t)
            times = []
            for _ in range(reps):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(t)
                times.append(time.perf_counter() - t0)
            if rank == 0:
                out[n] = statistics.median(times)
    finally:
        dist.destroy_process_group()


def allreduce_seconds(sizes: list[int], reps: int = 40) -> dict[int, float]:
    """Median seconds gloo takes to all-reduce ``n`` float32 values between 2 local processes."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_allreduce_worker, args=(port, sizes, reps, out), nprocs=2, join=True)
        return dict(out)


def ray_train_rate(
    store: str,
    variant: str,
    batch: int,
    workers: int,
    epochs: int,
    out: Path,
    address: str,
    gpus: float = 0.0,
) -> float:
    """Samples/s of a `farm train npe` run: median over the epochs after the first."""
    cfg = TrainConfig(
        task="npe",
        stores=(store,),
        out=str(out),
        variant=variant,
        num_workers=workers,
        cpus_per_worker=1,
        gpus_per_worker=gpus,
        epochs=epochs + 1,
        patience=100,
        batch_size=batch,
        progress=False,
    )
    hist = run_training(cfg, address=address).state["history"]
    return statistics.median(h["samples_per_s"] for h in hist[1:])


def ring_allreduce_s(nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """Ring all-reduce time of ``nbytes`` over ``n`` ranks (bandwidth in bytes/s)."""
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency if n > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--store", help="existing store; default: simulate --n rows into a temporary one"
    )
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--variant", choices=FEATURES, default="handcrafted")
    ap.add_argument("--batch-size", type=int, default=256, help="samples per step and worker")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip-cluster", action="store_true", help="no 2-node loopback cluster run")
    ap.add_argument("--bandwidth-gbit", type=float, default=10.0, help="assumed network, Gbit/s")
    ap.add_argument("--latency-us", type=float, default=50.0, help="assumed per-hop latency, us")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = args.store
        if store is None:
            store = str(root / "bench.zarr")
            run_farm(FarmConfig(store, args.n, seed=1, chunk_size=1000, in_process=True))
        step, params = step_seconds(store, args.variant, args.batch_size, steps=40)
        ar = allreduce_seconds([params, 8 * params])
        # two sizes: latency + bytes / bandwidth, solved for both (loopback gloo's own costs)
        loop_bw = 7 * params * 4 / max(ar[8 * params] - ar[params], 1e-9)
        loop_lat = max(ar[params] - params * 4 / loop_bw, 0.0) / 2
        print(
            f"{args.variant}: {params:,} parameters ({params * 4 / 1e6:.2f} MB of gradients); "
            f"one step of {args.batch_size} on one thread {step * 1e3:.1f} ms "
            f"({args.batch_size / step:,.0f} samples/s); gloo all-reduce between 2 local "
            f"processes {ar[params] * 1e3:.2f} ms ({ar[params] / step:.1%} of a step; loopback "
            f"fit: {loop_bw / 1e9:.2f} GB/s, {loop_lat * 1e6:.0f} us per hop)"
        )
        rates = {
            name: ray_train_rate(
                store, args.variant, args.batch_size, workers, args.epochs, root / name, "local"
            )
            for name, workers in (("1 worker", 1), ("2 workers", 2))
        }
        if torch.cuda.is_available():  # `--gpus-per-worker 1` against the CPU worker above
            rates["1 GPU worker"] = ray_train_rate(
                store, args.variant, args.batch_size, 1, args.epochs, root / "gpu", "local", 1.0
            )
        if not args.skip_cluster:
            cluster = LoopbackCluster()
            os.environ["RAY_AUTH_MODE"] = "token"  # this process joins the token-auth cluster
            try:
                cluster.start_head(num_cpus=1)
                cluster.add_worker(num_cpus=1)
                rates["2 nodes x 1 worker"] = ray_train_rate(
                    store,
                    args.variant,
                    args.batch_size,
                    2,
                    args.epochs,
                    root / "nodes",
                    cluster.address,
                )
            finally:
                cluster.shutdown()
        base = rates["1 worker"]
        for name, r in rates.items():
            print(
                f"{args.variant}: Ray Train {name} (1 core each, batch {args.batch_size} per "
                f"worker): {r:,.0f} samples/s ({r / base:.2f}x one worker)"
            )
        bw, lat = args.bandwidth_gbit * 1e9 / 8, args.latency_us * 1e-6
        # the framework's share (data, report, validation) as measured with one worker
        per_step = args.batch_size / base
        # 16 nodes: one single-core worker each, or 16 single-core workers each (256 ranks)
        for n in (1, 2, 16, 256):
            t_ar = ring_allreduce_s(params * 4, n, bw, lat)
            rate = n * args.batch_size / (per_step + t_ar)
            print(
                f"projection, {n:>3} single-core workers over {args.bandwidth_gbit:g} Gbit/s, "
                f"{args.latency_us:g} us: all-reduce {t_ar * 1e3:.2f} ms per step of "
                f"{per_step * 1e3:.1f} ms -> {rate:,.0f} samples/s ({rate / base:.1f}x one worker,"
                f" efficiency {rate / base / n:.0%})"
            )


if __name__ == "__main__":
    main()
