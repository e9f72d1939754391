"""NSF vs flow matching: /sample-equivalent draws and log_prob cost of the two posteriors, same run.

The baseline is the NSF posterior trained on the same store; both are timed through the library
call the service makes (``AmortizedPosterior.sample_and_log_prob``, one observation, 1000 draws,
densities included) and ``log_prob`` (1000 parameter sets), interleaved in rounds so load on a
shared machine hits both alike. Prints p50s and flow-matching / NSF ratios; --json writes them.

    python bench/estimators.py [--nsf DIR --fm DIR] [--draws 1000] [--reps 30] [--threads 1]

Without --nsf/--fm a 3000-sample store is simulated and both estimators are trained for 2 epochs
through the real CLI (`farm train npe --estimator nsf|flow-matching`): speed does not depend on
how well they are trained.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def train_pair(root: Path) -> tuple[Path, Path]:
    """A small store and one posterior per estimator, through the real CLI."""
    from deploy.cli import main as farm_main
    from farm import FarmConfig, run_farm

    store = root / "sims.zarr"
    run_farm(FarmConfig(str(store), 3000, seed=1, chunk_size=1000, in_process=True))
    outs = []
    for est in ("nsf", "flow-matching"):
        out = root / f"npe-{est}"
        code = farm_main(
            [
                "train",
                "npe",
                "--store",
                str(store),
                "--features",
                "handcrafted",
                "--estimator",
                est,
                "--out",
                str(out),
                "--epochs",
                "2",
                "--quiet",
                "--json",
            ]
        )
        if code != 0:
            raise SystemExit(f"training the {est} bench posterior failed (exit {code})")
        outs.append(out)
    return outs[0], outs[1]


def p50_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsf", type=Path)
    ap.add_argument("--fm", type=Path)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a Serve replica pins 1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    from inference import load_posterior

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        nsf_dir, fm_dir = (args.nsf, args.fm) if args.nsf and args.fm else train_pair(Path(tmp))
        posteriors = {"nsf": load_posterior(nsf_dir), "flow-matching": load_posterior(fm_dir)}
    # the training split's mean statistics: a typical observation, the same for both
    features = np.asarray(
        posteriors["nsf"].manifest["standardization"]["feature_mean"], dtype=np.float32
    )
    results: dict[str, dict[str, list[float]]] = {
        k: {"sample_and_log_prob_ms": [], "log_prob_ms": []} for k in posteriors
    }
    for _ in range(args.rounds):
        for name, post in posteriors.items():
            theta = post.sample(args.draws, features=features, seed=1)
            post.sample_and_log_prob(args.draws, features=features[None], seed=0)  # warm-up
            results[name]["sample_and_log_prob_ms"].append(
                p50_ms(
                    lambda post=post: post.sample_and_log_prob(
                        args.draws, features=features[None], seed=0
                    ),
                    args.reps,
                )
            )
            results[name]["log_prob_ms"].append(
                p50_ms(
                    lambda post=post, theta=theta: post.log_prob(theta, features=features),
                    max(3, args.reps // 3),
                )
            )
    summary = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    ratios = {k: summary["flow-matching"][k] / summary["nsf"][k] for k in summary["nsf"]}
    print(
        f"torch threads {args.threads}, {args.draws} draws / parameter sets, "
        f"p50 of {args.reps} calls, median of {args.rounds} rounds"
    )
    for k in summary["nsf"]:
        print(
            f"{k:24s} nsf {summary['nsf'][k]:8.2f} ms   "
            f"flow-matching {summary['flow-matching'][k]:8.2f} ms   ratio {ratios[k]:.2f}x"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "summary_ms": summary,
                    "ratio_fm_over_nsf": ratios,
                    "threads": args.threads,
                    "draws": args.draws,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
