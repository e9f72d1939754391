"""Time to a served posterior: each stage of the farm's path, and sbi's NPE trainer on those rows.

Stages, each through the real `farm` command line in this process (as `make demo` runs them):
simulate N from the box -> restriction classifier -> simulate N (+ a held-out N/10) from the
restricted prior -> the NPE of each ``--variants`` entry (default: ``hybrid``, the one the README
recommends) to early stopping with `farm train`'s own defaults unless flags are given -> evaluate
the last -> serve it and answer one `farm query`. Prints each stage's wall time and share, its
peak memory (the largest process and the whole process tree, Ray workers included), samples/s of
each training stage (median over its rounds after the first), the evaluation's verdict and
contraction, and the same training figures for the baseline a user would pick instead:
``sbi.inference.NPE`` with a zuko NSF of the same size (5 transforms, 64 hidden, 8 bins), batch 256,
lr 1e-3, the same epoch cap and early-stopping patience, on the rows our NPE trains and validates
on (``--sbi-epochs 1`` measures its rate on a 1e6 store in one epoch). Then it extrapolates to
--extrapolate samples: simulation and training epochs scale with N (assuming the same number of
epochs to early stopping), evaluation and serving do not. Only ratios within one run mean anything
on a shared machine.

    .venv/bin/python bench/pipeline.py --n 1000000 --sbi-epochs 1 [--json out.json]
    .venv/bin/python bench/pipeline.py --n 100000 --variants handcrafted,summary-net \
        --epochs 200 --patience 10 --batch-size 256 --round-samples 0  # as on 2026-11-26
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def farm(*argv: str) -> None:
    """One `farm` command in this process; a non-zero exit ends the benchmark."""
    from deploy.cli import main as farm_main

    code = farm_main([str(a) for a in argv])
    if code not in (0, None):
        raise SystemExit(f"`farm {' '.join(map(str, argv))}` exited {code}")


class PeakMemory:
    """Peak resident memory of this process and its descendants (Ray's workers), polled twice a
    second from /proc: ``process`` is the largest one process's high-water mark (VmHWM, so peaks
    between polls count; this process's own mark carries over from earlier stages), ``tree`` the
    largest sum of current RSS over the tree (shared pages counted per process). Linux only."""

    def __init__(self) -> None:
        self.process = self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(0.5):
                return

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        todo, tree = [os.getpid()], 0
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            kb = _status_kb(pid)
            tree += kb.get("VmRSS", 0)
            self.process = max(self.process, kb.get("VmHWM", 0) * 1024)
        self.tree = max(self.tree, tree * 1024)


def _status_kb(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        k: int(v.split()[0])
        for k, _, v in (line.partition(":") for line in lines)
        if k in ("VmRSS", "VmHWM")
    }


def history_rate(artifact: Path, stage_seconds: float) -> dict[str, float]:
    """From a manifest: step samples/s, rounds trained, samples seen, and the wall rate.

    The step rate is the median over the rounds after the first (warm-up; validation excluded).
    The wall rate is training rows seen / the whole stage's seconds (start-up, data plan,
    validation, checkpoints and the artifact included), the figure comparable with sbi's timed
    ``train()``.
    """
    manifest = json.loads((artifact / "manifest.json").read_text())
    hist = manifest["history"]
    rows = sum(h["samples_per_s"] * h["epoch_seconds"] for h in hist)
    return {
        "samples_per_s": statistics.median(h["samples_per_s"] for h in (hist[1:] or hist)),
        "epochs": len(hist),
        "samples_seen": rows,
        "train_seconds": sum(h["epoch_seconds"] for h in hist),
        "val_seconds": sum(h.get("val_seconds", 0.0) for h in hist),
        "data_wait_seconds": sum(h.get("data_wait_seconds", 0.0) for h in hist),
        "best_val_loss": manifest.get("metrics", {}).get("best_val_loss", float("nan")),
        "batch_size": manifest.get("train_config", {}).get("batch_size", 0),
        "wall_samples_per_s": rows / stage_seconds,
        "seconds": stage_seconds,
    }


def sbi_baseline(
    store: str,
    features: str,
    epochs: int,
    patience: int,
    batch_size: int,
    estimator: str,
    arch: dict,
) -> dict[str, float]:
    """sbi's trainer on our train + val rows, timed around ``train()``.

    NPE with a zuko NSF of our flow's size, or FMPE with an MLP field of our field's width when we
    train flow matching; the summary net is our CNN with the same architecture fields, so the
    network's cost is the same and the trainer's is what differs.
    """
    import torch
    from sbi.inference import FMPE, NPE
    from sbi.neural_nets import posterior_flow_nn, posterior_nn
    from sbi.utils import BoxUniform
    from torch.utils.tensorboard import SummaryWriter

    from inference.data.datasets import ChunkStream, StoreSet, box_bounds, plan_data
    from inference.defaults import INPUT_FIELDS
    from inference.nets.embeddings import model_input

    stores = StoreSet([store])
    plan = plan_data(stores)
    fields = INPUT_FIELDS[features]
    rows = [
        b
        for split in ("train", "val")
        for b in ChunkStream(stores, plan, split, ("theta", *fields), 4096).batches(
            0, shuffle=False
        )
    ]
    theta = torch.from_numpy(np.concatenate([b["theta"] for b in rows])).float()
    x = torch.from_numpy(np.concatenate([model_input(b, fields) for b in rows]).astype(np.float32))
    low, high = box_bounds(stores)
    prior = BoxUniform(
        torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    )
    embedding = torch.nn.Identity()
    if features != "handcrafted":
        from inference.nets.embeddings import make_embedding
        from inference.nets.flow_matching import FlowMatchingConfig
        from inference.nets.nsf import FlowConfig

        config = (FlowMatchingConfig if estimator == "flow-matching" else FlowConfig)(
            variant=features, **arch
        )
        embedding = make_embedding(
            config, {"trace_mean": plan.trace_mean, "trace_std": plan.trace_std}
        )
    z_score_x = "none" if features != "handcrafted" else "independent"
    logs = SummaryWriter(
        log_dir=str(Path(store).parent / f"sbi-logs-{features}")
    )  # not sbi's default ./sbi-logs
    if estimator == "flow-matching":
        build = posterior_flow_nn(
            model="mlp",
            hidden_features=128,
            num_layers=3,
            embedding_net=embedding,
            z_score_x=z_score_x,
        )
        npe = FMPE(
            prior=prior, density_estimator=build, show_progress_bars=False, summary_writer=logs
        )
    else:
        build = posterior_nn(
            model="zuko_nsf",
            hidden_features=64,
            num_transforms=5,
            num_bins=8,
            embedding_net=embedding,
            z_score_x=z_score_x,
        )
        npe = NPE(
            prior=prior, density_estimator=build, show_progress_bars=False, summary_writer=logs
        )
    npe.append_simulations(theta, x)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    npe.train(
        training_batch_size=batch_size,
        learning_rate=1e-3,
        validation_fraction=plan.num_val / (plan.num_train + plan.num_val),
        stop_after_epochs=patience,
        max_num_epochs=epochs,
    )
    seconds = time.perf_counter() - t0
    epochs_trained = len(npe._summary["training_loss"])
    rate = epochs_trained * plan.num_train / seconds
    return {
        "seconds": seconds,
        "epochs": epochs_trained,
        "samples_per_s": rate,
        "wall_samples_per_s": rate,
    }


def serve_one_query(posterior: Path, store: Path, root: Path) -> None:
    """`farm serve --detach`, one `farm query` of 1000 draws, then SIGINT to the server started."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pid_file = root / "serve.pid"
    farm("serve", "--posterior", posterior, "--port", port, "--detach", "--pid-file", pid_file)
    pid = int(pid_file.read_text().strip())
    try:
        farm(
            "query",
            "--url",
            f"http://127.0.0.1:{port}",
            "--store",
            store,
            "--index",
            0,
            "--n",
            1000,
            "--seed",
            0,
        )
    finally:
        os.kill(pid, signal.SIGINT)
        for _ in range(120):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            os.kill(pid, signal.SIGTERM)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--n",
        type=int,
        default=100_000,
        help="simulations from the box and from the restricted prior",
    )
    ap.add_argument(
        "--variants",
        default="hybrid",
        help="comma-separated NPE features to train (`farm train npe --features`); the last is "
        "evaluated and served",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epoch cap of every training (early stopping usually ends it); default: farm's",
    )
    ap.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early-stopping patience of every training and of sbi; default: farm's",
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="default: farm's (0: from the data)"
    )
    ap.add_argument(
        "--round-samples",
        type=int,
        default=None,
        help="`farm train --round-samples`; 0 = one round per epoch (the layout before rounds)",
    )
    ap.add_argument("--extrapolate", type=int, default=1_000_000)
    ap.add_argument("--skip-sbi", action="store_true")
    ap.add_argument(
        "--sbi-epochs",
        type=int,
        default=0,
        help="epoch cap of sbi's trainer (0 = --epochs): its samples/s is the baseline, "
        "so a few epochs measure it",
    )
    ap.add_argument(
        "--estimator",
        default="nsf",
        choices=("nsf", "flow-matching"),
        help="the NPEs' density estimator",
    )
    ap.add_argument(
        "--sn-arch",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="`farm train npe --arch` of the summary-net NPE, repeatable",
    )
    ap.add_argument(
        "--cpus-per-worker",
        type=int,
        default=0,
        help="`farm train --cpus-per-worker` of every training",
    )
    ap.add_argument(
        "--sim-in-process",
        action="store_true",
        help="simulate without Ray (`farm simulate --in-process`): "
        "for an overloaded machine where Ray start-up times out",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--tmp", type=Path, help="where the stores go (default: the system's temp)")
    args = ap.parse_args()
    from deploy.cli.train import architecture_fields
    from inference.defaults import TRAIN_DEFAULTS

    variants = args.variants.split(",")
    n, n_test = args.n, max(1000, args.n // 10)
    sim_opts = ("-q", "--in-process") if args.sim_in_process else ("-q",)
    given = {
        "--epochs": args.epochs,
        "--patience": args.patience,
        "--batch-size": args.batch_size,
        "--round-samples": args.round_samples,
    }
    train_opts = (
        *(a for k, v in given.items() if v is not None for a in (k, v)),
        "--cpus-per-worker",
        args.cpus_per_worker,
        "--quiet",
    )
    epochs = args.epochs or TRAIN_DEFAULTS["epochs"]
    patience = args.patience or TRAIN_DEFAULTS["patience"]
    arch_opts = {
        "handcrafted": (),
        "hybrid": (),
        "summary-net": tuple(a for item in args.sn_arch for a in ("--arch", item)),
    }
    sn_arch = architecture_fields(
        args.sn_arch, "summary-net", args.estimator
    )  # as `farm train npe --arch` reads them
    stages: dict[str, float] = {}
    memory: dict[str, dict[str, int]] = {}
    rates: dict[str, dict[str, float]] = {}
    quality: dict[str, object] = {}
    served = variants[-1]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)

        def stage(name: str, fn) -> None:
            t0 = time.perf_counter()
            with PeakMemory() as peak:
                fn()
            stages[name] = time.perf_counter() - t0
            memory[name] = {"process": peak.process, "tree": peak.tree}
            print(
                f"[pipeline] {name}: {stages[name]:.1f} s, peak RSS {peak.process / 2**30:.2f} GiB "
                f"(tree {peak.tree / 2**30:.2f} GiB)",
                file=sys.stderr,
                flush=True,
            )

        stage(
            "simulate box",
            lambda: farm("simulate", "--n", n, "--seed", 1, "--out", root / "box.zarr", *sim_opts),
        )
        stage(
            "train classifier",
            lambda: farm(
                "train",
                "classifier",
                "--store",
                root / "box.zarr",
                "--out",
                root / "restricted",
                *train_opts,
            ),
        )
        rates["classifier"] = history_rate(root / "restricted", stages["train classifier"])

        def simulate_restricted() -> None:
            farm(
                "simulate",
                "--n",
                n,
                "--seed",
                2,
                "--prior",
                root / "restricted",
                "--out",
                root / "train.zarr",
                *sim_opts,
            )
            farm(
                "simulate",
                "--n",
                n_test,
                "--seed",
                3,
                "--prior",
                root / "restricted",
                "--out",
                root / "test.zarr",
                *sim_opts,
            )

        stage("simulate restricted", simulate_restricted)
        for features in variants:
            out = root / f"npe-{features}"
            stage(
                f"train NPE {features}",
                lambda f=features, o=out: farm(
                    "train",
                    "npe",
                    "--store",
                    root / "train.zarr",
                    "--prior",
                    root / "restricted",
                    "--features",
                    f,
                    "--estimator",
                    args.estimator,
                    *arch_opts[f],
                    "--out",
                    o,
                    *train_opts,
                ),
            )
            rates[f"NPE {features}"] = history_rate(out, stages[f"train NPE {features}"])
        stage(
            "evaluate",
            lambda: farm(
                "evaluate",
                "--posterior",
                root / f"npe-{served}",
                "--store",
                root / "test.zarr",
                "--out",
                root / "report",
                "--n-obs",
                300,
                "--n-samples",
                300,
                "--no-lc2st",
            ),
        )
        summary = json.loads((root / "report" / "metrics.json").read_text())["summary"]
        quality = {
            k: summary.get(k)
            for k in (
                "variant",
                "estimator",
                "verdict",
                "contraction_mean",
                "tarp_atc",
                "sbc_failed",
                "coverage_dev_mean_abs",
                "nrmse_mean",
                "std_ratio_mean",
            )
        }
        print(f"[pipeline] evaluation of {served}: {quality}", file=sys.stderr, flush=True)
        stage(
            "serve + one query",
            lambda: serve_one_query(root / f"npe-{served}", root / "test.zarr", root),
        )
        if not args.skip_sbi:
            import torch

            torch.set_num_threads(2)
            for features in variants:
                with PeakMemory() as peak:
                    rates[f"sbi NPE {features}"] = sbi_baseline(
                        str(root / "train.zarr"),
                        features,
                        args.sbi_epochs or epochs,
                        patience,
                        256,
                        args.estimator,
                        sn_arch if features == "summary-net" else {},
                    )
                memory[f"sbi NPE {features}"] = {"process": peak.process, "tree": peak.tree}
    report(stages, rates, n, args.extrapolate)
    print(f"\nquality of {served}: {quality}")
    print("peak RSS GiB (largest process / process tree): ", end="")
    print(
        ", ".join(
            f"{k} {m['process'] / 2**30:.2f}/{m['tree'] / 2**30:.2f}" for k, m in memory.items()
        )
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "n": n,
                    "variants": variants,
                    "stages_s": stages,
                    "peak_rss_bytes": memory,
                    "training": rates,
                    "quality": quality,
                },
                indent=2,
            )
        )


#: Stages whose time grows with N (simulation, and training epochs over N rows).
SCALES = (
    "simulate box",
    "train classifier",
    "simulate restricted",
    "train NPE handcrafted",
    "train NPE summary-net",
    "train NPE hybrid",
)


def report(
    stages: dict[str, float], rates: dict[str, dict[str, float]], n: int, target: int
) -> None:
    total = sum(stages.values())
    scaled = {k: v * (target / n if k in SCALES else 1.0) for k, v in stages.items()}
    total_x = sum(scaled.values())
    print(f"| stage | N = {n:,}: s | share | N = {target:,} (extrapolated): s | share |")
    print("| --- | --- | --- | --- | --- |")
    for k, v in stages.items():
        print(
            f"| {k} | {v:,.1f} | {v / total:.1%} | {scaled[k]:,.0f} | {scaled[k] / total_x:.1%} |"
        )
    print(f"| total | {total:,.1f} | | {total_x:,.0f} | |")
    print()
    print(
        "| training | step samples/s | wall samples/s | epochs | s | wall vs sbi, same features |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for k, r in rates.items():
        base = rates.get(f"sbi {k}") if not k.startswith("sbi") else None
        ratio = f"{r['wall_samples_per_s'] / base['wall_samples_per_s']:.2f}x" if base else ""
        print(
            f"| {k} | {r['samples_per_s']:,.0f} | {r['wall_samples_per_s']:,.0f} "
            f"| {int(r['epochs'])} | {r['seconds']:,.0f} | {ratio} |"
        )
    hand, net = rates.get("NPE handcrafted"), rates.get("NPE summary-net")
    if hand and net:
        print(
            "\nsummary-net / handcrafted training samples/s: "
            f"step {net['samples_per_s'] / hand['samples_per_s']:.2f}x, "
            f"wall {net['wall_samples_per_s'] / hand['wall_samples_per_s']:.2f}x "
            "(issue 14 aims >= 0.8x)"
        )


if __name__ == "__main__":
    main()
