"""Does every mismatch term show in the fingerprint? Perturb one of the 11 draws at a time.

For a base circuit (the typical one, all 11 draws 0, and a few real circuits of chip 0), each
draw j is set to base - h and base + h (h = 1 and 2 sigma by default), every other draw kept, and
each reference is recorded K times with fresh noise. The separation of the two from ONE recording
is a held-out d': the direction between the two mean traces is fitted on half of the repeats, and
the other half's recordings, projected on it, give d' = (mean+ - mean-) / pooled std. d' >= 1
means one recording tells a circuit at base - h from one at base + h more often than not; a term
"shows" when its best reference reaches that. A second table (``--decode``) reads each draw back
from one fingerprint across thousands of real circuits, where all 11 draws vary at once.

    python bench/fingerprint_terms.py       # the tables in docs/emulator.md (~2 min on 2 cores)
    python bench/fingerprint_terms.py --reps 64 --steps 1 --decode 0 --json out.json

The draws are injected by replacing ``farm.substrates.circuits.mismatch_draws`` for the run:
the emulator's own code maps them to physics and integrates, exactly as for a farm sample.
"""

from __future__ import annotations

import argparse
import json
from unittest import mock

import numpy as np

TERMS = (
    "C",
    "g_leak",
    "v_leak",
    "v_reset",
    "v_t",
    "delta_t",
    "a",
    "b",
    "tau_w",
    "v_threshold",
    "t_ref",
)


def record_with_draws(z: np.ndarray, reps: int, seed: int) -> np.ndarray:
    """(rows, reps, references, T) codes of circuits with mismatch draws ``z`` (rows, 11)."""
    import farm.substrates.circuits as circuits
    from farm.circuits.record import build_substrates, record_fingerprints
    from farm.circuits.references import DEFAULT_REFERENCES
    from farm.defaults import ChipModel

    rows = np.repeat(z, reps, axis=0)
    # distinct (chip, neuron) per row: only the noise keys use them, the draws come from `rows`
    idx = np.arange(rows.shape[0])
    chip, neuron = idx // 512, idx % 512
    subs = build_substrates("emulator", DEFAULT_REFERENCES, ChipModel())
    with mock.patch.object(circuits, "mismatch_draws", lambda c, n, m: rows):
        codes = record_fingerprints(subs, DEFAULT_REFERENCES, seed, chip, neuron)
    return codes.reshape(z.shape[0], reps, *codes.shape[1:]).astype(np.float64)


def held_out_dprime(plus: np.ndarray, minus: np.ndarray) -> float:
    """d' of one recording along the mean difference, fitted and measured on disjoint halves."""
    h = plus.shape[0] // 2
    scores = []
    for fit, test in ((slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))):
        d = plus[fit].mean(0) - minus[fit].mean(0)
        norm = np.linalg.norm(d)
        if norm == 0:
            scores.append(0.0)
            continue
        p, m = plus[test] @ (d / norm), minus[test] @ (d / norm)
        pooled = np.sqrt(0.5 * (p.var(ddof=1) + m.var(ddof=1)))
        scores.append(float((p.mean() - m.mean()) / max(pooled, 1e-9)))
    return float(np.mean(scores))


def dprime_table(bases: np.ndarray, step: float, reps: int, seed: int) -> np.ndarray:
    """d'[base, term, reference] of a change of draw j from base - step to base + step."""
    z = []
    for base in bases:
        for j in range(len(TERMS)):
            for sign in (1.0, -1.0):
                row = base.copy()
                row[j] += sign * step
                z.append(row)
    codes = record_with_draws(np.array(z), reps, seed)
    codes = codes.reshape(len(bases), len(TERMS), 2, reps, *codes.shape[2:])
    num_refs = codes.shape[4]
    return np.array(
        [
            [
                [
                    held_out_dprime(codes[b, j, 0, :, r], codes[b, j, 1, :, r])
                    for r in range(num_refs)
                ]
                for j in range(len(TERMS))
            ]
            for b in range(len(bases))
        ]
    )


def decode_r2(num_chips: int, seed: int) -> np.ndarray:
    """Held-out R^2 of each draw from one fingerprint's statistics, across real circuits.

    Every circuit of chips 0..num_chips-1 is recorded once; gradient boosting (scikit-learn)
    predicts each draw from the handcrafted statistics of every reference
    (``farm.features.summarize``, 11 per reference), fitted on 3/4 of the circuits and scored on
    the rest. Unlike d', the other ten draws vary too, so this is what a fingerprint tells about
    one term of an unknown circuit.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    from farm.circuits.record import build_substrates, record_fingerprints
    from farm.circuits.references import DEFAULT_REFERENCES
    from farm.defaults import ChipModel
    from farm.features import summarize
    from farm.substrates.circuits import mismatch_draws

    chip = np.repeat(np.arange(num_chips), 512)
    neuron = np.tile(np.arange(512), num_chips)
    subs = build_substrates("emulator", DEFAULT_REFERENCES, ChipModel())
    codes = record_fingerprints(subs, DEFAULT_REFERENCES, seed, chip, neuron)
    stats = summarize(codes.reshape(chip.size, -1), DEFAULT_REFERENCES.protocol)
    z = mismatch_draws(chip, neuron, ChipModel())
    order = np.random.default_rng(seed).permutation(chip.size)
    fit, test = order[: chip.size * 3 // 4], order[chip.size * 3 // 4 :]
    r2 = []
    for j in range(len(TERMS)):
        model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=0)
        pred = model.fit(stats[fit], z[fit, j]).predict(stats[test])
        r2.append(1.0 - np.mean((pred - z[test, j]) ** 2) / np.var(z[test, j]))
    return np.array(r2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=32, help="noisy recordings per side")
    ap.add_argument(
        "--steps", default="1,2", help="h values: draws at base +- h sigma, one table each"
    )
    ap.add_argument("--circuits", type=int, default=3, help="real circuits of chip 0 as bases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--decode", type=int, default=8, help="chips for the across-circuit R^2 (0: skip it)"
    )
    ap.add_argument("--json", help="write the tables here")
    args = ap.parse_args()

    from farm.circuits.references import DEFAULT_REFERENCES
    from farm.defaults import ChipModel
    from farm.substrates.circuits import mismatch_draws

    n = args.circuits
    bases = np.vstack(
        [np.zeros((1, len(TERMS))), mismatch_draws(np.zeros(n, int), np.arange(n), ChipModel())]
    )
    names = DEFAULT_REFERENCES.names
    result = {"terms": TERMS, "references": names, "reps": args.reps, "tables": {}}
    for step in (float(h) for h in args.steps.split(",")):
        dp = dprime_table(bases, step, args.reps, args.seed)
        worst = dp.min(axis=0)  # the least favourable base circuit
        print(
            f"\nheld-out d' of a {2 * step:g}-sigma change of one draw, from one recording "
            f"(min over {len(bases)} base circuits, {args.reps} recordings per side)"
        )
        print(f"{'term':12s}" + "".join(f"{n[:12]:>13s}" for n in names) + f"{'best':>7s}")
        for j, term in enumerate(TERMS):
            cells = "".join(f"{v:13.1f}" for v in worst[j])
            print(f"{term:12s}{cells}{worst[j].max():7.1f}")
        result["tables"][str(step)] = {
            "dprime_min_over_bases": worst.tolist(),
            "dprime": dp.tolist(),
        }
    if args.decode:
        r2 = decode_r2(args.decode, args.seed)
        print(
            f"\nheld-out R^2 of each draw from one fingerprint's statistics, "
            f"{args.decode * 512} circuits (chips 0-{args.decode - 1}), gradient boosting"
        )
        for term, v in zip(TERMS, r2):
            print(f"{term:12s}{v:7.2f}")
        result["decode_r2"] = dict(zip(TERMS, r2.tolist()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
