"""Every default of the farm in one place: protocol, prior box, chip, readout and regime.

The paper's exact choices are not public (see ``../shared/paper-notes.md``), so these are ours,
close to BrainScaleS-2 practice. Change a default here and everything downstream follows, because
the store records the values it was made with and refuses to mix them.

Time is hardware time in microseconds (1 µs on the chip = 1 ms biological), voltages in mV,
conductances in µS, currents in nA, capacitance in pF (so that µS·mV = nA and pF/µS = µs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from farm.errors import FarmInputError
from farm.protocol import (
    Protocol as Protocol,
)  # re-exported: the stimulus is defined in farm.protocol
from farm.protocol import Sweep as Sweep

#: Version of the emulator's physics and RNG streams. Bump it whenever a change alters any
#: trace bit for the same seed; stores written by another version are refused on resume.
EMULATOR_VERSION = "1.0"
#: Store layout version.
STORE_FORMAT_VERSION = "1"

#: The seven inferred CapMem parameters, in pynn_brainscales ``HXNeuron`` names.
PARAMETER_NAMES: tuple[str, ...] = (
    "leak_i_bias",
    "reset_v_reset",
    "exponential_v_exp",
    "exponential_i_bias",
    "adaptation_i_bias_a",
    "adaptation_i_bias_b",
    "adaptation_i_bias_tau",
)
#: What each parameter controls physically (after the LSB-to-physics mapping in
#: farm/substrates/circuits.py).
PARAMETER_PHYSICS: dict[str, str] = {
    "leak_i_bias": "tau_mem",
    "reset_v_reset": "v_reset",
    "exponential_v_exp": "v_t",
    "exponential_i_bias": "delta_t",
    "adaptation_i_bias_a": "a",
    "adaptation_i_bias_b": "b",
    "adaptation_i_bias_tau": "tau_w",
}
CAPMEM_MAX_LSB = 1022
NEURONS_PER_CHIP = 512
#: Chips the emulator can emulate: ids 0..NUM_EMULATED_CHIPS-1, each with its own fixed-pattern
#: mismatch. The default pool (``ChipModel.num_chips``) uses the first few; `farm simulate
#: --chip-ids` draws from any others, e.g. chips a posterior was never trained on.
NUM_EMULATED_CHIPS = 1024


@dataclass(frozen=True, slots=True)
class PriorBox:
    """Box-uniform prior over the 7 CapMem parameters, in LSB.

    The bounds are the working range found on the emulator (docs/emulator.md, "Prior bounds"):
    outside them the neuron is silent for any value of the other parameters, or the
    parameter has no visible effect on the 1 ms trace.
    """

    names: tuple[str, ...] = PARAMETER_NAMES
    low: tuple[float, ...] = (40.0, 300.0, 600.0, 60.0, 0.0, 0.0, 20.0)
    high: tuple[float, ...] = (700.0, 650.0, 860.0, 700.0, 600.0, 600.0, 1000.0)
    units: str = "LSB"

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.low) == len(self.high)):
            raise FarmInputError(
                "prior names/low/high lengths differ: "
                f"{len(self.names)}/{len(self.low)}/{len(self.high)}"
            )
        for name, lo, hi in zip(self.names, self.low, self.high):
            if not (0.0 <= lo < hi <= CAPMEM_MAX_LSB):
                raise FarmInputError(
                    f"prior bounds for {name}=[{lo}, {hi}] "
                    f"must satisfy 0 <= low < high <= {CAPMEM_MAX_LSB} LSB"
                )

    @property
    def dim(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "box_uniform",
            "names": list(self.names),
            "low": list(self.low),
            "high": list(self.high),
            "units": self.units,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorBox:
        if d.get("type", "box_uniform") != "box_uniform":
            raise FarmInputError(f"prior type={d.get('type')!r} is not a box prior")
        return cls(
            names=tuple(d["names"]),
            low=tuple(float(v) for v in d["low"]),
            high=tuple(float(v) for v in d["high"]),
            units=d.get("units", "LSB"),
        )


@dataclass(frozen=True, slots=True)
class ChipModel:
    """Calibrated constants, LSB-to-physics gains, mismatch and noise of an emulated BSS-2 chip.

    The calibrated quantities (leak potential, threshold, refractory time, capacitance) are held
    fixed, as calix would set them; the seven inferred parameters map through the gains below.
    """

    # Calibrated, held fixed (configurable): membrane capacitance, leak potential, spike threshold.
    c_mem_pf: float = 2.0
    v_leak_mv: float = 600.0
    v_threshold_mv: float = 1000.0
    t_ref_us: float = 2.0
    # CapMem voltage cells: 0..1022 LSB span 0..1.2 V.
    v_per_lsb_mv: float = 1200.0 / CAPMEM_MAX_LSB
    # Bias currents set conductances: g = gain * lsb (OTA transconductance ~ linear in bias).
    g_leak_us_per_lsb: float = 0.001
    delta_t_mv_per_lsb: float = 0.04
    delta_t_offset_mv: float = 1.0
    a_us_per_lsb: float = 0.0005
    b_na_per_lsb: float = 0.03
    tau_w_scale_us_lsb: float = (
        6000.0  # tau_w = scale / (lsb + offset): larger bias, faster adaptation
    )
    tau_w_offset_lsb: float = 20.0
    # Fixed-pattern mismatch after calibration: relative sigma of each gain, and absolute
    # voltage offsets.
    mismatch_gain_calibrated: float = 0.02
    mismatch_gain_uncalibrated: float = 0.10
    mismatch_offset_mv: float = 5.0
    # Temporal noise on the membrane: white-noise voltage diffusion, mV / sqrt(µs).
    noise_mv_per_sqrt_us: float = 0.6
    # MADC: 10-bit, input range [adc_v_min_mv, adc_v_max_mv], readout noise in codes.
    adc_bits: int = 10
    adc_v_min_mv: float = 300.0
    adc_v_max_mv: float = 1200.0
    adc_noise_lsb: float = 3.0
    # The pool of emulated chips samples are spread over; chip k's mismatch is a pure function
    # of (fab_seed, k).
    num_chips: int = 8
    fab_seed: int = 2026
    #: Explicit chip ids to draw circuits from (sorted, unique), instead of the pool 0..num_chips-1.
    #: None (the default) keeps today's pool and today's stores bit for bit.
    chip_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_chips < 1:
            raise FarmInputError(f"num_chips={self.num_chips} must be >= 1")
        if self.chip_ids is not None:
            ids = tuple(int(c) for c in self.chip_ids)
            if (
                not ids
                or ids != tuple(sorted(set(ids)))
                or ids[0] < 0
                or ids[-1] >= NUM_EMULATED_CHIPS
            ):
                raise FarmInputError(
                    f"chip_ids={list(ids)} must be a non-empty sorted list of distinct ids "
                    f"in [0, {NUM_EMULATED_CHIPS - 1}]"
                )
            object.__setattr__(self, "chip_ids", ids)
        if not self.adc_v_min_mv < self.adc_v_max_mv:
            raise FarmInputError(
                f"adc range [{self.adc_v_min_mv}, {self.adc_v_max_mv}] mV is empty"
            )
        for name in (
            "noise_mv_per_sqrt_us",
            "adc_noise_lsb",
            "mismatch_gain_calibrated",
            "mismatch_gain_uncalibrated",
            "mismatch_offset_mv",
        ):
            if getattr(self, name) < 0:
                raise FarmInputError(f"chip {name}={getattr(self, name)} must be >= 0")

    @property
    def adc_max_code(self) -> int:
        return (1 << self.adc_bits) - 1

    @property
    def pool(self) -> tuple[int, ...]:
        """The chip ids circuits are drawn from: ``chip_ids``, or 0..num_chips-1."""
        return self.chip_ids if self.chip_ids is not None else tuple(range(self.num_chips))

    def ideal(self) -> ChipModel:
        """The same chip without mismatch or noise (reference tests, noise-free predictions)."""
        d = asdict(self)
        d.update(
            mismatch_gain_calibrated=0.0,
            mismatch_gain_uncalibrated=0.0,
            mismatch_offset_mv=0.0,
            noise_mv_per_sqrt_us=0.0,
            adc_noise_lsb=0.0,
        )
        return ChipModel(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain fields; ``chip_ids`` only when set.

        Default stores thus keep their attributes and identity.
        """
        d = asdict(self)
        if d["chip_ids"] is None:
            del d["chip_ids"]
        else:
            d["chip_ids"] = list(d["chip_ids"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChipModel:
        d = dict(d)
        if d.get("chip_ids") is not None:
            d["chip_ids"] = tuple(d["chip_ids"])
        return cls(**d)


@dataclass(frozen=True, slots=True)
class Regime:
    """The regime of interest: spike count during the step within [min_spikes, max_spikes].

    For a multi-sweep protocol the count is that of ``reference_sweep(protocol)`` (one place
    decides).
    """

    min_spikes: int = 1
    max_spikes: int = 40

    def __post_init__(self) -> None:
        if not (0 <= self.min_spikes <= self.max_spikes):
            raise FarmInputError(
                f"regime [{self.min_spikes}, {self.max_spikes}] needs 0 <= min_spikes <= max_spikes"
            )

    @staticmethod
    def reference_sweep(protocol: Protocol) -> int:
        """The sweep whose spike count a multi-sweep observation is judged by: the one whose (mean)
        amplitude is closest to the ``step`` protocol's 60 nA (the first on a tie).

        Why: the regime, the restriction classifier and every restricted prior were defined on the
        60 nA step, so a multi-step sample is "in the regime" exactly when its 60 nA sweep would be;
        a restricted prior trained on `step` stores restricts `multi-step` runs to the same
        circuits. The store's ``spike_count`` is the chip counter of this sweep.
        """
        ref = Protocol().i_stim_na
        amps = [abs(s.mean_amplitude_na - ref) for s in protocol.sweep_list]
        return int(np.argmin(amps))

    def contains(self, counts: ArrayLike) -> NDArray[np.bool_]:
        """True where a spike count lies in the regime (the restriction classifier's label)."""
        c = np.asarray(counts)
        return (c >= self.min_spikes) & (c <= self.max_spikes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Regime:
        """A store's ``regime`` attribute; None (stores that predate it) gives the default."""
        return (
            cls()
            if not d
            else cls(min_spikes=int(d["min_spikes"]), max_spikes=int(d["max_spikes"]))
        )


#: Spike times kept per trace by the kernel (counts stay exact beyond it).
MAX_SPIKES = 256
DEFAULT_CHUNK = 1000
#: New stores of at least LARGE_RUN samples get LARGE_RUN_CHUNK rows per chunk
#: (``default_chunk_size``).
LARGE_RUN = 200_000
LARGE_RUN_CHUNK = 4000


def default_chunk_size(num_sims: int) -> int:
    """Rows per chunk of a new store of ``num_sims`` samples: 1000, or 4000 from 2e5 samples on.

    Why: each chunk writes seven Zarr arrays, six of them a few kB, and zarr-python spends ~2 ms on
    each write whatever its size; with the SIMD kernel those writes are ~30 % of an actor's time at
    1000 rows. Larger chunks amortise them (and suit object stores, where every chunk is a request);
    small runs keep enough chunks to spread over actors. Rows never depend on the chunking.
    """
    return LARGE_RUN_CHUNK if num_sims >= LARGE_RUN else DEFAULT_CHUNK


@dataclass(frozen=True, slots=True)
class FarmDefaults:
    """The bundle a store records: everything needed to regenerate a sample bit for bit."""

    prior: PriorBox = field(default_factory=PriorBox)
    protocol: Protocol = field(default_factory=Protocol)
    chip: ChipModel = field(default_factory=ChipModel)
    regime: Regime = field(default_factory=Regime)
