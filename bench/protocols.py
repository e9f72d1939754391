"""`step` vs `multi-step`: what a richer stimulus buys the posterior, at an equal simulation budget.

Both protocols are simulated from the same prior (the box, or a restricted prior with --prior) at
the same budget in traces x sweeps: N samples of `step`, N / sweeps samples of `multi-step`. A
handcrafted NPE is trained on each to early stopping (Ray Train, the library call behind `farm
train npe`), and both are evaluated on held-out stores that share their parameter sets (same seed,
same prior stream): per-parameter contraction (1 - posterior var / prior var), NRMSE (posterior
mean error / prior std) and 90 % interval coverage (calibration). Prints a table; --json writes it.

    python bench/protocols.py --n 100000 [--prior artifacts/restricted] [--n-test 1000]
        [--out bench-out/protocols]
    python bench/protocols.py --n 2000 --epochs 2   # a smoke run (minutes on 2 cores)
    # reuses the stores:
    python bench/protocols.py --n 100000 --estimator flow-matching --out bench-out/protocols

Stores are named by protocol, size and seed, so a second run with another --estimator and the same
--out trains and evaluates on the very same data (the artifacts are named by estimator).

The issue's target: at N = 1e5 every parameter's contraction >= 0.5 with coverage near 0.9.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from inference.posteriors.amortized import AmortizedPosterior


def simulate(out: Path, protocol_name: str, n: int, seed: int, prior_dir: str | None) -> str:
    """One store through `farm.run.runner.run_farm` on the local Ray (resumes if it exists)."""
    from farm.prior import load_prior
    from farm.protocol import resolve_protocol
    from farm.run.config import FarmConfig
    from farm.run.runner import run_farm

    url = str(out / f"{protocol_name}-{n}-s{seed}.zarr")
    chunk = max(1, min(1000, n // 4))
    run_farm(
        FarmConfig(
            out=url,
            num_sims=n,
            seed=seed,
            chunk_size=chunk,
            prior=load_prior(prior_dir),
            protocol=resolve_protocol(protocol_name),
        )
    )
    return url


def evaluate(
    artifact: Path, test_store: str, num_samples: int, prior_dir: str | None
) -> dict[str, list[float]]:
    """Contraction, NRMSE and 90 % coverage per parameter on every held-out sample."""
    from farm.prior import load_prior
    from farm.store.sim_store import open_dataset
    from inference import load_posterior
    from inference.diagnostics.calibration import recovery

    post = load_posterior(artifact)
    ds = open_dataset(test_store)
    theta, trace = ds.theta.values.astype(np.float64), ds.trace.values
    samples, kept = _sample_all(post, trace, num_samples)
    theta = theta[kept]
    prior_std = (
        load_prior(prior_dir).sample(20_000, seed=99).std(axis=0)
    )  # the prior the truths came from
    rec = recovery(theta, samples, prior_std)
    lo, hi = np.quantile(samples, [0.05, 0.95], axis=1)
    coverage = ((theta >= lo) & (theta <= hi)).mean(axis=0)
    # Central-interval coverage at nine levels: the calibration curve's deviation (signed < 0:
    # over-confident).
    levels = np.linspace(0.1, 0.9, 9)
    rank = (samples < theta[:, None, :]).mean(axis=1)  # (n, 7) posterior CDF at the truth
    curve = np.array([(np.abs(rank - 0.5) <= lvl / 2).mean(axis=0) for lvl in levels])  # (9, 7)
    return {
        "contraction": rec.contraction.tolist(),
        "nrmse": rec.nrmse.tolist(),
        "coverage_90": coverage.tolist(),
        "coverage_dev_signed": float((curve - levels[:, None]).mean()),
        "coverage_dev_abs": float(np.abs(curve - levels[:, None]).mean()),
        "n_evaluated": int(kept.sum()),
        "n_rejection_failures": int((~kept).sum()),
    }


def _sample_all(
    post: AmortizedPosterior, trace: np.ndarray, num_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draws for every observation; one whose posterior mass lies outside the restricted prior
    (RejectionBudgetExceeded) is left out and counted, rather than ending the whole benchmark."""
    from inference.errors import RejectionBudgetExceeded

    out, kept = [], np.ones(len(trace), dtype=bool)
    for i in range(0, len(trace), 100):
        try:
            out.append(post.sample_batched(num_samples, traces=trace[i : i + 100], seed=i))
        except RejectionBudgetExceeded:
            for j in range(i, min(i + 100, len(trace))):
                try:
                    out.append(post.sample_batched(num_samples, traces=trace[j : j + 1], seed=j))
                except RejectionBudgetExceeded:
                    kept[j] = False
    return np.concatenate(out), kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--n",
        type=float,
        required=True,
        help="step samples; multi-step gets n / sweeps (equal traces x sweeps)",
    )
    ap.add_argument(
        "--n-test",
        type=int,
        default=500,
        help="held-out samples per protocol (same parameter sets)",
    )
    ap.add_argument(
        "--prior",
        default=None,
        help="restricted prior directory (`farm train classifier --out`); default the box",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=200,
        help="upper bound; early stopping (--patience) ends training",
    )
    ap.add_argument(
        "--epochs-for",
        action="append",
        default=[],
        metavar="PROTOCOL=N",
        help="override --epochs for one protocol "
        "(e.g. step=45 to end a resumed run at a time limit)",
    )
    ap.add_argument(
        "--sims-for",
        action="append",
        default=[],
        metavar="PROTOCOL=N",
        help="samples of one protocol instead of the equal-budget count "
        "(e.g. multi-step=100000 for an equal wall-clock comparison)",
    )
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        choices=("step", "multi-step"),
        help="run only this protocol (repeatable)",
    )
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument(
        "--estimator",
        default="nsf",
        choices=("nsf", "flow-matching"),
        help="`farm train npe --estimator` of both NPEs",
    )
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument(
        "--samples", type=int, default=500, help="posterior draws per held-out observation"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="bench-out/protocols")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    from farm.defaults import PARAMETER_NAMES
    from farm.protocol import BUILTIN_PROTOCOLS
    from inference.defaults import TrainConfig
    from inference.training.api import train
    from inference.training.tasks import NPETask

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = int(args.n)
    epochs_for = {k: int(v) for k, _, v in (e.partition("=") for e in args.epochs_for)}
    sims_for = {k: int(float(v)) for k, _, v in (e.partition("=") for e in args.sims_for)}
    results: dict[str, dict] = {}
    for name in args.only or ("step", "multi-step"):
        sweeps = BUILTIN_PROTOCOLS[name].num_sweeps
        num = sims_for.get(name, max(1, n // sweeps))
        t0 = time.perf_counter()
        store = simulate(out, name, num, args.seed, args.prior)
        test = simulate(out, name, args.n_test, args.seed + 1000, args.prior)
        t_sim = time.perf_counter() - t0
        t0 = time.perf_counter()
        artifact = out / (
            f"npe-{name}-{num}" if args.estimator == "nsf" else f"npe-{name}-{num}-{args.estimator}"
        )
        metrics = train(
            NPETask(features="handcrafted", prior=args.prior, estimator=args.estimator),
            [store],
            str(artifact),
            TrainConfig(
                epochs=epochs_for.get(name, args.epochs),
                patience=args.patience,
                batch_size=min(args.batch_size, max(8, num // 10)),
                progress=False,
            ),
        )
        t_train = time.perf_counter() - t0
        results[name] = evaluate(artifact, test, args.samples, args.prior) | {
            "num_sims": num,
            "sweeps": sweeps,
            "traces_x_sweeps": num * sweeps,
            "simulate_seconds": t_sim,
            "train_seconds": t_train,
            "epochs_trained": metrics.get("epochs_trained"),
            "best_epoch": metrics.get("best_epoch"),
        }

    names = list(results)
    print(
        f"\n{args.estimator}: "
        + " vs ".join(
            f"{k} ({results[k]['num_sims']} samples x {results[k]['sweeps']} sweeps)" for k in names
        )
        + f", held-out n={args.n_test}"
    )
    print(
        f"{'parameter':24s}"
        + "".join(f" {'contr ' + k:>17s} {'NRMSE ' + k:>17s} {'cov90 ' + k:>17s}" for k in names)
    )
    for k, p in enumerate(PARAMETER_NAMES):
        print(
            f"{p:24s}"
            + "".join(
                f" {results[q]['contraction'][k]:17.3f} {results[q]['nrmse'][k]:17.3f}"
                f" {results[q]['coverage_90'][k]:17.3f}"
                for q in names
            )
        )
    print(
        f"{'mean':24s}"
        + "".join(
            f" {np.mean(results[q]['contraction']):17.3f} {np.mean(results[q]['nrmse']):17.3f}"
            f" {np.mean(results[q]['coverage_90']):17.3f}"
            for q in names
        )
    )
    for name in names:
        r = results[name]
        print(
            f"{name}: coverage - level over 9 levels x 7 parameters: "
            f"signed {r['coverage_dev_signed']:+.3f}, mean abs {r['coverage_dev_abs']:.3f};"
            f" min contraction {min(r['contraction']):.3f} (target >= 0.5 at n = 1e5)"
        )
        print(
            f"{name}: simulate {r['simulate_seconds']:.1f} s, train {r['train_seconds']:.1f} s "
            f"({r['epochs_trained']} epochs, best {r['best_epoch']})"
        )
        if r["n_rejection_failures"]:
            print(
                f"{name}: {r['n_rejection_failures']} held-out observation(s) left out "
                "(posterior outside the restricted prior)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
