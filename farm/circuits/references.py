"""The reference settings a circuit is fingerprinted at: CapMem values and a stimulus, as data.

A circuit's fixed-pattern mismatch is 11 standard normals (``farm.substrates.circuits``): gains on
C, g_leak, delta_t, a, b, tau_w, t_ref and offsets on v_leak, v_reset, v_t, v_threshold. Each
reference isolates a few of them, so that every term moves at least one recording
(docs/emulator.md, "Circuit fingerprints", has the measurement):

- ``leak``: a subthreshold step, exponential and adaptation off: v_leak (baseline), g_leak (step
  height I / g_leak), C (rise and fall time C / g_leak).
- ``reset``: a strong step with the exponential term and adaptation off, reset near threshold:
  v_reset (the clamped samples after each spike), v_threshold and t_ref (the fast sawtooth's
  period, summed over ~45 spikes).
- ``exponential``: the exponential term on (v_t below threshold, delta_t 13 mV), driven at 1.5x
  rheobase: v_t and delta_t set rheobase and the upswing.
- ``exponential-strong``: a wide exponential knee (delta_t 25 mV) driven hard: every
  interspike trajectory runs through the knee, whose curvature is delta_t (the one reference that
  tells delta_t from v_t across circuits).
- ``subthreshold-adaptation``: a subthreshold step with a strong a: the sag and the rebound after
  the step show a and tau_w.
- ``spike-adaptation``: spiking with b on and a off: ISIs lengthen spike by spike (b) and recover
  with tau_w.

Each reference is one sweep of the same length, so the set is also one multi-sweep ``Protocol``
(what the store records); each recording runs on its own, with its own CapMem values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from farm.defaults import CAPMEM_MAX_LSB, PARAMETER_NAMES
from farm.errors import FarmInputError
from farm.protocol import Protocol, Sweep

#: Version of the reference set and of its noise streams; bump it when a recording's bits change.
FINGERPRINT_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Reference:
    """One recording of a fingerprint: CapMem values and the step played with them.

    Args:
        name: short label (the store's ``reference`` coordinate).
        theta: the 7 CapMem values in ``PARAMETER_NAMES`` order, LSB (any value in 0..1022, not
            just the prior's box).
        sweep: the stimulus; every reference of a set has the same ``duration_us``.
        shows: the mismatch terms this recording is meant to expose (documentation only).
    """

    name: str
    theta: tuple[float, ...]
    sweep: Sweep
    shows: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").isalnum():
            raise FarmInputError(f"reference name={self.name!r} must be a non-empty word")
        theta = tuple(float(v) for v in self.theta)
        if len(theta) != len(PARAMETER_NAMES):
            raise FarmInputError(
                f"reference {self.name}: theta has {len(theta)} values, "
                f"needs {len(PARAMETER_NAMES)}"
            )
        for name, v in zip(PARAMETER_NAMES, theta):
            if not 0.0 <= v <= CAPMEM_MAX_LSB:
                raise FarmInputError(
                    f"reference {self.name}: {name}={v} outside [0, {CAPMEM_MAX_LSB}] LSB"
                )
        object.__setattr__(self, "theta", theta)
        object.__setattr__(self, "shows", tuple(self.shows))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "theta": dict(zip(PARAMETER_NAMES, self.theta)),
            "sweep": self.sweep.to_dict(),
            "shows": list(self.shows),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        theta = d["theta"]
        values = [theta[n] for n in PARAMETER_NAMES] if isinstance(theta, dict) else theta
        return cls(
            str(d["name"]),
            tuple(values),
            Sweep.from_dict(d["sweep"], f"reference {d['name']}"),
            tuple(d.get("shows", ())),
        )


@dataclass(frozen=True, slots=True)
class ReferenceSet:
    """The fixed recordings of a fingerprint, with the integration step and the readout rate.

    Args:
        references: the recordings, in store order.
        dt_us, sample_period_us: as in ``Protocol`` (the farm's defaults: the same physics as its
            samples, so t_ref's mismatch shows exactly as far as it changes a sample).
    """

    references: tuple[Reference, ...]
    dt_us: float = Protocol().dt_us
    sample_period_us: float = Protocol().sample_period_us

    def __post_init__(self) -> None:
        refs = tuple(self.references)
        if not refs:
            raise FarmInputError("a reference set needs at least one reference")
        names = [r.name for r in refs]
        if len(set(names)) != len(names):
            raise FarmInputError(f"reference names {names} must be unique")
        object.__setattr__(self, "references", refs)
        self.protocol  # noqa: B018 -- validates equal lengths, dt and sampling once, here

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.references)

    @property
    def protocol(self) -> Protocol:
        """The set as one protocol: reference k is sweep k (the store's ``protocol`` attribute)."""
        return Protocol(
            sweeps=tuple(r.sweep for r in self.references),
            name="fingerprint",
            dt_us=self.dt_us,
            sample_period_us=self.sample_period_us,
        )

    def reference_protocol(self, k: int) -> Protocol:
        """The one-sweep protocol that records reference ``k``."""
        return Protocol(
            sweeps=(self.references[k].sweep,),
            dt_us=self.dt_us,
            sample_period_us=self.sample_period_us,
        )

    @property
    def theta(self) -> NDArray[np.float32]:
        """(references, 7) CapMem values, LSB."""
        return np.array([r.theta for r in self.references], dtype=np.float32)

    @property
    def samples_per_reference(self) -> int:
        return self.protocol.samples_per_sweep

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint_version": FINGERPRINT_VERSION,
            "dt_us": self.dt_us,
            "sample_period_us": self.sample_period_us,
            "references": [r.to_dict() for r in self.references],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceSet:
        return cls(
            tuple(Reference.from_dict(r) for r in d["references"]),
            dt_us=float(d["dt_us"]),
            sample_period_us=float(d["sample_period_us"]),
        )


def _theta(
    leak_i_bias: float,
    reset_v_reset: float = 500.0,
    exponential_v_exp: float = float(CAPMEM_MAX_LSB),
    exponential_i_bias: float = 0.0,
    adaptation_i_bias_a: float = 0.0,
    adaptation_i_bias_b: float = 0.0,
    adaptation_i_bias_tau: float = 100.0,
) -> tuple[float, ...]:
    """CapMem values by name; the defaults switch the exponential term and adaptation off.

    Why off: v_t at the top of the CapMem range (1200 mV) with delta_t at 1 mV leaves the
    exponential current below 1e-60 nA at the 1000 mV threshold (3-sigma circuits too), and
    a = b = 0 keeps w at 0, so a reference shows only the terms it is about.
    """
    return (
        leak_i_bias,
        reset_v_reset,
        exponential_v_exp,
        exponential_i_bias,
        adaptation_i_bias_a,
        adaptation_i_bias_b,
        adaptation_i_bias_tau,
    )


#: Every reference's recording: 400 µs, the step on from 50 to 300 µs.
_T_ON_US, _T_OFF_US, _DURATION_US = 50.0, 300.0, 400.0


def _step(amplitude_na: float) -> Sweep:
    return Sweep(_T_ON_US, _T_OFF_US, _DURATION_US, amplitude_na)


#: The default reference set (docs/emulator.md, "Circuit fingerprints").
DEFAULT_REFERENCES = ReferenceSet(
    (
        Reference("leak", _theta(100.0), _step(20.0), ("C", "g_leak", "v_leak")),
        Reference(
            "reset",
            _theta(170.0, reset_v_reset=800.0),
            _step(100.0),
            ("v_reset", "v_threshold", "t_ref"),
        ),
        Reference(
            "exponential",
            _theta(100.0, exponential_v_exp=720.0, exponential_i_bias=300.0),
            _step(35.0),
            ("v_t", "delta_t"),
        ),
        Reference(
            "exponential-strong",
            _theta(100.0, exponential_v_exp=720.0, exponential_i_bias=600.0),
            _step(60.0),
            ("delta_t", "v_t"),
        ),
        Reference(
            "subthreshold-adaptation",
            _theta(100.0, adaptation_i_bias_a=400.0, adaptation_i_bias_tau=60.0),
            _step(20.0),
            ("a", "tau_w"),
        ),
        Reference(
            "spike-adaptation",
            _theta(100.0, adaptation_i_bias_b=200.0, adaptation_i_bias_tau=100.0),
            _step(60.0),
            ("b", "tau_w"),
        ),
    )
)

__all__ = ["DEFAULT_REFERENCES", "FINGERPRINT_VERSION", "Reference", "ReferenceSet"]
