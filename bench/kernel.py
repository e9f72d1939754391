"""Emulator kernel throughput (neuron-steps/s) against a plain numpy Euler AdEx, same run.

Noise, mismatch and ADC readout are on in the kernel; the numpy baseline integrates the same
equations without noise (it would only get slower with it). Both are timed best-of-``--repeats``,
alternating, in the same run; prints the ratio (issue 14 asks for >= 6.5x).

    python bench/kernel.py [--n 20000] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numba
import numpy as np

from farm.defaults import ChipModel, Protocol
from farm.prior import BoxPrior
from farm.simulate import noise_keys, placement
from farm.substrates.circuits import neuron_physics
from farm.substrates.emulator import EmulatorSubstrate


def numpy_euler(theta: np.ndarray, protocol: Protocol, model: ChipModel) -> int:
    n = theta.shape[0]
    ph = neuron_physics(theta, np.zeros(n, int), np.arange(n) % 512, model)
    dt = protocol.dt_us
    on, off = round(protocol.stim_on_us / dt), round(protocol.stim_off_us / dt)
    v, w = ph.v_leak_mv.copy(), np.zeros(n)
    spikes = 0
    for step in range(protocol.num_samples * protocol.steps_per_sample):
        current = protocol.i_stim_na if on <= step < off else 0.0
        dw = dt / ph.tau_w_us * (ph.a_us * (v - ph.v_leak_mv) - w)
        v = v + dt / ph.c_mem_pf * (
            -ph.g_leak_us * (v - ph.v_leak_mv)
            + ph.g_leak_us
            * ph.delta_t_mv
            * np.exp(np.minimum((v - ph.v_t_mv) / ph.delta_t_mv, 30.0))
            - w
            + current
        )
        w = w + dw
        fired = v >= ph.v_threshold_mv
        spikes += int(fired.sum())
        v = np.where(fired, ph.v_reset_mv, v)
        w = np.where(fired, w + ph.b_na, w)
    return spikes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="neurons per kernel call")
    ap.add_argument("--n-numpy", type=int, default=2000, help="neurons for the numpy baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    protocol, model = Protocol(), ChipModel()
    steps = protocol.num_samples * protocol.steps_per_sample
    theta = BoxPrior().sample(args.n, seed=1)
    idx = np.arange(args.n)
    chip, neuron = placement(1, idx, model)
    keys = noise_keys(1, idx)
    sub = EmulatorSubstrate(protocol, model)
    sub.run(theta[:10], chip[:10], neuron[:10], keys[:10])  # compile / load cache
    theta_np = theta[: args.n_numpy].astype(np.float64)
    best, best_numpy = alternate(
        lambda: sub.run(theta, chip, neuron, keys),
        lambda: numpy_euler(theta_np, protocol, model),
        args.repeats,
    )
    kernel_rate = args.n * steps / best
    numpy_rate = args.n_numpy * steps / best_numpy
    print(
        f"kernel (numba, {args.threads} threads, noise+mismatch+ADC): "
        f"{kernel_rate:.3g} neuron-steps/s  ({args.n / best:,.0f} traces/s)"
    )
    print(f"baseline (numpy Euler, no noise):                {numpy_rate:.3g} neuron-steps/s")
    ratio = kernel_rate / numpy_rate
    print(
        f"ratio kernel / numpy: {ratio:.1f}x   "
        f"(target >= 6.5x: {'yes' if ratio >= 6.5 else 'NO'}; "
        f"kernel >= 1e8: {'yes' if kernel_rate >= 1e8 else 'NO'})"
    )
    # The same comparison with both on one thread pinned to one CPU: on a VM whose virtual CPUs run
    # at different speeds (a busy host), the 2-thread figure moves with whichever CPU the
    # single-threaded baseline lands on; this one compares like with like.
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        cpus = os.sched_getaffinity(0)
        numba.set_num_threads(1)
        os.sched_setaffinity(0, {min(cpus)})
        n1 = args.n // 4
        try:
            one, one_numpy = alternate(
                lambda: sub.run(theta[:n1], chip[:n1], neuron[:n1], keys[:n1]),
                lambda: numpy_euler(theta_np, protocol, model),
                args.repeats,
            )
        finally:
            os.sched_setaffinity(0, cpus)
            numba.set_num_threads(args.threads)
        rate1, rate1_numpy = n1 * steps / one, args.n_numpy * steps / one_numpy
        print(
            f"one thread each, pinned to CPU {min(cpus)}: kernel {rate1:.3g}, "
            f"numpy {rate1_numpy:.3g} neuron-steps/s: ratio {rate1 / rate1_numpy:.1f}x"
        )


def alternate(
    kernel: Callable[[], object], baseline: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Best wall seconds of each, the two alternating, so a burst of load from other processes on a
    shared machine hits both rather than skewing the ratio."""
    best = best_baseline = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        kernel()
        best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        baseline()
        best_baseline = min(best_baseline, time.perf_counter() - t0)
    return best, best_baseline


if __name__ == "__main__":
    main()
