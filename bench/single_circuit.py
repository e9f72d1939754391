"""The per-circuit baseline for circuit-aware posteriors: truncated sequential NPE on one circuit.

Why: issue 25 asks how close an amortized, circuit-aware posterior comes to what a lab could get
by spending simulations on the one circuit it recorded. That baseline is TSNPE (Reference:
Deistler et al. 2022, "Truncated proposals for scalable and hassle-free simulation-based
inference"), run with sbi as its tutorial does: R rounds of M simulations, every one on the
observation's own circuit (same chip and neuron, fresh noise); sbi's NPE with an NSF on the 11
handcrafted statistics, trained by maximum likelihood on all rounds so far
(``force_first_round_loss=True``); after each round the box prior is truncated to the
posterior's HPD region at the 1e-4 quantile of its log-prob (``sbi.utils.get_density_thresholder``
+ ``RestrictedPrior``, sampled by rejection). One change for speed: rejection proposes from a box
around the posterior's draws (``hpd_box``) instead of the whole prior box, which samples the same
truncated prior while the region stays inside it (``--proposal prior`` for sbi's plain way).

For each of K circuits (random chip of the default pool, random neuron) a true theta is drawn
from the box prior and kept when its observed trace has a moderate spike count (5-30 spikes by
default, inside ``farm.defaults.Regime``). The final posterior is scored like ``farm evaluate``'s
own-circuit check: posterior draws and the oracle (the true theta) each rerun ``--draws`` times on
the same circuit with fresh noise, spike-count error against the observed count, and the ratio
posterior / oracle; per parameter, the posterior mean's error over the prior box width (NRMSE
over the 7) and contraction (1 - posterior var / prior var). Cost per circuit: simulations and
seconds, wall and CPU, for simulating, training and truncating apart.

    python bench/single_circuit.py [--circuits 3] [--rounds 3] [--sims 1000] [--seed 1]
        [--out single.json]
    python bench/single_circuit.py --circuits 1 --rounds 2 --sims 300   # smoke run

One core (``--threads 1``: torch and numba). Training is the cost (an NSF step takes ~70 ms on
one core whatever the batch), so the defaults are 3 rounds x 1000 and a batch of 500: about
2.2 CPU-minutes per circuit. The issue's 4 x 2000 takes ~8 CPU-minutes per circuit.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.defaults import NEURONS_PER_CHIP, PARAMETER_NAMES, ChipModel, PriorBox, Regime
from farm.prior import BoxPrior
from farm.simulate import simulate_theta

log = logging.getLogger("single_circuit")

#: candidate thetas drawn per circuit when looking for a moderate-spike observation
_CANDIDATES = 400


@dataclass
class CircuitResult:
    """One circuit's TSNPE run: what it cost and how its final posterior scores."""

    chip: int
    neuron: int
    theta_true: list[float]
    observed_spikes: int
    num_sims: int
    simulate_s: float
    train_s: float
    truncate_s: float
    simulate_cpu_s: float
    train_cpu_s: float
    truncate_cpu_s: float
    acceptance: list[float]
    box_fraction: list[float]
    posterior_err: float
    oracle_err: float
    ratio: float
    posterior_within2: float
    oracle_within2: float
    nrmse: float
    nrmse_per_parameter: list[float]
    contraction_per_parameter: list[float]
    epochs: list[int] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return self.simulate_s + self.train_s + self.truncate_s

    @property
    def cpu_s(self) -> float:
        return self.simulate_cpu_s + self.train_cpu_s + self.truncate_cpu_s


class _Quiet:
    """The posterior as the thresholder sees it: no progress bar, and its draws kept for later."""

    def __init__(self, posterior: Any) -> None:
        self.posterior = posterior
        self.drawn: Any = None

    def sample(self, sample_shape: tuple[int, ...]) -> Any:
        self.drawn = self.posterior.sample(sample_shape, show_progress_bars=False)
        return self.drawn

    def log_prob(self, theta: Any) -> Any:
        return self.posterior.log_prob(theta)


class _NoTracker:
    """sbi's ``Tracker`` protocol, doing nothing: its default writes TensorBoard logs to
    ./sbi-logs, inside whatever directory the bench runs from."""

    log_dir = None

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def add_figure(self, name: str, figure: Any, step: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


class _Clock:
    """Wall and CPU seconds per phase; CPU time is what a busy shared machine does not inflate."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[phase] = self.wall.get(phase, 0.0) + time.perf_counter() - w
            self.cpu[phase] = self.cpu.get(phase, 0.0) + time.process_time() - c


def pick_circuits(num: int, seed: int, chip_model: ChipModel) -> list[tuple[int, int]]:
    """``num`` distinct (chip, neuron) pairs: a random chip of the default pool, random neuron."""
    rng = np.random.default_rng(seed)
    pool = np.asarray(chip_model.pool)
    out: list[tuple[int, int]] = []
    while len(out) < num:
        c = (int(rng.choice(pool)), int(rng.integers(NEURONS_PER_CHIP)))
        if c not in out:
            out.append(c)
    return out


def pick_truth(
    chip: int, neuron: int, seed: int, spikes: tuple[int, int]
) -> tuple[NDArray[np.float32], NDArray[np.float32], int]:
    """A box-prior theta whose trace on this circuit has ``spikes`` [lo, hi] spikes.

    Returns:
        theta (7,) LSB, the observation's features (11,), its spike count.
    """
    theta = BoxPrior(PriorBox()).sample_indexed(seed, np.arange(_CANDIDATES))
    batch = simulate_theta(theta, seed=seed, chip=chip, neuron=neuron)
    ok = np.flatnonzero((batch.spike_count >= spikes[0]) & (batch.spike_count <= spikes[1]))
    if ok.size == 0:
        raise RuntimeError(f"no theta of {_CANDIDATES} gives {spikes} spikes on {chip}:{neuron}")
    i = int(ok[0])
    return theta[i], batch.features[i], int(batch.spike_count[i])


def hpd_box(draws: Any, box: PriorBox, margin: float) -> Any:
    """A box around the HPD region to propose from: the draws' range, widened, inside the prior.

    Why: after a few rounds the HPD region holds well under 1 % of the prior box, and rejection
    from the whole box then costs millions of flow evaluations per round. Proposing uniformly
    from a box that holds the region and keeping what the thresholder accepts samples the same
    truncated prior (uniform on the region), as long as the region does not reach past the box:
    ``margin`` (a share of each range, both sides) is that safety.
    """
    import torch
    from sbi.utils import BoxUniform

    lo, hi = draws.min(0).values, draws.max(0).values
    pad = margin * (hi - lo)
    low = torch.maximum(lo - pad, torch.tensor(box.low, dtype=draws.dtype))
    high = torch.minimum(hi + pad, torch.tensor(box.high, dtype=draws.dtype))
    return BoxUniform(low=low, high=high)


def run_tsnpe(
    x_o: NDArray[np.float32],
    chip: int,
    neuron: int,
    args: argparse.Namespace,
    seed: int,
) -> tuple[Any, dict[str, Any]]:
    """TSNPE on one circuit, as in sbi's tutorial; returns the last posterior and its costs.

    Args:
        x_o: the observation's handcrafted statistics, (11,).
        chip, neuron: the circuit every simulation runs on.
        args: rounds, sims, quantile, support_samples.
        seed: root of this circuit's simulation seeds (round r uses seed + 1 + r).
    """
    import torch
    from sbi.inference import NPE
    from sbi.utils import BoxUniform, RestrictedPrior, get_density_thresholder

    box = PriorBox()
    prior = BoxUniform(
        low=torch.tensor(box.low, dtype=torch.float32),
        high=torch.tensor(box.high, dtype=torch.float32),
    )
    inference = NPE(
        prior=prior, density_estimator="nsf", tracker=_NoTracker(), show_progress_bars=False
    )
    x_obs = torch.as_tensor(x_o, dtype=torch.float32)[None]
    width = torch.tensor(box.high, dtype=torch.float32) - torch.tensor(box.low)
    proposal: Any = prior
    clock = _Clock()
    cost: dict[str, Any] = {"acceptance": [], "box_fraction": [], "epochs": []}
    posterior: Any = None
    for r in range(args.rounds):
        with clock("truncate"):
            if proposal is prior:
                theta = prior.sample((args.sims,))
            else:
                theta = proposal.sample(
                    (args.sims,), save_acceptance_rate=True, print_rejected_frac=False
                )
                cost["acceptance"].append(float(proposal.acceptance_rate))
        with clock("simulate"):
            batch = simulate_theta(theta.numpy(), seed=seed + 1 + r, chip=chip, neuron=neuron)
            x = torch.as_tensor(batch.features, dtype=torch.float32)
        with clock("train"):
            # Maximum likelihood on every round so far: inside the HPD region the truncated
            # prior is the prior up to a constant, so no proposal correction is needed (TSNPE).
            with contextlib.redirect_stdout(io.StringIO()):  # sbi prints "converged after N"
                inference.append_simulations(theta, x).train(
                    force_first_round_loss=True, training_batch_size=args.batch_size
                )
            cost["epochs"].append(int(inference.summary["epochs_trained"][-1]))
            posterior = inference.build_posterior().set_default_x(x_obs)
        if r < args.rounds - 1:
            with clock("truncate"):
                quiet = _Quiet(posterior)
                thresholder = get_density_thresholder(
                    quiet,
                    quantile=args.quantile,
                    num_samples_to_estimate_support=args.support_samples,
                )
                outer = (
                    prior if args.proposal == "prior" else hpd_box(quiet.drawn, box, args.margin)
                )
                proposal = RestrictedPrior(outer, thresholder, sample_with="rejection")
                cost["box_fraction"].append(
                    float(torch.prod((outer.base_dist.high - outer.base_dist.low) / width))
                )
        log.info(
            "%d:%d round %d/%d: %d epochs, acceptance %s, wall s %s, cpu s %s",
            chip,
            neuron,
            r + 1,
            args.rounds,
            cost["epochs"][-1],
            f"{cost['acceptance'][-1]:.3f}" if cost["acceptance"] else "-",
            {k: round(v, 1) for k, v in clock.wall.items()},
            {k: round(v, 1) for k, v in clock.cpu.items()},
        )
    for phase in ("simulate", "train", "truncate"):
        cost[f"{phase}_s"] = clock.wall.get(phase, 0.0)
        cost[f"{phase}_cpu_s"] = clock.cpu.get(phase, 0.0)
    cost["num_sims"] = args.rounds * args.sims
    return posterior, cost


def spike_errors(
    theta: NDArray[np.float32], observed: int, chip: int, neuron: int, seed: int
) -> NDArray[np.int64]:
    """|spike count - observed| of each theta row rerun on (chip, neuron) with fresh noise."""
    batch = simulate_theta(theta, seed=seed, chip=chip, neuron=neuron)
    return np.abs(batch.spike_count.astype(np.int64) - observed)


def score(
    posterior: Any,
    theta_true: NDArray[np.float32],
    observed: int,
    chip: int,
    neuron: int,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    """Own-circuit predictive check, NRMSE and contraction of the final posterior."""
    box = PriorBox()
    low, high = np.asarray(box.low), np.asarray(box.high)
    width = high - low
    draws = posterior.sample((args.moments,), show_progress_bars=False).numpy()
    rerun = draws[: args.draws].astype(np.float32)
    post_err = spike_errors(rerun, observed, chip, neuron, seed)
    oracle = np.repeat(theta_true[None], args.draws, axis=0)
    oracle_err = spike_errors(oracle, observed, chip, neuron, seed + 1)
    rel = (draws.mean(0) - theta_true) / width
    contraction = 1.0 - draws.var(0) / (width**2 / 12.0)
    return {
        "posterior_err": float(post_err.mean()),
        "oracle_err": float(oracle_err.mean()),
        "ratio": float(post_err.mean() / oracle_err.mean()) if oracle_err.mean() else math.inf,
        "posterior_within2": float(np.mean(post_err <= 2)),
        "oracle_within2": float(np.mean(oracle_err <= 2)),
        "nrmse": float(np.sqrt(np.mean(rel**2))),
        "nrmse_per_parameter": np.abs(rel).tolist(),
        "contraction_per_parameter": contraction.tolist(),
    }


def print_table(results: list[CircuitResult]) -> dict[str, float]:
    """One row per circuit, then the mean; returns the mean row (ratio = ratio of mean errors)."""
    head = (
        f"{'circuit':>9s} {'obs':>4s} {'post err':>8s} {'oracle':>7s} {'ratio':>6s} "
        f"{'post +-2':>8s} {'orc +-2':>7s} {'nrmse':>6s} {'contr':>6s} {'sims':>6s} "
        f"{'sim s':>6s} {'train s':>7s} {'trunc s':>7s} {'wall s':>7s} {'cpu s':>7s}"
    )
    print(head)

    def row(name: str, obs: str, v: dict[str, float]) -> None:
        print(
            f"{name:>9s} {obs:>4s} {v['posterior_err']:8.2f} {v['oracle_err']:7.2f} "
            f"{v['ratio']:6.1f} {v['posterior_within2']:8.0%} {v['oracle_within2']:7.0%} "
            f"{v['nrmse']:6.3f} {v['contraction']:6.2f} {v['num_sims']:6.0f} "
            f"{v['simulate_s']:6.2f} {v['train_s']:7.1f} {v['truncate_s']:7.1f} "
            f"{v['wall_s']:7.1f} {v['cpu_s']:7.1f}"
        )

    keys = (
        "posterior_err",
        "oracle_err",
        "posterior_within2",
        "oracle_within2",
        "nrmse",
        "num_sims",
        "simulate_s",
        "train_s",
        "truncate_s",
        "wall_s",
        "cpu_s",
    )
    rows = []
    for r in results:
        v = {k: float(getattr(r, k)) for k in keys}
        v["ratio"] = r.ratio
        v["contraction"] = float(np.mean(r.contraction_per_parameter))
        rows.append(v)
        row(f"{r.chip}:{r.neuron}", str(r.observed_spikes), v)
    mean = {k: float(np.mean([v[k] for v in rows])) for k in (*keys, "contraction")}
    # Pooled like issue 25's figures: a single circuit's oracle error can be 0.
    mean["ratio"] = mean["posterior_err"] / mean["oracle_err"] if mean["oracle_err"] else math.inf
    row("mean", "", mean)
    print()
    print(f"{'parameter':24s} {'|mean-true|/width':>18s} {'contraction':>12s}  (mean of circuits)")
    for j, name in enumerate(PARAMETER_NAMES):
        e = np.mean([r.nrmse_per_parameter[j] for r in results])
        c = np.mean([r.contraction_per_parameter[j] for r in results])
        print(f"{name:24s} {e:18.3f} {c:12.2f}")
    return mean


def _finite(v: Any) -> Any:
    """``v`` with inf and nan as None (a circuit whose oracle never missed has no ratio): JSON."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--circuits", type=int, default=3, help="K circuits, each its own TSNPE")
    ap.add_argument("--rounds", type=int, default=3, help="R rounds per circuit")
    ap.add_argument("--sims", type=int, default=1000, help="M simulations per round")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quantile", type=float, default=1e-4, help="HPD truncation (sbi default)")
    ap.add_argument(
        "--support-samples",
        type=int,
        default=100_000,
        help="posterior draws that set the truncation threshold (sbi's default is 1e6)",
    )
    ap.add_argument(
        "--proposal",
        choices=("box", "prior"),
        default="box",
        help="rejection from a box around the HPD region (default) or from the whole prior",
    )
    ap.add_argument("--margin", type=float, default=0.25, help="HPD box padding, share of range")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="NPE training batch (sbi's default is 200; one core pays about the same per step "
        "for 200 or 1000 rows, so 500 converges in less time, to a slightly worse loss)",
    )
    ap.add_argument("--draws", type=int, default=20, help="reruns of posterior and oracle")
    ap.add_argument("--moments", type=int, default=2000, help="draws for mean, std")
    ap.add_argument("--spikes", type=int, nargs=2, default=(5, 30), metavar=("LO", "HI"))
    ap.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)
    regime = Regime()
    lo, hi = args.spikes
    if not (regime.min_spikes <= lo <= hi <= regime.max_spikes):
        ap.error(
            f"--spikes {lo} {hi} must lie in the regime [{regime.min_spikes}, "
            f"{regime.max_spikes}] with LO <= HI"
        )
    for name in ("circuits", "rounds", "sims", "batch_size", "draws", "moments", "support_samples"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.draws > args.moments:
        ap.error(f"--draws={args.draws} must be <= --moments={args.moments}")

    # sbi's own warnings (low rejection acceptance) go to the root logger: the table has them
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch.manual_seed(args.seed)
    # sbi warns when rejection sampling accepts little; the acceptance is recorded instead
    warnings.filterwarnings("ignore", module=r"sbi\.")
    warnings.filterwarnings("ignore", message="torch.triangular_solve is deprecated")

    results: list[CircuitResult] = []
    for k, (chip, neuron) in enumerate(pick_circuits(args.circuits, args.seed, ChipModel())):
        base = 1_000_000 * args.seed + 1000 * k
        theta_true, x_o, observed = pick_truth(chip, neuron, base, (lo, hi))
        posterior, cost = run_tsnpe(x_o, chip, neuron, args, base + 100)
        s = score(posterior, theta_true, observed, chip, neuron, args, base + 900)
        results.append(
            CircuitResult(
                chip=chip,
                neuron=neuron,
                theta_true=theta_true.tolist(),
                observed_spikes=observed,
                **cost,
                **s,
            )
        )
    print(
        f"TSNPE (sbi NPE, NSF, handcrafted statistics) per circuit: {args.rounds} rounds x "
        f"{args.sims} sims, truncation at the {args.quantile:g} quantile; "
        f"{args.draws} reruns each of posterior and oracle on the circuit; torch threads "
        f"{args.threads}"
    )
    mean = print_table(results)
    if args.out:
        args.out.write_text(
            json.dumps(
                _finite(
                    {
                        "settings": {k: v for k, v in vars(args).items() if k != "out"},
                        "circuits": [
                            asdict(r) | {"wall_s": r.wall_s, "cpu_s": r.cpu_s} for r in results
                        ],
                        "mean": mean,
                    }
                ),
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
