"""Samples as pure functions of (seed, index): parameters, placement, noise, trace, statistics.

This is the one place that turns a sample index into a simulated row. Actors, the in-process
path, `--theta` runs and posterior-predictive checks all go through it, which is why a store is
bit-identical whatever ran it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import ArrayLike, NDArray

from farm.defaults import (
    NEURONS_PER_CHIP,
    NUM_EMULATED_CHIPS,
    PARAMETER_NAMES,
    ChipModel,
    Protocol,
    Regime,
)
from farm.errors import FarmInputError
from farm.features import feature_names, feature_units, summarize
from farm.kernel import rng
from farm.prior import AnyPrior
from farm.store.schema import ArraySpec, CoordSpec, StoreSchema
from farm.substrates.base import Substrate
from farm.substrates.registry import get_substrate


@dataclass(frozen=True, slots=True)
class SimBatch:
    """Rows of a store: theta (n,7) f32 LSB, trace (n, sweeps*T) i16, spike_count (n,) i32 (the
    regime's sweep), features (n,F) f32, chip/neuron (n,) i16, seed (n,) u64 noise keys (sweep 0's;
    later sweeps' keys derive from it, ``farm.kernel.rng.sweep_keys``)."""

    theta: NDArray[np.float32]
    trace: NDArray[np.int16]
    spike_count: NDArray[np.int32]
    features: NDArray[np.float32]
    chip: NDArray[np.int16]
    neuron: NDArray[np.int16]
    seed: NDArray[np.uint64]

    def __len__(self) -> int:
        return int(self.theta.shape[0])

    def arrays(self) -> dict[str, NDArray[np.generic]]:
        """The rows by store array name (what ``SimStore.write_chunk`` takes)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def sim_schema(protocol: Protocol) -> StoreSchema:
    """The store layout of ``SimBatch`` rows under ``protocol``.

    Labelled axes, dtypes, fill values and units.

    A multi-sweep protocol keeps one flat ``time`` axis (sweep k's samples after sweep k-1's, at
    k * duration + t) and adds the auxiliary coordinate ``sweep`` along it, so
    ``ds.trace.groupby("sweep")`` or ``ds.trace.where(ds.sweep == k)`` split the sweeps.
    """
    t, p = protocol.num_samples, len(PARAMETER_NAMES)
    names = feature_names(protocol)
    time_us = (np.arange(t) * protocol.sample_period_us).astype(np.float32)
    coords = [
        CoordSpec("parameter", tuple(PARAMETER_NAMES), str),
        CoordSpec("feature", names, str),
        CoordSpec("time", tuple(time_us.tolist()), "float32", {"units": "us"}),
    ]
    trace_attrs: dict[str, str] = {}
    attrs: dict[str, object] = {}
    spike_count_unit = "spikes during the step current"
    if protocol.num_sweeps > 1:
        sweep = np.repeat(np.arange(protocol.num_sweeps), protocol.samples_per_sweep)
        coords.append(
            CoordSpec(
                "sweep",
                tuple(sweep.tolist()),
                "int16",
                {"long_name": "sweep of the protocol each time bin belongs to"},
                dim="time",
            )
        )
        trace_attrs = {"coordinates": "sweep"}
        ref = Regime.reference_sweep(protocol)
        attrs = {"num_sweeps": protocol.num_sweeps, "reference_sweep": ref}
        spike_count_unit = (
            f"spikes during the current of sweep {ref}, the regime's reference sweep "
            "(farm.defaults.Regime.reference_sweep)"
        )
    return StoreSchema(
        coords=tuple(coords),
        arrays=(
            ArraySpec("theta", "float32", ("parameter",), (p,), np.nan),
            ArraySpec("trace", "int16", ("time",), (t,), -1, trace_attrs),
            ArraySpec("spike_count", "int32", (), (), -1),
            ArraySpec("features", "float32", ("feature",), (len(names),), np.nan),
            ArraySpec("chip", "int16", (), (), -1),
            ArraySpec("neuron", "int16", (), (), -1),
            ArraySpec("seed", "uint64", (), (), 0),
        ),
        attrs={
            "parameter_names": list(PARAMETER_NAMES),
            "feature_names": list(names),
            "units": {
                "theta": "LSB (CapMem)",
                "trace": "ADC code (MADC, 10 bit)",
                "time": "us (hardware time)",
                "spike_count": spike_count_unit,
                "features": feature_units(protocol),
            },
            "neurons_per_chip": NEURONS_PER_CHIP,
        }
        | attrs,
    )


def placement(
    seed: int, indices: NDArray[np.integer], chip_model: ChipModel
) -> tuple[NDArray[np.int16], NDArray[np.int16]]:
    """The emulated (chip, neuron) sample i runs on: a pure function of (seed, i).

    The chip is drawn uniformly from ``chip_model.pool``; for the default pool 0..num_chips-1 the
    k-th pool entry is chip k, so stores made before ``chip_ids`` existed are reproduced bit for
    bit.
    """
    u = rng.uniforms(
        rng.stream_keys(int(seed), rng.as_indices(indices), rng.STREAM_PLACEMENT), 0, 2
    )
    pool = np.asarray(chip_model.pool, dtype=np.int64)
    chip = pool[np.minimum((u[:, 0] * pool.size).astype(np.int64), pool.size - 1)]
    neuron = np.minimum((u[:, 1] * NEURONS_PER_CHIP).astype(np.int64), NEURONS_PER_CHIP - 1)
    return chip.astype(np.int16), neuron.astype(np.int16)


def noise_keys(seed: int, indices: NDArray[np.integer]) -> NDArray[np.uint64]:
    return rng.stream_keys(int(seed), rng.as_indices(indices), rng.STREAM_NOISE)


def simulate_rows(
    theta: NDArray[np.floating],
    seed: int,
    indices: NDArray[np.integer],
    substrate: Substrate,
    circuits: tuple[NDArray[np.int16], NDArray[np.int16]] | None = None,
) -> SimBatch:
    """Simulate given parameter rows as samples ``indices`` of a run with root ``seed``.

    ``circuits``: (chip, neuron) ids per row to run on instead of the seed's placement.
    """
    idx = rng.as_indices(indices)
    theta32 = np.ascontiguousarray(theta, dtype=np.float32)
    if theta32.shape[0] != idx.size:
        raise FarmInputError(f"theta has {theta32.shape[0]} rows but {idx.size} indices were given")
    chip, neuron = placement(seed, idx, substrate.chip_model) if circuits is None else circuits
    keys = noise_keys(seed, idx)
    res = substrate.run(theta32, chip, neuron, keys)
    feats = summarize(res.trace, substrate.protocol, substrate.chip_model)
    return SimBatch(
        theta=theta32,
        trace=res.trace,
        spike_count=res.spike_count,
        features=feats,
        chip=chip,
        neuron=neuron,
        seed=keys,
    )


def simulate_indices(
    prior: AnyPrior, seed: int, indices: NDArray[np.integer], substrate: Substrate
) -> SimBatch:
    """Samples ``indices`` of the run (prior, seed): parameters drawn from the prior's stream."""
    idx = rng.as_indices(indices)
    return simulate_rows(prior.sample_indexed(seed, idx), seed, idx, substrate)


def simulate_theta(
    theta: NDArray[np.floating],
    *,
    seed: int = 0,
    first_index: int = 0,
    protocol: Protocol | None = None,
    chip_model: ChipModel | None = None,
    substrate: str | Substrate = "emulator",
    chip: ArrayLike | None = None,
    neuron: ArrayLike | None = None,
) -> SimBatch:
    """Simulate parameter sets directly (posterior-predictive checks, `--theta` runs).

    Args:
        theta: (n, 7) CapMem LSB in ``PARAMETER_NAMES`` order.
        seed: root seed of the noise and placement streams; row k is sample first_index + k.
        protocol, chip_model: defaults if None.
        substrate: a name (``emulator``, ``bss2``) or a built substrate.
        chip, neuron: run the rows on these circuits (one id for all rows, or one per row), e.g.
            an observation's own circuit; any emulated chip [0, 1023], neuron [0, 511]. None keeps
            the seed's placement for that id, so without both the rows are bit-identical to
            samples first_index.. of a farm run with this seed.

    Raises:
        FarmInputError: an id outside its range, not an integer, or a count unlike theta's rows.
    """
    sub = (
        get_substrate(substrate, protocol, chip_model) if isinstance(substrate, str) else substrate
    )
    t = np.asarray(theta, dtype=np.float32)
    if t.ndim == 1:
        t = t[None, :]
    idx = np.arange(first_index, first_index + t.shape[0])
    if chip is None and neuron is None:
        return simulate_rows(t, seed, idx, sub)
    placed_chip, placed_neuron = placement(seed, idx, sub.chip_model)
    circuits = (
        _circuit_ids("chip", chip, placed_chip, NUM_EMULATED_CHIPS),
        _circuit_ids("neuron", neuron, placed_neuron, NEURONS_PER_CHIP),
    )
    return simulate_rows(t, seed, idx, sub, circuits=circuits)


def _circuit_ids(
    name: str, given: ArrayLike | None, placed: NDArray[np.int16], limit: int
) -> NDArray[np.int16]:
    """``given`` ids (scalar or per row) as int16 per row, else the placement's; one-line errors."""
    if given is None:
        return placed
    ids = np.asarray(given)
    whole = np.issubdtype(ids.dtype, np.floating) and bool(np.all(np.mod(ids, 1) == 0))
    if ids.dtype == bool or not (np.issubdtype(ids.dtype, np.integer) or whole):
        raise FarmInputError(f"{name}={given!r} must be integer ids in [0, {limit - 1}]")
    if ids.ndim > 1 or (ids.ndim == 1 and ids.size != placed.size):
        raise FarmInputError(
            f"{name} has {ids.size} ids for {placed.size} rows; give one id or one per row"
        )
    bad = ids[(ids < 0) | (ids >= limit)] if ids.size else ids
    if bad.size:
        raise FarmInputError(f"{name}={bad.flat[0]:g} outside [0, {limit - 1}]")
    return np.broadcast_to(ids.astype(np.int16), placed.shape).copy()
