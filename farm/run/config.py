"""``FarmConfig``: every setting of one `farm simulate` run, checked once, passed as one object.

Why an object: ``run_farm`` took 17 keyword arguments; as Ray's ``ScalingConfig``/``RunConfig``,
one frozen config can be built, checked and handed on (the command line, benchmarks, tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from farm.defaults import ChipModel, Protocol, Regime
from farm.errors import FarmInputError
from farm.prior import AnyPrior, BoxPrior


@dataclass(frozen=True, slots=True)
class FarmConfig:
    """What to simulate into which store, and where the chunks run.

    Args:
        out: local path or fsspec URL of the store.
        num_sims: samples the store should hold.
        seed: root seed; sample i is a pure function of (seed, i).
        chunk_size: samples per store chunk and work item, fixed at creation; None: the
            existing store's, or ``default_chunk_size(num_sims)`` for a new store.
        num_chips: actors; None: one per CPU of the cluster.
        substrate: ``emulator`` or ``bss2`` (``farm.substrates.registry``).
        prior: BoxPrior (default) or RestrictedPrior.
        theta: (num_sims, 7) parameter sets to simulate instead of prior draws.
        address: Ray cluster address; None starts (or reuses) a local Ray.
        in_process: run without Ray in this process.
        progress: show a progress bar.
        protocol, chip_model, regime: the stimulus, the emulated chips, the regime of interest.
        max_in_flight_per_chip: chunks queued on one actor at once (back-pressure).
        max_actor_failures: actor deaths tolerated before the run fails; None: 5 per chip + 10.
        break_lock: take the store's lock even from a run that still looks alive.

    ``None`` for ``prior``, ``protocol``, ``chip_model`` or ``regime`` means its default, as the
    keyword arguments of ``run_farm`` always allowed.
    """

    out: str
    num_sims: int
    seed: int = 0
    chunk_size: int | None = None
    num_chips: int | None = None
    substrate: str = "emulator"
    prior: AnyPrior = field(default_factory=BoxPrior)
    # an array compares element-wise, so it takes no part in ==; its fingerprint is the identity
    theta: NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    address: str | None = None
    in_process: bool = False
    progress: bool = False
    protocol: Protocol = field(default_factory=Protocol)
    chip_model: ChipModel = field(default_factory=ChipModel)
    regime: Regime = field(default_factory=Regime)
    max_in_flight_per_chip: int = 2
    max_actor_failures: int | None = None
    break_lock: bool = False

    def __post_init__(self) -> None:
        for name, default in (
            ("prior", BoxPrior),
            ("protocol", Protocol),
            ("chip_model", ChipModel),
            ("regime", Regime),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default())
        if not self.out:
            raise FarmInputError("out='' is empty; give a store path or URL")
        theta = self.theta
        if theta is not None:
            if (
                theta.dtype.fields is not None
                or not np.issubdtype(theta.dtype, np.number)
                or theta.ndim != 2
            ):
                raise FarmInputError(
                    f"theta dtype={theta.dtype} ndim={theta.ndim}; "
                    "give a plain numeric (n, 7) array"
                )
            if theta.shape[0] != self.num_sims:
                raise FarmInputError(
                    f"theta has {theta.shape[0]} rows but num_sims={self.num_sims}"
                )
        if self.num_chips is not None and self.num_chips < 1:
            raise FarmInputError(f"num_chips={self.num_chips} must be >= 1 (or None: one per CPU)")
        if self.max_in_flight_per_chip < 1:
            raise FarmInputError(
                f"max_in_flight_per_chip={self.max_in_flight_per_chip} must be >= 1"
            )
        if self.max_actor_failures is not None and self.max_actor_failures < 0:
            raise FarmInputError(f"max_actor_failures={self.max_actor_failures} must be >= 0")


__all__ = ["FarmConfig"]
