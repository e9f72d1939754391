"""The numba AdEx kernel against an independent plain-numpy Euler integrator, and its invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.defaults import ChipModel, PriorBox, Protocol
from farm.prior import BoxPrior
from farm.simulate import simulate_theta
from farm.substrates.circuits import neuron_physics
from farm.substrates.emulator import EmulatorSubstrate


def reference_adex(
    theta: np.ndarray, protocol: Protocol, model: ChipModel
) -> tuple[list[np.ndarray], np.ndarray]:
    """Textbook forward-Euler AdEx, vectorised over neurons in numpy: spike times and v samples."""
    n = theta.shape[0]
    ph = neuron_physics(theta, np.zeros(n, int), np.arange(n) % 512, model)
    dt = protocol.dt_us
    steps = protocol.num_samples * protocol.steps_per_sample
    on, off = round(protocol.stim_on_us / dt), round(protocol.stim_off_us / dt)
    v = ph.v_leak_mv.copy()
    w = np.zeros(n)
    ref = np.zeros(n, dtype=int)
    n_ref = np.rint(ph.t_ref_us / dt).astype(int)
    spikes: list[list[float]] = [[] for _ in range(n)]
    v_samples = np.empty((n, protocol.num_samples))
    for step in range(steps):
        if step % protocol.steps_per_sample == 0:
            v_samples[:, step // protocol.steps_per_sample] = v
        current = protocol.i_stim_na if on <= step < off else 0.0
        dw = dt / ph.tau_w_us * (ph.a_us * (v - ph.v_leak_mv) - w)
        exp_term = (
            ph.g_leak_us * ph.delta_t_mv * np.exp(np.minimum((v - ph.v_t_mv) / ph.delta_t_mv, 30.0))
        )
        dv = dt / ph.c_mem_pf * (-ph.g_leak_us * (v - ph.v_leak_mv) + exp_term - w + current)
        clamped = ref > 0
        v = np.where(clamped, ph.v_reset_mv, v + dv)
        ref = np.where(clamped, ref - 1, ref)
        w = w + dw
        fired = v >= ph.v_threshold_mv
        for i in np.flatnonzero(fired):
            spikes[i].append((step + 1) * dt)
        v = np.where(fired, ph.v_reset_mv, v)
        w = np.where(fired, w + ph.b_na, w)
        ref = np.where(fired, n_ref, ref)
    return [np.array(s) for s in spikes], v_samples


@pytest.fixture(scope="module")
def handful() -> np.ndarray:
    """A handful of parameter sets covering silent, tonic, adapting and fast-spiking neurons."""
    theta = BoxPrior().sample(24, seed=7).astype(np.float64)
    theta[0] = [150, 450, 700, 200, 100, 300, 200]  # adapting
    theta[1] = [100, 600, 640, 300, 0, 0, 500]  # tonic, no adaptation
    theta[2] = [650, 400, 850, 100, 500, 500, 50]  # silent
    return theta


def test_kernel_matches_numpy_reference(handful: np.ndarray) -> None:
    protocol, model = Protocol(), ChipModel().ideal()
    ref_spikes, ref_v = reference_adex(handful, protocol, model)
    res = EmulatorSubstrate(protocol, model).run(
        handful.astype(np.float32),
        np.zeros(len(handful), np.int16),
        (np.arange(len(handful)) % 512).astype(np.int16),
        np.zeros(len(handful), np.uint64),
    )
    spiking = 0
    for i, spikes in enumerate(ref_spikes):
        got = res.spike_times[i][~np.isnan(res.spike_times[i])]
        assert got.size == spikes.size, f"row {i}: {got.size} spikes vs reference {spikes.size}"
        np.testing.assert_allclose(got, spikes, atol=protocol.dt_us + 1e-4)
        in_stim = np.sum((spikes > protocol.stim_on_us) & (spikes <= protocol.stim_off_us))
        assert res.spike_count[i] == in_stim
        spiking += spikes.size > 0
    assert 3 <= spiking < len(ref_spikes), "the handful should mix silent and spiking neurons"
    codes = np.clip(
        np.floor(
            (ref_v - model.adc_v_min_mv)
            * model.adc_max_code
            / (model.adc_v_max_mv - model.adc_v_min_mv)
            + 0.5
        ),
        0,
        model.adc_max_code,
    )
    assert np.max(np.abs(codes - res.trace)) <= 1


def test_mismatch_makes_chips_differ_but_reproducibly() -> None:
    theta = np.tile(np.array([[150, 450, 700, 200, 100, 300, 200]], np.float32), (64, 1))
    model = ChipModel(noise_mv_per_sqrt_us=0.0, adc_noise_lsb=0.0)
    sub = EmulatorSubstrate(Protocol(), model)
    keys = np.zeros(64, np.uint64)
    neurons = np.arange(64, dtype=np.int16)
    a = sub.run(theta, np.zeros(64, np.int16), neurons, keys)
    b = sub.run(theta, np.zeros(64, np.int16), neurons, keys)
    c = sub.run(theta, np.ones(64, np.int16), neurons, keys)
    np.testing.assert_array_equal(a.trace, b.trace)
    assert len(np.unique(a.spike_count)) > 1, (
        "neurons of one chip must differ (fixed-pattern mismatch)"
    )
    assert not np.array_equal(a.trace, c.trace), "two chips must differ"


def test_temporal_noise_varies_between_trials_of_one_neuron() -> None:
    theta = np.tile(np.array([[150, 450, 700, 200, 100, 300, 200]], np.float32), (16, 1))
    sub = EmulatorSubstrate()
    res = sub.run(
        theta, np.zeros(16, np.int16), np.zeros(16, np.int16), np.arange(16, dtype=np.uint64)
    )
    assert len({r.tobytes() for r in res.trace}) == 16
    rest = res.trace[:, 20:100].astype(float)
    assert 1.0 < rest.std(axis=1).mean() < 10.0, (
        "readout + membrane noise should be a few ADC codes at rest"
    )


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=7, max_size=7), st.integers(0, 2**32))
def test_any_theta_in_prior_gives_finite_trace_within_adc_range(u: list[float], seed: int) -> None:
    box = PriorBox()
    theta = np.array(
        [lo + ui * (hi - lo) for lo, hi, ui in zip(box.low, box.high, u)], dtype=np.float32
    )
    batch = simulate_theta(theta, seed=seed)
    assert batch.trace.dtype == np.int16
    assert batch.trace.min() >= 0 and batch.trace.max() <= 1023
    assert np.all(np.isfinite(batch.features))
    assert batch.spike_count[0] >= 0


def test_time_step_converged() -> None:
    """Halving dt changes the spike count less than trial-to-trial noise does (docs/emulator.md)."""
    theta = BoxPrior().sample(400, seed=3)
    coarse = simulate_theta(theta, seed=1, chip_model=ChipModel().ideal()).spike_count.astype(float)
    fine = simulate_theta(
        theta, seed=1, chip_model=ChipModel().ideal(), protocol=Protocol(dt_us=0.05)
    ).spike_count.astype(float)
    trial = simulate_theta(theta, seed=2).spike_count.astype(float) - simulate_theta(
        theta, seed=1
    ).spike_count.astype(float)
    active = fine > 0
    rel_err = np.abs(coarse - fine)[active] / fine[active]
    assert np.median(rel_err) < 0.05
    assert np.mean(np.abs(coarse - fine)) <= np.mean(np.abs(trial)) + 0.5
