"""`farm fingerprint`: record every circuit of some chips at the fixed reference settings."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from deploy.cli.common import AddressOpt, bad_input, fail, first_line


def fingerprint(
    chip_ids: Annotated[
        str,
        typer.Option(
            "--chip-ids",
            help="Chips to fingerprint: a range 100-103 or a list 1,5,9 (ids 0-1023).",
        ),
    ],
    out: Annotated[
        str,
        typer.Option("--out", help="Circuits store: a local directory or any fsspec URL."),
    ] = "circuits.zarr",
    neurons: Annotated[
        str,
        typer.Option("--neurons", help="Neurons of every chip: a range 0-511 or a list 1,5,9."),
    ] = "0-511",
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            min=0,
            max=2**64 - 1,
            help="Root seed of the recordings' noise: a circuit's fingerprint is a pure function "
            "of (seed, chip, neuron, reference).",
        ),
    ] = 0,
    substrate: Annotated[
        str,
        typer.Option("--substrate", help="emulator (default) or bss2 (real chip)."),
    ] = "emulator",
    actors: Annotated[
        int | None,
        typer.Option(
            "--actors", min=1, help="Chips recorded at once (default: CPUs of the cluster)."
        ),
    ] = None,
    address: AddressOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
    break_lock: Annotated[
        bool,
        typer.Option(
            "--break-lock",
            help="Take the store's lock even if another run still seems to hold it.",
        ),
    ] = False,
) -> None:
    """Record each circuit of the chips at the fixed reference settings into a Zarr store.

    The store's variable `fingerprint` has dims (chip, neuron, reference, time), int16 ADC codes;
    `ds.fingerprint.sel(chip=C, neuron=N)` is one circuit. The references (docs/emulator.md,
    "Circuit fingerprints") make every mismatch term show. Re-running the same command resumes;
    the same --seed gives a bit-identical store whatever the actors, order or retries.

    Example: farm fingerprint --chip-ids 0-7 --out runs/circuits.zarr
    """
    from farm.circuits.ids import parse_neuron_ids
    from farm.circuits.runner import FingerprintConfig, run_fingerprint
    from farm.errors import FarmInputError
    from farm.run.raycluster import ray_connected
    from farm.substrates.circuits import parse_chip_ids
    from farm.substrates.registry import check_available

    try:
        chips = parse_chip_ids(chip_ids)
    except FarmInputError as e:
        raise typer.BadParameter(first_line(e), param_hint="--chip-ids") from None
    try:
        neuron_ids = parse_neuron_ids(neurons)
    except FarmInputError as e:
        raise typer.BadParameter(first_line(e), param_hint="--neurons") from None
    try:
        check_available(substrate)
    except FarmInputError as e:
        raise typer.BadParameter(first_line(e), param_hint="--substrate") from None
    ray_was_running = ray_connected()
    config = FingerprintConfig(
        out=out,
        chip_ids=chips,
        neurons=neuron_ids,
        seed=seed,
        substrate=substrate,
        address=address,
        num_actors=actors,
        progress=not quiet,
        break_lock=break_lock,
    )
    summary = run_fingerprint(config)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"{summary['store']}: {summary['chips_done']}/{summary['chips']} chips x "
            f"{summary['neurons_per_chip']} neurons x {len(summary['references'])} references "
            f"({summary['recorded_now']} recorded now in {summary['seconds']:.1f} s, "
            f"{summary['skipped']} already done)"
        )
    if not ray_was_running and ray_connected():
        import ray

        ray.shutdown()


def verify_fingerprints(store: str, *, repair: bool, as_json: bool) -> bool:
    """`farm verify` of a circuits store; False (nothing done) when ``store`` is not one."""
    from farm.circuits.store import FingerprintStore, is_fingerprint_store
    from farm.circuits.verify import (
        describe_damage,
        unflag_damaged_chips,
        verify_fingerprint_store,
    )
    from farm.store.lock import StoreLock

    if not is_fingerprint_store(store):
        return False
    try:
        s = FingerprintStore.open(store)
    except FileNotFoundError as e:
        bad_input(str(e))
    lock = StoreLock(s.url).acquire() if repair else None
    try:
        report = verify_fingerprint_store(s.url)
        repaired = unflag_damaged_chips(s.url, report) if repair and report.damage else []
    finally:
        if lock is not None:
            lock.release()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "store": report.store,
                    "chips_checked": report.chunks_checked,
                    "damaged_chips": [s.chip_ids[k] for k in report.damaged_chunks],
                    "repaired": repaired,
                    "damage": [
                        {"chip": s.chip_ids[d.chunk], "array": d.array, "problem": d.problem}
                        for d in report.damage
                    ],
                }
            )
        )
    else:
        for d in report.damage:
            typer.echo(describe_damage(s, d))
        typer.echo(
            f"{report.chunks_checked} flagged chips read, {len(report.damaged_chunks)} damaged"
            + (f"; un-flagged chips {repaired}" if repaired else "")
        )
    if report.damage and not repair:
        fail(
            f"{len(report.damaged_chunks)} damaged chip(s) in {s.url}; run `farm verify {s.url} "
            "--repair`, then the same `farm fingerprint` to record them again"
        )
    if repaired:
        typer.echo(
            f"re-run the same `farm fingerprint --out {s.url}` to record chips {repaired} again",
            err=True,
        )
    return True


def register(app: typer.Typer) -> None:
    app.command()(fingerprint)
