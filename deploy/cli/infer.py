"""`farm infer` and `farm chip-map`: characterise a whole chip from its recorded traces."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from deploy.cli.common import AddressOpt, parse_count


def infer(
    posterior: Annotated[
        str, typer.Option("--posterior", help="Posterior artifact directory from `farm train npe`.")
    ],
    store: Annotated[
        str,
        typer.Option(
            "--store",
            help="Recorded traces: a `farm simulate` store, a Zarr group with `trace` (and "
            "`chip`, `neuron`) arrays, or a .npy (n, T) / .npz (trace, chip, neuron) file.",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="Output Zarr store: a new path, an empty folder, or a `farm infer` store to "
            "resume. Open it with xarray.open_zarr.",
        ),
    ],
    draws: Annotated[
        str, typer.Option("--draws", help="Posterior draws per trace; `1e3` notation accepted.")
    ] = "1000",
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            min=0,
            max=2**64 - 1,
            help="Root seed: the same seed and input give a bit-identical store, also resumed.",
        ),
    ] = 0,
    block: Annotated[
        int,
        typer.Option(
            "--block",
            min=1,
            max=4096,
            help="Traces per work item and output chunk; fixed when the store is created.",
        ),
    ] = 64,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Posterior actors (default: one per CPU)."),
    ] = None,
    address: AddressOpt = None,
    in_process: Annotated[
        bool,
        typer.Option("--in-process", help="Run in this process without Ray (small inputs)."),
    ] = False,
    plot: Annotated[
        str | None,
        typer.Option("--plot", help="Also draw the chip map to this PNG (see `farm chip-map`)."),
    ] = None,
    circuits: Annotated[
        str | None,
        typer.Option(
            "--circuits",
            help="Circuits store of `farm fingerprint` covering the traces' chips: a "
            "circuit-aware posterior (`farm train npe --circuits`) needs it and reads each "
            "trace's fingerprint by its chip and neuron ids.",
        ),
    ] = None,
    break_lock: Annotated[
        bool,
        typer.Option(
            "--break-lock", help="Take the output's lock even if another run seems to hold it."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Answer every recorded trace with the posterior: draws, summaries and flags in one store.

    The store holds `draws` (observation, draw, parameter); `mean`, `std`, `q05`, `q50`, `q95`
    and `map` (observation, parameter); `misspecification_score`, `_flagged` and `_reasons` per
    trace; `chip` and `neuron` as coordinates; the posterior's fingerprint in its attributes.
    A circuit-aware posterior (`farm train npe --circuits`) needs --circuits: each trace is
    answered with the fingerprint of its own circuit, found by its chip and neuron ids.
    Traces with NaNs or codes outside the ADC range are flagged, not fatal. Re-running the same
    command resumes a killed run without redoing finished blocks; the result is bit-identical.
    One run writes a store at a time (the lock is --out.lock).

    Example: farm infer --posterior runs/npe --store runs/chip.zarr --out runs/post.zarr --draws 500
    """
    from farm.run.raycluster import ray_connected
    from inference.batch.config import InferConfig
    from inference.batch.runner import run_infer

    cfg = InferConfig(
        posterior=posterior,
        store=store,
        out=out,
        num_draws=parse_count(draws, "--draws"),
        seed=seed,
        block_size=block,
        address=address,
        num_workers=workers,
        in_process=in_process,
        progress=not quiet,
        break_lock=break_lock,
        circuits=circuits,
    )
    ray_was_running = ray_connected()
    summary = run_infer(cfg)
    if circuits is not None and not summary["circuits_used"]:
        typer.echo(
            f"note: posterior {summary['posterior_fingerprint']} is circuit-marginal (trained "
            f"without --circuits): {circuits} was not read, no trace used its fingerprint",
            err=True,
        )
    if plot:
        from inference.batch.chip_map import plot_chip_map

        summary["plot"] = str(plot_chip_map(summary["out"], plot))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"{summary['out']}: {summary['observations']:,} traces x {summary['num_draws']:,} "
            f"draws ({summary['answered_now']:,} now, {summary['already_done']:,} before) in "
            f"{summary['seconds']:.1f} s, {summary['observations_per_second']:,.1f} traces/s on "
            f"{summary['num_workers']} worker(s); {summary['flagged']:,} flagged"
            + (f"; chip map {summary['plot']}" if plot else "")
        )
    if not ray_was_running and ray_connected():
        import ray

        ray.shutdown()  # this command's own Ray


def chip_map(
    posteriors: Annotated[str, typer.Argument(help="A store written by `farm infer`.")],
    out: Annotated[str, typer.Option("--out", help="The PNG to write.")] = "chip-map.png",
    max_chips: Annotated[
        int, typer.Option("--max-chips", min=1, max=64, help="Chips drawn at most.")
    ] = 8,
) -> None:
    """Draw the chip map: per chip and parameter, each neuron's posterior mean and 90 % interval.

    Flagged neurons (misspecification check) are red crosses: their answers are not to be
    trusted. Only observations of finished blocks are drawn.

    Example: farm chip-map runs/chip-post.zarr --out chip-map.png
    """
    from inference.batch.chip_map import plot_chip_map

    typer.echo(str(plot_chip_map(posteriors, out, max_chips=max_chips)))


def register(app: typer.Typer) -> None:
    app.command()(infer)
    app.command("chip-map")(chip_map)
