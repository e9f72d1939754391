"""The stimulus protocol as data: sweeps of a current step (or ramp), plus the readout.

A protocol is what a store and an artifact record (``to_dict``, JSON) and what `farm simulate
--protocol NAME|file.yaml` takes: a built-in by name (``BUILTIN_PROTOCOLS``) or a YAML file of
the same form. ``step`` is the paper's single 60 nA step, stored in its legacy six-field form so
stores and artifacts made before sweeps existed keep their identity bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.errors import FarmInputError

#: Most sweeps a protocol may hold, and most MADC samples one observation may have (all sweeps).
MAX_SWEEPS = 32
MAX_OBSERVATION_SAMPLES = 200_000
_SWEEP_KEYS = ("t_on_us", "t_off_us", "duration_us", "amplitude_na")


def _finite(name: str, value: Any) -> float:
    """A protocol number as float, or a one-line FarmInputError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise FarmInputError(f"protocol {name}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise FarmInputError(f"protocol {name}={value!r} must be finite")
    return v


@dataclass(frozen=True, slots=True)
class Sweep:
    """One sweep: ``duration_us`` of recording, a current step (or linear ramp) in [t_on, t_off).

    Args:
        t_on_us, t_off_us: when the current switches on and off, hardware µs from the sweep's start.
        duration_us: length of the recording; every sweep of a protocol has the same.
        amplitude_na: the step's current (a ramp's current at ``t_on_us``).
        amplitude_end_na: a ramp's current just before ``t_off_us``; None for a step.
    """

    t_on_us: float
    t_off_us: float
    duration_us: float
    amplitude_na: float
    amplitude_end_na: float | None = None

    def __post_init__(self) -> None:
        for name in (*_SWEEP_KEYS, "amplitude_end_na"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _finite(name, v))
        if not 0.0 < self.t_on_us < self.t_off_us < self.duration_us:
            raise FarmInputError(
                f"sweep t_on_us={self.t_on_us}, t_off_us={self.t_off_us}, "
                f"duration_us={self.duration_us} must satisfy 0 < t_on_us < t_off_us < duration_us"
            )

    @property
    def is_ramp(self) -> bool:
        return self.amplitude_end_na is not None

    @property
    def mean_amplitude_na(self) -> float:
        return (
            self.amplitude_na
            if self.amplitude_end_na is None
            else 0.5 * (self.amplitude_na + self.amplitude_end_na)
        )

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in _SWEEP_KEYS}
        return (
            d if self.amplitude_end_na is None else d | {"amplitude_end_na": self.amplitude_end_na}
        )

    @classmethod
    def from_dict(cls, d: Any, where: str = "sweep") -> Sweep:
        if not isinstance(d, dict):
            raise FarmInputError(
                f"{where}={d!r} must be a mapping with keys {', '.join(_SWEEP_KEYS)}"
            )
        missing = [k for k in _SWEEP_KEYS if k not in d]
        unknown = sorted(set(d) - {*_SWEEP_KEYS, "amplitude_end_na"})
        if missing or unknown:
            raise FarmInputError(
                f"{where} has missing keys {missing} / unknown keys {unknown}; "
                f"a sweep needs {', '.join(_SWEEP_KEYS)} (+ amplitude_end_na for a ramp)"
            )
        return cls(**{k: d[k] for k in d})


@dataclass(frozen=True, slots=True)
class Protocol:
    """The stimulus and readout of one sample: one or more sweeps on the same circuit.

    The default is the single step of the paper's setup: 0.1 ms off, 0.6 ms at 60 nA, 0.3 ms off
    (hardware µs), given by the legacy fields ``t_pre_us`` .. ``i_stim_na``. A multi-sweep protocol
    gives ``sweeps`` instead (and a ``name``); one observation is then the sweeps' traces one
    after another, ``num_samples = num_sweeps * samples_per_sweep`` codes. A single step sweep is
    normalised to the legacy form, so it is the same protocol (and store identity) as ``step``.
    ``dt_us`` was chosen by a convergence test (docs/emulator.md, "Time step"): halving it changes
    spike counts by less than the temporal noise does.
    """

    t_pre_us: float = 100.0
    t_stim_us: float = 600.0
    t_post_us: float = 300.0
    i_stim_na: float = 60.0
    dt_us: float = 0.1
    sample_period_us: float = 1.0  # trace stored at 1 MSa/s hardware time
    sweeps: tuple[Sweep, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        for name in (
            "t_pre_us",
            "t_stim_us",
            "t_post_us",
            "i_stim_na",
            "dt_us",
            "sample_period_us",
        ):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        for name in ("t_pre_us", "t_stim_us", "t_post_us", "dt_us", "sample_period_us"):
            v = getattr(self, name)
            if not v > 0:
                raise FarmInputError(f"protocol {name}={v} must be a positive finite number")
        if self.sweeps:
            self._normalise_sweeps()
        else:
            object.__setattr__(
                self, "name", ""
            )  # the legacy single step has no name in its identity
        ratio = self.sample_period_us / self.dt_us
        if abs(ratio - round(ratio)) > 1e-9:
            raise FarmInputError(
                f"sample_period_us={self.sample_period_us} "
                f"must be a whole multiple of dt_us={self.dt_us}"
            )
        if (
            abs(
                self.duration_us / self.sample_period_us
                - round(self.duration_us / self.sample_period_us)
            )
            > 1e-9
        ):
            raise FarmInputError(
                f"protocol duration {self.duration_us} µs "
                "must be a whole multiple of sample_period_us"
            )
        if self.num_samples > MAX_OBSERVATION_SAMPLES:
            raise FarmInputError(
                f"protocol has {self.num_samples} MADC samples per observation; "
                f"at most {MAX_OBSERVATION_SAMPLES} allowed"
            )

    def _normalise_sweeps(self) -> None:
        legacy = Protocol.__dataclass_fields__
        if any(
            getattr(self, k) != legacy[k].default
            for k in ("t_pre_us", "t_stim_us", "t_post_us", "i_stim_na")
        ):
            raise FarmInputError(
                "protocol gives both sweeps and t_pre_us/t_stim_us/t_post_us/i_stim_na; "
                "give one of the two"
            )
        sweeps = tuple(
            s if isinstance(s, Sweep) else Sweep.from_dict(s, f"sweeps[{k}]")
            for k, s in enumerate(self.sweeps)
        )
        if len(sweeps) > MAX_SWEEPS:
            raise FarmInputError(f"protocol has {len(sweeps)} sweeps; at most {MAX_SWEEPS} allowed")
        lengths = sorted({s.duration_us for s in sweeps})
        if len(lengths) > 1:
            raise FarmInputError(
                f"sweeps have different duration_us {lengths}; "
                "every sweep must have the same length so sweeps stack as channels"
            )
        if len(sweeps) == 1 and not sweeps[0].is_ramp:
            s = sweeps[
                0
            ]  # one step: the legacy form, the same protocol as `step` when the numbers agree
            for k, v in (
                ("t_pre_us", s.t_on_us),
                ("t_stim_us", s.t_off_us - s.t_on_us),
                ("t_post_us", s.duration_us - s.t_off_us),
                ("i_stim_na", s.amplitude_na),
            ):
                object.__setattr__(self, k, v)
            sweeps, name = (), ""
        else:
            name = str(self.name or "custom")
        object.__setattr__(self, "sweeps", sweeps)
        object.__setattr__(self, "name", name)

    @property
    def sweep_list(self) -> tuple[Sweep, ...]:
        """Every sweep, the legacy single step included."""
        if self.sweeps:
            return self.sweeps
        return (
            Sweep(self.t_pre_us, self.t_pre_us + self.t_stim_us, self.duration_us, self.i_stim_na),
        )

    @property
    def label(self) -> str:
        """A short name for tables: the protocol's name, or ``step`` for the single-step form."""
        return self.name or "step"

    @property
    def num_sweeps(self) -> int:
        return len(self.sweeps) or 1

    @property
    def duration_us(self) -> float:
        """Length of one sweep (all sweeps have the same)."""
        return (
            self.sweeps[0].duration_us
            if self.sweeps
            else self.t_pre_us + self.t_stim_us + self.t_post_us
        )

    @property
    def samples_per_sweep(self) -> int:
        return int(round(self.duration_us / self.sample_period_us))

    @property
    def num_samples(self) -> int:
        """MADC samples of one observation: all sweeps, one after another."""
        return self.num_sweeps * self.samples_per_sweep

    @property
    def steps_per_sample(self) -> int:
        return int(round(self.sample_period_us / self.dt_us))

    @property
    def stim_on_us(self) -> float:
        """When the (first) sweep's current switches on."""
        return self.sweep_list[0].t_on_us

    @property
    def stim_off_us(self) -> float:
        """When the (first) sweep's current switches off."""
        return self.sweep_list[0].t_off_us

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """(T,) for one sweep, (sweeps, T) for several.

        This is what a served posterior accepts besides the flat form.
        """
        return (
            (self.samples_per_sweep,)
            if self.num_sweeps == 1
            else (self.num_sweeps, self.samples_per_sweep)
        )

    def to_dict(self) -> dict[str, Any]:
        """The legacy six fields for a single step, else name + sweeps.

        The single-step form keeps today's stores and artifacts unchanged.
        """
        if not self.sweeps:
            return {
                k: getattr(self, k)
                for k in (
                    "t_pre_us",
                    "t_stim_us",
                    "t_post_us",
                    "i_stim_na",
                    "dt_us",
                    "sample_period_us",
                )
            }
        return {
            "name": self.name,
            "dt_us": self.dt_us,
            "sample_period_us": self.sample_period_us,
            "sweeps": [s.to_dict() for s in self.sweeps],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Protocol:
        """From ``to_dict``'s form (a store or artifact attribute, a YAML file).

        One-line errors name the bad key.
        """
        if not isinstance(d, dict):
            raise FarmInputError(f"protocol={d!r} must be a mapping")
        if "sweeps" in d:
            allowed = {"name", "dt_us", "sample_period_us", "sweeps"}
            if sorted(set(d) - allowed):
                raise FarmInputError(
                    f"protocol keys {sorted(set(d) - allowed)} unknown; "
                    f"a sweep protocol has {', '.join(sorted(allowed))}"
                )
            sweeps = d["sweeps"]
            if not isinstance(sweeps, list) or not sweeps:
                raise FarmInputError(
                    f"protocol sweeps={sweeps!r} must be a non-empty list of sweeps"
                )
            kw: dict[str, Any] = {k: d[k] for k in ("dt_us", "sample_period_us") if k in d}
            return cls(
                sweeps=tuple(Sweep.from_dict(s, f"sweeps[{k}]") for k, s in enumerate(sweeps)),
                name=str(d.get("name") or "custom"),
                **kw,
            )
        allowed = {"t_pre_us", "t_stim_us", "t_post_us", "i_stim_na", "dt_us", "sample_period_us"}
        if sorted(set(d) - allowed):
            raise FarmInputError(
                f"protocol keys {sorted(set(d) - allowed)} unknown; "
                f"give `sweeps` or some of {', '.join(sorted(allowed))}"
            )
        return cls(**{k: _finite(k, v) for k, v in d.items()})


#: Amplitudes of ``multi-step`` (nA), chosen on the emulator over the box prior (docs/emulator.md,
#: "Protocols"): 35 nA is near rheobase for the circuits that spike at 60 nA (10-30 % of them fire),
#: 60 nA is the reference step (the regime's sweep), 100 and 160 nA drive them hard, where the f-I
#: slope, the spike-triggered adaptation b and the exponential term's curvature separate.
MULTI_STEP_AMPLITUDES_NA: tuple[float, ...] = (35.0, 60.0, 100.0, 160.0)


def multi_step_protocol() -> Protocol:
    """``multi-step``: the step's 0.1 / 0.6 / 0.3 ms timing at each ``MULTI_STEP_AMPLITUDES_NA``."""
    step = Protocol()
    on, off, dur = step.t_pre_us, step.t_pre_us + step.t_stim_us, step.duration_us
    return Protocol(
        sweeps=tuple(Sweep(on, off, dur, a) for a in MULTI_STEP_AMPLITUDES_NA), name="multi-step"
    )


#: Protocols by name (`farm simulate --protocol NAME`).
BUILTIN_PROTOCOLS: dict[str, Protocol] = {"step": Protocol(), "multi-step": multi_step_protocol()}


def load_protocol_file(path: str | Path) -> Protocol:
    """A protocol from a YAML (or JSON) file in ``Protocol.to_dict`` form.

    One-line errors name the file.
    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise FarmInputError(
            f"protocol file {str(p)!r} cannot be read: {e.strerror or e}"
        ) from None
    except yaml.YAMLError as e:
        raise FarmInputError(
            f"protocol file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}"
        ) from None
    try:
        return Protocol.from_dict(data)
    except FarmInputError as e:
        raise FarmInputError(f"protocol file {str(p)!r}: {e}") from None


def resolve_protocol(spec: str | Path | Protocol | None) -> Protocol:
    """A protocol from a built-in name, a YAML file path, or the object itself (None: ``step``).

    Raises:
        FarmInputError: an unknown name that is not a file, or a malformed file.
    """
    if spec is None:
        return Protocol()
    if isinstance(spec, Protocol):
        return spec
    text = str(spec)
    if text in BUILTIN_PROTOCOLS:
        return BUILTIN_PROTOCOLS[text]
    if Path(text).suffix.lower() in (".yaml", ".yml", ".json") or Path(text).is_file():
        if not Path(text).is_file():
            raise FarmInputError(f"protocol file {text!r} does not exist")
        return load_protocol_file(text)
    raise FarmInputError(
        f"protocol={text!r} is neither a built-in ({', '.join(BUILTIN_PROTOCOLS)}) nor a YAML file"
    )


def dump_protocol(protocol: Protocol) -> str:
    """The YAML text ``load_protocol_file`` reads back to the same protocol."""
    import yaml

    return yaml.safe_dump(protocol.to_dict(), sort_keys=False)


__all__ = [
    "BUILTIN_PROTOCOLS",
    "MAX_SWEEPS",
    "MULTI_STEP_AMPLITUDES_NA",
    "Protocol",
    "Sweep",
    "dump_protocol",
    "load_protocol_file",
    "resolve_protocol",
]
