"""`farm simulate`, `farm info`, `farm verify`: fill, inspect and check Zarr stores (farm layer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from deploy.cli.common import AddressOpt, bad_input, fail, first_line, parse_count

#: Progress bars only where a store is big enough for the wait to matter.
VERIFY_BAR_MIN_CHUNKS = 100


def simulate(
    n: Annotated[
        str,
        typer.Option(
            "--n",
            help="Number of simulations; `1e6` notation accepted. With --theta: defaults to the "
            "number of rows.",
        ),
    ] = "",
    out: Annotated[
        str,
        typer.Option(
            "--out", help="Zarr store: a local directory or any fsspec URL shared by all nodes."
        ),
    ] = "runs/sims.zarr",
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            min=0,
            max=2**64 - 1,
            help="Root seed in [0, 2^64 - 1]: sample i is a pure function of (seed, i).",
        ),
    ] = 0,
    chips: Annotated[
        int | None,
        typer.Option(
            "--chips",
            min=1,
            help="Ray actors, one per chip or emulator instance (default: CPUs of the cluster).",
        ),
    ] = None,
    chunk: Annotated[
        int | None,
        typer.Option(
            "--chunk",
            min=1,
            max=100_000,
            help="Samples per store chunk and per work item; fixed when the store is created "
            "(default 1000, 4000 from --n 2e5 on, or the existing store's).",
        ),
    ] = None,
    substrate: Annotated[
        str,
        typer.Option(
            "--substrate", help="emulator (default) or bss2 (real chip via pynn_brainscales)."
        ),
    ] = "emulator",
    prior: Annotated[
        str | None,
        typer.Option(
            "--prior",
            help="Directory of a restricted prior from `farm train classifier`; default: the box "
            "prior.",
        ),
    ] = None,
    theta: Annotated[
        Path | None,
        typer.Option(
            "--theta",
            help="Simulate these parameter sets instead (.npy or .csv, shape (n, 7), LSB, header "
            "optional).",
        ),
    ] = None,
    address: AddressOpt = None,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process", help="Run in this process without Ray (small runs, debugging)."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
    break_lock: Annotated[
        bool,
        typer.Option(
            "--break-lock",
            help="Take the store's lock even if another run still seems to hold it (only when "
            "that run is gone).",
        ),
    ] = False,
    protocol: Annotated[
        str | None,
        typer.Option(
            "--protocol",
            help="Stimulus: a built-in (step, multi-step) or a YAML file of sweeps "
            "(docs/emulator.md, Protocols). Default: the store's, or step. Fixed when the store "
            "is created.",
        ),
    ] = None,
    chip_ids: Annotated[
        str | None,
        typer.Option(
            "--chip-ids",
            help="Emulated chips to draw circuits from: a range 100-103 or a list 1,5,9 (ids "
            "0-1023; default: the pool 0-7). Fixed when the store is created.",
        ),
    ] = None,
) -> None:
    """Simulate (parameters, membrane trace) pairs into a resumable Zarr store.

    Re-running the same command continues an interrupted run; the same --seed gives a
    bit-identical store whatever --chips, retries or interruptions. --out must be a new path, an
    empty folder or a bss2-farm store; one run writes a store at a time (the lock is --out.lock).

    Example: farm simulate --n 1e6 --out runs/sims.zarr --seed 1
    """
    from farm.prior import load_prior
    from farm.run.config import FarmConfig
    from farm.run.raycluster import ray_connected
    from farm.run.runner import run_farm
    from farm.store.user_arrays import read_theta
    from farm.substrates.registry import check_available

    try:
        check_available(substrate)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--substrate") from None
    try:
        prior_obj = load_prior(prior)
    except (ValueError, OSError) as e:
        raise typer.BadParameter(first_line(e), param_hint="--prior") from None
    theta_arr = None
    if theta is not None:
        try:
            theta_arr = read_theta(theta, prior_obj)
        except (ValueError, OSError) as e:
            message = first_line(e)
            raise typer.BadParameter(
                message if theta.name in message else f"{theta}: {message}", param_hint="--theta"
            ) from None
    if n:
        num = parse_count(n)
        if theta_arr is not None and num != theta_arr.shape[0]:
            raise typer.BadParameter(
                f"--n {num} differs from the {theta_arr.shape[0]} rows of --theta; omit --n",
                param_hint="--n",
            )
    elif theta_arr is not None:
        num = int(theta_arr.shape[0])
    else:
        raise typer.BadParameter(
            "missing; give the number of simulations, e.g. --n 1e6", param_hint="--n"
        )
    chip_model = _chip_model(chip_ids, out)
    protocol_obj = _protocol(protocol, out)
    ray_was_running = ray_connected()
    config = FarmConfig(
        out=out,
        num_sims=num,
        seed=seed,
        chunk_size=chunk,
        num_chips=chips,
        substrate=substrate,
        prior=prior_obj,
        theta=theta_arr,
        address=address,
        in_process=in_process,
        progress=not quiet,
        break_lock=break_lock,
        chip_model=chip_model,
        protocol=protocol_obj,
    )
    summary = run_farm(config)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        from farm.run.report import print_summary

        print_summary(summary)
    if not ray_was_running and ray_connected():
        from farm.run.raycluster import shutdown_ray

        # this command's own Ray: now, not in Ray's exit hook, which first sleeps 0.5 s
        shutdown_ray()


def _chip_model(chip_ids: str | None, out: str):  # -> farm.defaults.ChipModel
    """The chip model of `--chip-ids`; refuses, naming both chip sets, a store of other chips."""
    from farm.defaults import ChipModel
    from farm.errors import FarmInputError
    from farm.store.sim_store import SimStore, StoreMismatch
    from farm.substrates.circuits import format_chip_ids, parse_chip_ids

    try:
        model = (
            ChipModel(chip_ids=parse_chip_ids(chip_ids)) if chip_ids is not None else ChipModel()
        )
    except FarmInputError as e:
        raise typer.BadParameter(first_line(e), param_hint="--chip-ids") from None
    try:
        have = SimStore.open(out).attrs.get("chip_model")
    except (FileNotFoundError, StoreMismatch, ValueError, OSError):
        return model  # no store yet (or not ours): run_farm creates or refuses it
    if isinstance(have, dict) and ChipModel.from_dict(have).pool != model.pool:
        raise typer.BadParameter(
            f"{format_chip_ids(model.pool)} differs from chips "
            f"{format_chip_ids(ChipModel.from_dict(have).pool)} of the store {out}; a store "
            "holds one chip set: use another --out",
            param_hint="--chip-ids",
        )
    return model


def _protocol(spec: str | None, out: str):  # -> farm.defaults.Protocol
    """The protocol of `--protocol`, else the existing store's (or `step`).

    Refuses, naming both, to extend a store made with another.
    """
    from farm.defaults import Protocol
    from farm.errors import FarmInputError
    from farm.protocol import resolve_protocol
    from farm.store.sim_store import SimStore, StoreMismatch

    try:
        have = SimStore.open(out).attrs.get("protocol")
    except (FileNotFoundError, StoreMismatch, ValueError, OSError):
        have = None  # no store yet (or not ours): run_farm creates or refuses it
    try:
        existing = Protocol.from_dict(have) if isinstance(have, dict) else None
        if spec is None:
            return existing or Protocol()
        want = resolve_protocol(spec)
    except FarmInputError as e:
        raise typer.BadParameter(first_line(e), param_hint="--protocol") from None
    if existing is not None and existing != want:
        raise typer.BadParameter(
            f"{want.label} differs from protocol {existing.label} of the store {out}; a store "
            "holds one protocol: use another --out",
            param_hint="--protocol",
        )
    return want


def info(
    store: Annotated[
        str, typer.Argument(help="Path or fsspec URL of a store written by `farm simulate`.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what a store holds and how complete it is.

    Example: farm info runs/sims.zarr
    """
    from farm.run.report import print_info
    from farm.store.sim_store import SimStore

    try:
        s = SimStore.open(store)
    except (
        FileNotFoundError
    ) as e:  # cannot also be a FarmInputError (OSError and ValueError bases clash)
        bad_input(str(e))
    summary = s.describe()
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_info(summary)


def verify(
    store: Annotated[
        str,
        typer.Argument(
            help="Path or fsspec URL of a store from `farm simulate` or `farm fingerprint`."
        ),
    ],
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Clear the done flags of damaged chunks so the same `farm simulate` recomputes "
            "them.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Read every completed chunk back; name each damaged or missing one (exit 1), or exit 0 when
    intact.

    With --repair the damaged chunks are un-flagged (exit 0) and re-running the same `farm simulate`
    recomputes them, bit-identical.

    Example: farm verify runs/sims.zarr --repair
    """
    from deploy.cli.fingerprint import verify_fingerprints
    from farm.store.lock import StoreLock
    from farm.store.sim_store import SimStore
    from farm.store.verify import unflag_damaged, verify_store

    if verify_fingerprints(store, repair=repair, as_json=as_json):  # a circuits store
        return
    try:
        s = SimStore.open(store)
    except FileNotFoundError as e:
        bad_input(str(e))
    total = int(s.done_mask().sum())
    lock = (
        StoreLock(s.url).acquire() if repair else None
    )  # a writer must not flag chunks while we clear them
    try:
        if quiet or total < VERIFY_BAR_MIN_CHUNKS:
            report = verify_store(s.url)
        else:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            with Progress(
                TextColumn("[bold]verify"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            ) as bar:
                task = bar.add_task("verify", total=total)
                report = verify_store(s.url, on_chunk=lambda _: bar.advance(task))
        repaired = unflag_damaged(s.url, report) if repair else []
    finally:
        if lock is not None:
            lock.release()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "store": report.store,
                    "chunks_checked": report.chunks_checked,
                    "damaged_chunks": report.damaged_chunks,
                    "repaired": repaired,
                    "damage": [
                        {"chunk": d.chunk, "array": d.array, "problem": d.problem}
                        for d in report.damage
                    ],
                }
            )
        )
    else:
        for d in report.damage:
            typer.echo(d.describe(s))
        typer.echo(
            f"{report.chunks_checked} flagged chunks read, {len(report.damaged_chunks)} damaged"
            + (f"; un-flagged {repaired}" if repaired else "")
        )
    if report.damage and not repair:
        fail(
            f"{len(report.damaged_chunks)} damaged chunk(s) in {s.url}; run `farm verify {s.url} "
            "--repair`, then the same `farm simulate` to recompute them"
        )
    if repaired:
        typer.echo(
            f"re-run the same `farm simulate --out {s.url}` to recompute chunks {repaired}",
            err=True,
        )


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command()(info)
    app.command()(verify)
