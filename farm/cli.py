"""The `farm` command line: simulate, info, train, serve, query, evaluate, compare.

One typer app, one command per verb. Bad input exits with code 2 and one line naming the value
and what is allowed; runtime failures exit with 1. Only this module reaches up to `inference`
and `deploy`, lazily, inside the commands that need them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="farm",
    help="bss2-farm: simulate BrainScaleS-2 AdEx neurons at scale, train amortized posteriors, serve and evaluate them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def parse_count(value: str, option: str = "--n") -> int:
    """Accept `1000`, `1e6`, `1_000_000`; reject non-integers like `1.5` and anything <= 0."""
    text = str(value).strip().replace("_", "")
    try:
        number = float(text)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number; give a positive integer such as 1000 or 1e6", param_hint=option) from None
    if not math.isfinite(number) or number != math.floor(number) or number <= 0:
        raise typer.BadParameter(f"{value!r} must be a positive whole number (e.g. 1000 or 1e6)", param_hint=option)
    return int(number)


def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit; used for runtime failures (code 1)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def bad_input(message: str) -> None:
    """One-line usage error, exit code 2, for input found bad after parsing (files, stores)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


# ---------------------------------------------------------------- simulate / info (farm)
@app.command()
def simulate(
    n: Annotated[str, typer.Option("--n", help="Number of simulations; `1e6` notation accepted. With --theta: defaults to the number of rows.")] = "",
    out: Annotated[str, typer.Option("--out", help="Zarr store: a local directory or any fsspec URL shared by all nodes.")] = "runs/sims.zarr",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Root seed: sample i is a pure function of (seed, i).")] = 0,
    chips: Annotated[Optional[int], typer.Option("--chips", min=1, help="Ray actors, one per chip or emulator instance (default: CPUs of the cluster).")] = None,
    chunk: Annotated[int, typer.Option("--chunk", min=1, max=100_000, help="Samples per store chunk and per work item (fixed when the store is created).")] = 1000,
    substrate: Annotated[str, typer.Option("--substrate", help="emulator (default) or bss2 (real chip via pynn_brainscales).")] = "emulator",
    prior: Annotated[Optional[str], typer.Option("--prior", help="Directory of a restricted prior from `farm train classifier`; default: the box prior.")] = None,
    theta: Annotated[Optional[Path], typer.Option("--theta", help="Simulate these parameter sets instead (.npy or .csv, shape (n, 7), LSB, header optional).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster: `auto`, `ray://host:10001`, or host:port. Default: start a local Ray.")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run in this process without Ray (small runs, debugging).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Simulate (parameters, membrane trace) pairs into a resumable Zarr store.

    Re-running the same command continues an interrupted run; the same --seed gives a
    bit-identical store whatever --chips, retries or interruptions.

    Example: farm simulate --n 1e6 --out runs/sims.zarr --seed 1
    """
    from farm.actors import FarmError, run_farm
    from farm.prior import load_prior
    from farm.store import StoreMismatch
    from farm.substrate import check_available
    from farm.thetafile import read_theta

    try:
        check_available(substrate)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--substrate") from None
    try:
        prior_obj = load_prior(prior)
    except (ValueError, OSError) as e:
        raise typer.BadParameter(str(e), param_hint="--prior") from None
    theta_arr = None
    if theta is not None:
        try:
            theta_arr = read_theta(theta, prior_obj)
        except (ValueError, OSError) as e:
            raise typer.BadParameter(str(e), param_hint="--theta") from None
    if n:
        num = parse_count(n)
        if theta_arr is not None and num != theta_arr.shape[0]:
            raise typer.BadParameter(f"--n {num} differs from the {theta_arr.shape[0]} rows of --theta; omit --n", param_hint="--n")
    elif theta_arr is not None:
        num = int(theta_arr.shape[0])
    else:
        raise typer.BadParameter("missing; give the number of simulations, e.g. --n 1e6", param_hint="--n")
    try:
        summary = run_farm(out, num_sims=num, seed=seed, chunk_size=chunk, num_chips=chips, substrate=substrate, prior=prior_obj, theta=theta_arr, address=address, in_process=in_process, progress=not quiet)
    except StoreMismatch as e:
        bad_input(str(e))
    except FarmError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        from farm.report import print_summary

        print_summary(summary)


@app.command()
def info(
    store: Annotated[str, typer.Argument(help="Path or fsspec URL of a store written by `farm simulate`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what a store holds and how complete it is.

    Example: farm info runs/sims.zarr
    """
    from farm.report import print_info
    from farm.store import SimStore, StoreMismatch

    try:
        s = SimStore.open(store)
    except (StoreMismatch, FileNotFoundError, ValueError) as e:
        bad_input(str(e))
    summary = s.describe()
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_info(summary)


# --- train (inference; issue 4)

# --- serve / query (deploy; issue 5)

# --- evaluate / compare (inference; issue 6)


def main(argv: list[str] | None = None) -> int:
    """Console entry: usage errors become one line on stderr (exit 2), never a traceback."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
    from typer.exceptions import Abort

    try:
        rv = app(args=argv, prog_name="farm", standalone_mode=False)
    except NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx else e.format_message(), err=True)
        return 2
    except ClickException as e:
        typer.echo(f"Error: {e.format_message()}", err=True)
        return e.exit_code
    except Abort:
        typer.echo("Aborted.", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
