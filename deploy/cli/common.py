"""What every `farm` verb shares: count parsing, one-line errors, the options that recur."""

from __future__ import annotations

import math
import re
from typing import Annotated, NoReturn

import typer

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster: `auto`, `ray://host:10001`, or host:port. Default: start a local Ray.",
    ),
]


def parse_count(value: str, option: str = "--n") -> int:
    """Accept `1000`, `1e6`, `1_000_000`; reject non-integers like `1.5` and anything <= 0."""
    text = str(value).strip().replace("_", "")
    try:
        number = float(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a number; give a positive integer such as 1000 or 1e6",
            param_hint=option,
        ) from None
    if not math.isfinite(number) or number != math.floor(number) or number <= 0:
        raise typer.BadParameter(
            f"{value!r} must be a positive whole number (e.g. 1000 or 1e6)", param_hint=option
        )
    return int(number)


def parse_circuit(value: str, option: str = "--circuit") -> tuple[int, int]:
    """``CHIP:NEURON`` (``3:17``) as ids; anything else is a one-line usage error (exit 2)."""
    from farm.defaults import NEURONS_PER_CHIP, NUM_EMULATED_CHIPS

    match = re.fullmatch(r"\s*([0-9]+)\s*:\s*([0-9]+)\s*", str(value))
    if match is None:
        raise typer.BadParameter(
            f"{value!r} is not CHIP:NEURON; give two whole numbers such as 3:17 "
            f"(chip 0-{NUM_EMULATED_CHIPS - 1}, neuron 0-{NEURONS_PER_CHIP - 1})",
            param_hint=option,
        )
    chip, neuron = int(match[1]), int(match[2])
    for name, number, top in (
        ("chip", chip, NUM_EMULATED_CHIPS - 1),
        ("neuron", neuron, NEURONS_PER_CHIP - 1),
    ):
        if number > top:
            raise typer.BadParameter(
                f"{value!r}: {name} {number} outside [0, {top}]; give CHIP:NEURON such as 3:17",
                param_hint=option,
            )
    return chip, neuron


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit; used for runtime failures (code 1)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def bad_input(message: str) -> NoReturn:
    """One-line usage error, exit code 2, for input found bad after parsing (files, stores)."""
    fail(message, 2)


def first_line(err: BaseException) -> str:
    """A library error's first line (tracebacks and chained detail stay out of the terminal)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
