"""Prior, restricted prior, store round-trips and the hardware parameter mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.defaults import PARAMETER_NAMES, ChipModel, PriorBox, Protocol, Regime
from farm.errors import FarmInputError
from farm.prior import BoxPrior, RestrictedPrior, load_prior, prior_from_attrs
from farm.simulate import sim_schema, simulate_indices
from farm.store.sim_store import SimStore, StoreMismatch, open_dataset
from farm.store.spec import StoreSpec
from farm.substrates.bss2 import hxneuron_parameters, madc_to_codes, resample_trace
from farm.substrates.registry import check_available, get_substrate


def box_spec(*, seed: int, num_sims: int, chunk_size: int) -> StoreSpec:
    """A default-setup store spec (box prior, default protocol, chip and regime)."""
    return StoreSpec(
        seed=seed,
        num_sims=num_sims,
        chunk_size=chunk_size,
        prior=BoxPrior().to_dict(),
        protocol=Protocol(),
        chip_model=ChipModel(),
        regime=Regime(),
        schema=sim_schema(Protocol()),
    )


def toy_restricted(box: PriorBox | None = None) -> RestrictedPrior:
    """A one-layer 'classifier' accepting leak_i_bias < 300: the answer is known exactly."""
    box = box or PriorBox()
    w = np.zeros((7, 1))
    w[0, 0] = -1.0
    return RestrictedPrior(
        box,
        [w],
        [np.array([300.0])],
        np.zeros(7),
        np.ones(7),
        threshold_logit=0.0,
        acceptance_rate=(300 - 40) / (700 - 40),
    )


def test_box_prior_draws_are_pure_functions_of_seed_and_index() -> None:
    p = BoxPrior()
    full = p.sample_indexed(3, np.arange(1000))
    np.testing.assert_array_equal(full[500:700], p.sample_indexed(3, np.arange(500, 700)))
    assert not np.array_equal(full, p.sample_indexed(4, np.arange(1000)))
    assert p.support(full).all()
    u = (full - p.low) / (p.high - p.low)
    assert np.all(np.abs(u.mean(0) - 0.5) < 0.05)


def test_restricted_prior_samples_only_accepted_region_and_round_trips(tmp_path: Path) -> None:
    prior = toy_restricted()
    theta = prior.sample_indexed(1, np.arange(2000))
    assert np.all(theta[:, 0] < 300)
    np.testing.assert_array_equal(theta[100:300], prior.sample_indexed(1, np.arange(100, 300)))
    prior.save(tmp_path / "r")
    loaded = load_prior(tmp_path / "r")
    assert isinstance(loaded, RestrictedPrior) and loaded.fingerprint == prior.fingerprint
    np.testing.assert_array_equal(loaded.sample_indexed(1, np.arange(2000)), theta)
    lp = loaded.log_prob(
        np.array(
            [[100, 400, 700, 100, 0, 0, 100], [400, 400, 700, 100, 0, 0, 100]], dtype=np.float32
        )
    )
    assert np.isfinite(lp[0]) and lp[1] == -np.inf
    manifest = json.loads((tmp_path / "r" / "restricted_prior.json").read_text())
    manifest["threshold_logit"] = 5.0
    (tmp_path / "r" / "restricted_prior.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="fingerprint"):
        load_prior(tmp_path / "r")


def test_prior_check_names_the_bad_value() -> None:
    theta = BoxPrior().sample(3)
    theta[1, 5] = 900
    with pytest.raises(ValueError, match=r"row 1: adaptation_i_bias_b=900 outside \[0, 600\] LSB"):
        BoxPrior().check(theta)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"low": (0,) * 6, "high": (1,) * 7},
        {"low": (5.0,) * 7, "high": (5.0,) * 7},
        {"high": (2000.0,) * 7},
    ],
)
def test_prior_box_validates(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PriorBox(**kwargs)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(num_sims=st.integers(1, 90), chunk=st.integers(1, 40))
def test_store_write_read_round_trips_for_any_chunk_size(
    tmp_path_factory, num_sims: int, chunk: int
) -> None:
    url = str(tmp_path_factory.mktemp("rt") / "s.zarr")
    spec = box_spec(seed=9, num_sims=num_sims, chunk_size=chunk)
    store = SimStore.create_or_resume(url, spec)
    sub = get_substrate("emulator")
    expected = simulate_indices(BoxPrior(), 9, np.arange(num_sims), sub)
    for c in reversed(range(store.num_chunks)):  # any order
        a, b = store.chunk_bounds(c)
        store.write_chunk(c, simulate_indices(BoxPrior(), 9, np.arange(a, b), sub).arrays())
        store.mark_done(c)
    ds = open_dataset(url)
    np.testing.assert_array_equal(ds.trace.values, expected.trace)
    np.testing.assert_array_equal(ds.theta.values, expected.theta)
    np.testing.assert_array_equal(ds.features.values, expected.features)


def test_open_dataset_hides_unfinished_chunks(tmp_path: Path) -> None:
    spec = box_spec(seed=1, num_sims=50, chunk_size=20)
    store = SimStore.create_or_resume(str(tmp_path / "s.zarr"), spec)
    store.write_chunk(
        1, simulate_indices(BoxPrior(), 1, np.arange(20, 40), get_substrate("emulator")).arrays()
    )
    store.mark_done(1)
    ds = open_dataset(str(tmp_path / "s.zarr"))
    assert ds.sizes["sample"] == 20 and int(ds.trace.min()) >= 0


def test_protocol_and_chip_round_trip_through_json() -> None:
    p = Protocol(t_stim_us=500.0, t_post_us=400.0)
    assert Protocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    m = ChipModel(num_chips=3)
    assert ChipModel.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    with pytest.raises(ValueError, match="dt_us"):
        Protocol(sample_period_us=1.0, dt_us=0.3)


def test_hxneuron_mapping_rounds_clips_and_names_knobs() -> None:
    theta = np.array([[100.4, 500.6, 700, 200, -3, 1030, 50]], dtype=np.float32)
    params = hxneuron_parameters(theta, i_stim_na=60.0)
    assert params["leak_i_bias"] == [100] and params["reset_v_reset"] == [501]
    assert params["adaptation_i_bias_a"] == [0] and params["adaptation_i_bias_b"] == [1022]
    assert set(PARAMETER_NAMES) <= set(params) and params["constant_current_i_offset"] == 600
    assert params["exponential_enable"] and params["adaptation_enable"]


def test_madc_resampling_and_codes() -> None:
    p = Protocol()
    times = np.arange(0, p.duration_us, 1 / 30.0)  # ~30 MSa/s
    values = 500 + 0 * times
    values[times >= 500] = 1500
    grid = resample_trace(times, values, p)
    assert grid.shape == (1000,) and grid[499] == 500 and grid[500] == 1500
    np.testing.assert_array_equal(madc_to_codes(grid, 1023)[[0, 999]], [500, 1023])


@pytest.mark.parametrize("scheme", ["memory://", "file://"])
def test_store_at_fsspec_url(scheme: str, tmp_path: Path) -> None:
    from farm.run.runner import run_farm

    url = (
        f"{scheme}{tmp_path}/s.zarr" if scheme == "file://" else f"memory://{tmp_path.name}/s.zarr"
    )
    summary = run_farm(url, num_sims=300, seed=4, chunk_size=100, in_process=True)
    assert summary["complete"]
    ds = open_dataset(url)
    expected = simulate_indices(BoxPrior(), 4, np.arange(300), get_substrate("emulator"))
    np.testing.assert_array_equal(ds.trace.values, expected.trace)


def test_store_prior_attribute_parses_to_one_description(tmp_path: Path) -> None:
    """What inference reads back from a store: the box, and whether (and which) restriction."""
    restricted = toy_restricted()
    box = prior_from_attrs(BoxPrior().to_dict())
    assert (
        not box.is_restricted
        and box.box == PriorBox()
        and box.matches(BoxPrior())
        and not box.matches(restricted)
    )
    assert prior_from_attrs(None) == box  # stores that predate the attribute: the default box
    desc = prior_from_attrs(json.loads(json.dumps(restricted.to_dict())))
    assert (
        desc.is_restricted
        and desc.fingerprint == restricted.fingerprint
        and desc.box_prior().box == PriorBox()
    )
    assert desc.matches(restricted) and not desc.matches(BoxPrior())
    for bad in (
        {"type": "restricted", "box": PriorBox().to_dict()},
        {"type": "gaussian"},
        {"names": ["x"], "low": [0]},
    ):
        with pytest.raises(FarmInputError, match="prior attribute"):
            prior_from_attrs(bad)


def test_regime_contains_is_the_closed_spike_count_interval() -> None:
    r = Regime(min_spikes=1, max_spikes=40)
    np.testing.assert_array_equal(
        r.contains(np.array([0, 1, 20, 40, 41])), [False, True, True, True, False]
    )
    assert (
        Regime.from_dict(json.loads(json.dumps(r.to_dict()))) == r
        and Regime.from_dict(None) == Regime()
    )


def test_bad_input_raises_the_typed_input_error(tmp_path: Path) -> None:
    """The command line maps FarmInputError to exit code 2 by type, not by message."""
    with pytest.raises(FarmInputError, match="loihi"):
        check_available("loihi")
    with pytest.raises(FarmInputError, match="loihi"):
        get_substrate("loihi")
    with pytest.raises(FarmInputError, match="dt_us"):
        Protocol(sample_period_us=1.0, dt_us=0.3)
    with pytest.raises(FarmInputError, match="chunk_size=0"):
        StoreSpec(
            seed=1,
            num_sims=5,
            chunk_size=0,
            prior=BoxPrior().to_dict(),
            protocol=Protocol(),
            chip_model=ChipModel(),
            regime=Regime(),
            schema=sim_schema(Protocol()),
        )
    with pytest.raises(FarmInputError, match="restricted_prior.json"):
        load_prior(tmp_path)
    spec = box_spec(seed=1, num_sims=5, chunk_size=5)
    SimStore.create_or_resume(str(tmp_path / "s.zarr"), spec)
    with pytest.raises(StoreMismatch, match="seed=1") as info:
        SimStore.create_or_resume(
            str(tmp_path / "s.zarr"),
            StoreSpec(**{**{f: getattr(spec, f) for f in spec.__slots__}, "seed": 2}),
        )
    assert isinstance(info.value, FarmInputError)


def test_write_chunk_needs_every_array_of_the_schema(tmp_path: Path) -> None:
    spec = box_spec(seed=1, num_sims=40, chunk_size=20)
    store = SimStore.create_or_resume(str(tmp_path / "s.zarr"), spec)
    arrays = simulate_indices(BoxPrior(), 1, np.arange(20), get_substrate("emulator")).arrays()
    assert set(store.data_arrays) == set(arrays) == set(spec.schema.array_names)
    with pytest.raises(ValueError, match="trace"):
        store.write_chunk(0, {k: v for k, v in arrays.items() if k != "trace"})
    with pytest.raises(ValueError, match="20 rows"):
        store.write_chunk(1, {k: v[:10] for k, v in arrays.items()})
    assert not SimStore.open(tmp_path / "s.zarr").done_mask().any()
