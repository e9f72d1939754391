"""`farm simulate` and `farm info`: fill and inspect Zarr stores (the farm layer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from deploy.cli.common import AddressOpt, bad_input, parse_count


def simulate(
    n: Annotated[str, typer.Option("--n", help="Number of simulations; `1e6` notation accepted. With --theta: defaults to the number of rows.")] = "",
    out: Annotated[str, typer.Option("--out", help="Zarr store: a local directory or any fsspec URL shared by all nodes.")] = "runs/sims.zarr",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Root seed: sample i is a pure function of (seed, i).")] = 0,
    chips: Annotated[Optional[int], typer.Option("--chips", min=1, help="Ray actors, one per chip or emulator instance (default: CPUs of the cluster).")] = None,
    chunk: Annotated[Optional[int], typer.Option("--chunk", min=1, max=100_000, help="Samples per store chunk and per work item; fixed when the store is created (default 1000, or the existing store's).")] = None,
    substrate: Annotated[str, typer.Option("--substrate", help="emulator (default) or bss2 (real chip via pynn_brainscales).")] = "emulator",
    prior: Annotated[Optional[str], typer.Option("--prior", help="Directory of a restricted prior from `farm train classifier`; default: the box prior.")] = None,
    theta: Annotated[Optional[Path], typer.Option("--theta", help="Simulate these parameter sets instead (.npy or .csv, shape (n, 7), LSB, header optional).")] = None,
    address: AddressOpt = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run in this process without Ray (small runs, debugging).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Simulate (parameters, membrane trace) pairs into a resumable Zarr store.

    Re-running the same command continues an interrupted run; the same --seed gives a
    bit-identical store whatever --chips, retries or interruptions.

    Example: farm simulate --n 1e6 --out runs/sims.zarr --seed 1
    """
    from farm.prior import load_prior
    from farm.runner import run_farm
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
    summary = run_farm(out, num_sims=num, seed=seed, chunk_size=chunk, num_chips=chips, substrate=substrate, prior=prior_obj, theta=theta_arr, address=address, in_process=in_process, progress=not quiet)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        from farm.report import print_summary

        print_summary(summary)


def info(
    store: Annotated[str, typer.Argument(help="Path or fsspec URL of a store written by `farm simulate`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what a store holds and how complete it is.

    Example: farm info runs/sims.zarr
    """
    from farm.report import print_info
    from farm.store import SimStore

    try:
        s = SimStore.open(store)
    except FileNotFoundError as e:  # cannot also be a FarmInputError (OSError and ValueError bases clash)
        bad_input(str(e))
    summary = s.describe()
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_info(summary)


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command()(info)
