"""What a store holds, described as data: the simulation side says it, the store lays it out.

The store knows chunks, flags and Zarr; it does not know what a trace or a spike count is. The
simulation side (``farm.simulate.sim_schema``) builds a ``StoreSchema`` and the store creates one
Zarr array per entry, chunked along ``sample``, and one coordinate array per labelled axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The leading dimension of every data array: one row per simulated sample.
SAMPLE_DIM = "sample"


@dataclass(frozen=True, slots=True)
class CoordSpec:
    """A labelled axis: ``parameter`` names, ``feature`` names, ``time`` in µs.

    Args:
        name: the dimension it labels (and the Zarr array's name).
        values: labels, (len,) str or numbers.
        dtype: Zarr dtype (``str`` for names, ``"float32"`` for numbers).
        attrs: array attributes (e.g. ``{"units": "us"}``).
        dim: the dimension it lies along when it is not its own (``sweep`` along ``time``: an
            auxiliary coordinate, named in the ``coordinates`` attribute of the arrays it labels).
    """

    name: str
    values: tuple[Any, ...]
    dtype: Any
    attrs: dict[str, Any] = field(default_factory=dict)
    dim: str | None = None

    @property
    def dimension(self) -> str:
        return self.dim or self.name

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One per-sample data array: (sample, *trailing_shape) of ``dtype``.

    Unwritten rows read ``fill_value``.

    Args:
        name: the array's name in the store.
        dtype: numpy dtype name (``"float32"``, ``"int16"``, ...).
        trailing_dims: dimension names after ``sample`` (each a coordinate or a bare axis).
        trailing_shape: sizes of those dimensions.
        fill_value: what a row not yet simulated holds (NaN, -1, 0).
        attrs: array attributes (``{"coordinates": "sweep"}`` for xarray's auxiliary coordinates).
    """

    name: str
    dtype: str
    trailing_dims: tuple[str, ...] = ()
    trailing_shape: tuple[int, ...] = ()
    fill_value: Any = 0
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.trailing_dims) != len(self.trailing_shape):
            raise ValueError(
                f"array {self.name}: trailing_dims={self.trailing_dims} "
                f"and trailing_shape={self.trailing_shape} differ in length"
            )

    @property
    def dims(self) -> tuple[str, ...]:
        return (SAMPLE_DIM, *self.trailing_dims)


@dataclass(frozen=True, slots=True)
class StoreSchema:
    """Everything a store lays out besides chunk flags: coordinates, data arrays, attributes.

    ``attrs`` are written after the store's own identity attributes (names, units, ...), in order.
    """

    coords: tuple[CoordSpec, ...]
    arrays: tuple[ArraySpec, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [a.name for a in self.arrays] + [c.name for c in self.coords]
        if len(set(names)) != len(names):
            raise ValueError(f"schema names must be unique, got {names}")
        sizes = {c.name: len(c) for c in self.coords if c.dim is None}
        for a in self.arrays:
            for dim, size in zip(a.trailing_dims, a.trailing_shape):
                if dim in sizes and sizes[dim] != size:
                    raise ValueError(
                        f"array {a.name}: dimension {dim} has size {size} "
                        f"but its coordinate has {sizes[dim]}"
                    )

    @property
    def array_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arrays)
