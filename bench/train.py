"""Training throughput: streaming from Zarr vs in-memory tensors, and 1 vs 2 Ray Train workers.

Both comparisons are measured in this run, on this machine, so only the ratios mean anything:

1. the same training steps (same model, same rows, same batch size) fed by ``ChunkStream`` from
   the Zarr store vs by tensors already in memory (aim: streaming >= 0.8x in-memory);
2. Ray Train ``TorchTrainer`` with 1 vs 2 workers, samples/s over whole epochs.

Example: .venv/bin/python bench/train.py --n 20000 --variant handcrafted
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from farm.runner import run_farm
from inference.datasets import ChunkStream, StoreSet, plan_data
from inference.flows import FlowConfig, NPEModel
from inference.train import TrainConfig, model_stats, run_training


def time_epochs(model: NPEModel, batches_fn, epochs: int) -> float:
    """Samples/s of plain Adam steps over ``epochs`` passes of ``batches_fn(epoch)``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for theta, x in batches_fn(epoch):
            loss = model(theta, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(theta)
    return n / (time.perf_counter() - t0)


def stream_vs_memory(store: str, variant: str, batch_size: int, epochs: int) -> tuple[float, float]:
    stores = StoreSet([store])
    plan = plan_data(stores)
    stats = model_stats(plan, stores)
    field = "features" if variant == "handcrafted" else "trace"
    stream = ChunkStream(stores, plan, "train", ("theta", field), batch_size)

    def streamed(epoch: int):
        for b in stream.batches(epoch, drop_last=True):
            yield torch.from_numpy(b["theta"]), torch.from_numpy(np.ascontiguousarray(b[field]))

    rows = [b for b in stream.batches(0, shuffle=False)]
    theta_all = torch.from_numpy(np.concatenate([b["theta"] for b in rows]))
    x_all = torch.from_numpy(np.concatenate([b[field] for b in rows]))

    def in_memory(epoch: int):
        perm = torch.from_numpy(np.random.default_rng(epoch).permutation(len(theta_all)))
        for s in range(0, len(perm) - batch_size + 1, batch_size):
            idx = perm[s : s + batch_size]
            yield theta_all[idx], x_all[idx]

    results: dict[str, list[float]] = {"in-memory": [], "streamed": []}
    for _ in range(3):  # interleaved repeats, best of each: other load on the machine only slows runs down
        for name, fn in (("in-memory", in_memory), ("streamed", streamed)):
            torch.manual_seed(0)
            results[name].append(time_epochs(NPEModel(FlowConfig(variant=variant), stats), fn, epochs))
    return max(results["streamed"]), max(results["in-memory"])


def reader_only(store: str, variant: str, batch_size: int) -> float:
    """Rows/s the Zarr reader alone delivers (no model): the headroom over training's appetite."""
    stores = StoreSet([store])
    plan = plan_data(stores)
    field = "features" if variant == "handcrafted" else "trace"
    stream = ChunkStream(stores, plan, "train", ("theta", field), batch_size)
    t0 = time.perf_counter()
    n = sum(len(b["theta"]) for b in stream.batches(0))
    return n / (time.perf_counter() - t0)


def workers_scaling(store: str, variant: str, batch_size: int, epochs: int, root: Path) -> dict[int, float]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = {}
        for workers in (1, 2):
            cfg = TrainConfig(task="npe", stores=(store,), out=str(root / f"w{workers}"), variant=variant, num_workers=workers, epochs=epochs + 1, patience=100, batch_size=batch_size // workers, progress=False)
            hist = run_training(cfg).state["history"]
            out[workers] = statistics.median(h["samples_per_s"] for h in hist[1:])  # epoch 1 includes warm-up
        return out
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="existing store; default: simulate --n samples into a temporary one")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--variant", choices=("handcrafted", "summary-net"), default="handcrafted")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--skip-workers", action="store_true", help="only the streaming comparison")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = args.store
        if store is None:
            store = str(root / "bench.zarr")
            run_farm(store, num_sims=args.n, seed=1, chunk_size=1000, in_process=True)
        torch.set_num_threads(2)
        streamed, memory = stream_vs_memory(store, args.variant, args.batch_size, args.epochs)
        print(f"{args.variant}: streamed from Zarr {streamed:,.0f} samples/s, in-memory tensors {memory:,.0f} samples/s -> ratio {streamed / memory:.2f} (aim >= 0.8)")
        print(f"{args.variant}: the Zarr reader alone delivers {reader_only(store, args.variant, args.batch_size):,.0f} rows/s")
        if not args.skip_workers:
            w = workers_scaling(store, args.variant, args.batch_size, args.epochs, root)
            print(f"{args.variant}: Ray Train 1 worker {w[1]:,.0f} samples/s, 2 workers {w[2]:,.0f} samples/s -> ratio {w[2] / w[1]:.2f} (same global batch {args.batch_size})")


if __name__ == "__main__":
    main()
