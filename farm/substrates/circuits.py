"""From CapMem LSB to physical AdEx parameters on one emulated neuron circuit, with mismatch.

Every circuit on a BrainScaleS-2 chip differs (fixed-pattern mismatch). Calibration (calix) evens
out the quantities held fixed here (leak potential, threshold, refractory time, capacitance) to a
small residual; the seven inferred parameters are raw CapMem values, so their transistor-level
mismatch stays (``mismatch_gain_uncalibrated``, ``mismatch_offset_mv``).

The mismatch of (chip k, neuron j) is a pure function of ``(fab_seed, k, j)``: an emulated chip is
just its index, any actor can emulate any chip, and two chips differ like two real ones.

Mapping (docs/emulator.md): with lsb = round(clip(theta, 0, 1022)) as the CapMem stores it,

    g_leak  = g_leak_us_per_lsb * leak_i_bias            [µS]   (tau_mem = C / g_leak)
    v_reset = v_per_lsb_mv * reset_v_reset               [mV]
    v_t     = v_per_lsb_mv * exponential_v_exp           [mV]
    delta_t = delta_t_offset_mv + delta_t_mv_per_lsb * exponential_i_bias   [mV]
    a       = a_us_per_lsb * adaptation_i_bias_a         [µS]
    b       = b_na_per_lsb * adaptation_i_bias_b         [nA]
    tau_w   = tau_w_scale_us_lsb / (adaptation_i_bias_tau + tau_w_offset_lsb)  [µs]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from farm.defaults import (
    CAPMEM_MAX_LSB,
    NEURONS_PER_CHIP,
    NUM_EMULATED_CHIPS,
    PARAMETER_NAMES,
    ChipModel,
)
from farm.errors import FarmInputError
from farm.kernel import rng

_NUM_MISMATCH_DRAWS = 11
_MIN_GAIN = 0.2  # a gain can't flip sign: clip 8-sigma tails of the mismatch


@dataclass(frozen=True, slots=True)
class NeuronPhysics:
    """Per-neuron AdEx parameters in hardware units, float64 arrays of shape (n,)."""

    c_mem_pf: NDArray[np.float64]
    g_leak_us: NDArray[np.float64]
    v_leak_mv: NDArray[np.float64]
    v_reset_mv: NDArray[np.float64]
    v_t_mv: NDArray[np.float64]
    delta_t_mv: NDArray[np.float64]
    a_us: NDArray[np.float64]
    b_na: NDArray[np.float64]
    tau_w_us: NDArray[np.float64]
    v_threshold_mv: NDArray[np.float64]
    t_ref_us: NDArray[np.float64]

    @property
    def tau_mem_us(self) -> NDArray[np.float64]:
        return self.c_mem_pf / self.g_leak_us


def quantize_capmem(theta_lsb: NDArray[np.floating]) -> NDArray[np.float64]:
    """CapMem cells hold integers 0..1022: round and clip like the chip's configuration does."""
    return np.clip(np.rint(np.asarray(theta_lsb, dtype=np.float64)), 0.0, float(CAPMEM_MAX_LSB))


def mismatch_draws(
    chip: NDArray[np.integer], neuron: NDArray[np.integer], model: ChipModel
) -> NDArray[np.float64]:
    """(n, 11) standard normals fixed by (fab_seed, chip, neuron): the circuit's fingerprint."""
    chip = np.asarray(chip, dtype=np.int64)
    neuron = np.asarray(neuron, dtype=np.int64)
    # Any emulated chip, not just the model's pool: a chip's mismatch depends on its id alone.
    if chip.size and (chip.min() < 0 or chip.max() >= NUM_EMULATED_CHIPS):
        raise ValueError(f"chip index outside [0, {NUM_EMULATED_CHIPS - 1}]")
    if neuron.size and (neuron.min() < 0 or neuron.max() >= NEURONS_PER_CHIP):
        raise ValueError(f"neuron index outside [0, {NEURONS_PER_CHIP - 1}]")
    circuit = chip * NEURONS_PER_CHIP + neuron
    keys = rng.stream_keys(model.fab_seed, rng.as_indices(circuit), rng.STREAM_MISMATCH)
    return rng.normals(keys, _NUM_MISMATCH_DRAWS)


def neuron_physics(
    theta_lsb: NDArray[np.floating],
    chip: NDArray[np.integer],
    neuron: NDArray[np.integer],
    model: ChipModel,
) -> NeuronPhysics:
    """Physical parameters of each (theta, chip, neuron) row, mismatch included.

    Args:
        theta_lsb: (n, 7) CapMem values in ``PARAMETER_NAMES`` order.
        chip, neuron: (n,) where each row runs.
        model: the chip's gains, calibrated constants and mismatch sigmas.
    """
    theta = np.asarray(theta_lsb)
    if theta.ndim != 2 or theta.shape[1] != len(PARAMETER_NAMES):
        raise ValueError(f"theta shape {theta.shape} must be (n, {len(PARAMETER_NAMES)})")
    lsb = quantize_capmem(theta)
    z = mismatch_draws(chip, neuron, model)
    s_cal, s_raw, s_off = (
        model.mismatch_gain_calibrated,
        model.mismatch_gain_uncalibrated,
        model.mismatch_offset_mv,
    )

    def gain(col: int, sigma: float) -> NDArray[np.float64]:
        return np.maximum(1.0 + sigma * z[:, col], _MIN_GAIN)

    n = lsb.shape[0]
    leak_i, reset_v, exp_v, exp_i, a_i, b_i, tau_i = (lsb[:, j] for j in range(7))
    return NeuronPhysics(
        c_mem_pf=np.full(n, model.c_mem_pf) * gain(0, s_cal),
        # A zero bias would be an open circuit; the OTA's leakage keeps a floor of half an LSB.
        g_leak_us=model.g_leak_us_per_lsb * np.maximum(leak_i, 0.5) * gain(1, s_raw),
        v_leak_mv=model.v_leak_mv + 0.2 * s_off * z[:, 2],
        v_reset_mv=model.v_per_lsb_mv * reset_v + s_off * z[:, 3],
        v_t_mv=model.v_per_lsb_mv * exp_v + s_off * z[:, 4],
        delta_t_mv=(model.delta_t_offset_mv + model.delta_t_mv_per_lsb * exp_i) * gain(5, s_raw),
        a_us=model.a_us_per_lsb * a_i * gain(6, s_raw),
        b_na=model.b_na_per_lsb * b_i * gain(7, s_raw),
        tau_w_us=model.tau_w_scale_us_lsb / (tau_i + model.tau_w_offset_lsb) * gain(8, s_raw),
        v_threshold_mv=model.v_threshold_mv + 0.2 * s_off * z[:, 9],
        t_ref_us=model.t_ref_us * gain(10, s_cal),
    )


def parse_id_ranges(text: str, *, name: str, top: int, example: str, where: str) -> tuple[int, ...]:
    """Ids from `--chip-ids`/`--neurons` text: a range, a list ``1,5,9``, or both ``0-3,9``.

    Args:
        name: what the ids are, for messages (``chip ids``, ``neurons``).
        top: the largest allowed id; example: a range to show (``100-103``);
        where: what [0, top] is (``the emulator's chips``).

    Returns:
        The ids, sorted and unique.

    Raises:
        FarmInputError: empty, not a range or list of integers, a reversed range, or an id
            outside [0, top].
    """
    allowed = f"give a range like {example} or a list like 1,5,9 of ids in [0, {top}]"
    ids: set[int] = set()
    parts = [p.strip() for p in str(text).split(",")]
    if not all(parts):
        raise FarmInputError(f"{name} {text!r} hold an empty entry; {allowed}")
    for part in parts:
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise FarmInputError(
                f"{name} {text!r}: {part!r} is not an integer or range; {allowed}"
            ) from None
        if hi < lo:
            raise FarmInputError(f"{name} {text!r}: range {part} runs backwards; {allowed}")
        if lo < 0 or hi > top:
            raise FarmInputError(f"{name} {text!r}: {part} is outside {where} [0, {top}]")
        ids.update(range(lo, hi + 1))
    return tuple(sorted(ids))


def parse_chip_ids(text: str) -> tuple[int, ...]:
    """Chip ids from `--chip-ids` text (``100-103``, ``1,5,9``, ``0-3,9``): sorted, unique."""
    top = NUM_EMULATED_CHIPS - 1
    return parse_id_ranges(
        text, name="chip ids", top=top, example="100-103", where="the emulator's chips"
    )


def format_chip_ids(ids: tuple[int, ...] | list[int]) -> str:
    """The inverse of ``parse_chip_ids``: ``(0, 1, 2, 3, 9)`` -> ``"0-3,9"``.

    Short, for messages and reports.
    """
    runs: list[str] = []
    ordered = sorted(int(i) for i in ids)
    start = prev = None
    for i in ordered + [None]:  # type: ignore[list-item]
        if start is not None and (i is None or i != prev + 1):
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None:
            start = i if start is None else start
            prev = i
    return ",".join(runs)
