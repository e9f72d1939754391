"""`farm evaluate` and `farm compare`: calibration and recovery reports on held-out stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from deploy.cli.common import bad_input, parse_count


def evaluate(
    posterior: Annotated[
        str, typer.Option("--posterior", help="Posterior artifact directory from `farm train npe`.")
    ],
    store: Annotated[
        str,
        typer.Option(
            "--store",
            help="Held-out store simulated from the posterior's prior "
            "with a seed not used in training.",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out", help="Report directory: metrics.json and PNG figures are written here."
        ),
    ],
    n_obs: Annotated[
        str,
        typer.Option(
            "--n-obs",
            help="Held-out observations for SBC, TARP and recovery (at most the store's size).",
        ),
    ] = "500",
    n_samples: Annotated[
        str, typer.Option("--n-samples", help="Posterior samples per observation.")
    ] = "500",
    n_ppc: Annotated[
        int,
        typer.Option(
            "--n-ppc",
            min=0,
            max=10_000,
            help="Observations given posterior-predictive simulations (0: none).",
        ),
    ] = 40,
    n_own_circuit: Annotated[
        int,
        typer.Option(
            "--n-own-circuit",
            min=0,
            max=10_000,
            help="Observations whose posterior draws and true parameters are rerun on their own "
            "circuit and on random ones (0: none).",
        ),
    ] = 40,
    n_own_circuit_draws: Annotated[
        int | None,
        typer.Option(
            "--n-own-circuit-draws",
            min=1,
            max=1_000,
            help="Posterior draws rerun per own-circuit observation "
            "(default 20, at most --n-samples).",
        ),
    ] = None,
    circuits: Annotated[
        str | None,
        typer.Option(
            "--circuits",
            help="Circuits store from `farm fingerprint` covering the held-out store's circuits; "
            "required for a circuit-aware posterior.",
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", min=0, help="Selects observations; seeds sampling and predictive simulations."
        ),
    ] = 0,
    hpd: Annotated[
        bool,
        typer.Option(
            "--hpd/--no-hpd",
            help="Also compute HPD expected coverage from the posterior density "
            "(200 observations; slower).",
        ),
    ] = False,
    c2st: Annotated[
        bool,
        typer.Option("--c2st/--no-c2st", help="Also run C2ST of prior vs data-averaged posterior."),
    ] = True,
    lc2st: Annotated[
        bool,
        typer.Option(
            "--lc2st/--no-lc2st",
            help="Also run sbi's L-C2ST: local calibration at 3 held-out observations "
            "(20 null classifiers).",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Calibrate and check a posterior on a held-out store: SBC, TARP, recovery, predictive checks.

    Example: farm evaluate --posterior runs/npe-hand --store runs/test.zarr --out reports/hand
    """
    from inference.evaluation.evaluate import EvalConfig

    sizes = {}
    for option, name, value in (
        ("--n-obs", "num_obs", n_obs),
        ("--n-samples", "num_samples", n_samples),
    ):
        sizes[name] = parse_count(value, option)
        lo, hi = EvalConfig.LIMITS[name]
        if not lo <= sizes[name] <= hi:
            raise typer.BadParameter(
                f"{option}={sizes[name]} outside [{lo}, {hi}]", param_hint=option
            )
    if n_own_circuit_draws is not None and n_own_circuit_draws > sizes["num_samples"]:
        raise typer.BadParameter(
            f"{n_own_circuit_draws} exceeds --n-samples={sizes['num_samples']}",
            param_hint="--n-own-circuit-draws",
        )
    cfg = EvalConfig(
        **sizes,
        num_ppc=n_ppc,
        num_ppc_samples=min(20, sizes["num_samples"]),
        num_own_circuit=n_own_circuit,
        num_own_circuit_samples=n_own_circuit_draws or min(20, sizes["num_samples"]),
        seed=seed,
        hpd=hpd,
        c2st=c2st,
        lc2st=lc2st,
    )
    from rich.console import Console
    from rich.table import Table

    from inference import load_posterior
    from inference.evaluation.circuits import is_circuit_aware
    from inference.evaluation.evaluate import evaluate as run_evaluation
    from inference.evaluation.evaluate import load_held_out, own_circuit_table, summary_table

    try:
        post = load_posterior(posterior)
    except (ValueError, OSError, KeyError) as e:
        raise typer.BadParameter(
            str(e).splitlines()[0] if str(e) else repr(e), param_hint="--posterior"
        ) from None
    if circuits is None and is_circuit_aware(post):
        bad_input(
            f"posterior={posterior!r} is circuit-aware: give --circuits circuits.zarr, the "
            "`farm fingerprint` store of the held-out store's chips"
        )
    try:
        load_held_out(store, 10, seed)
    except ValueError as e:
        raise typer.BadParameter(str(e).splitlines()[0], param_hint="--store") from None
    err = Console(stderr=True)
    try:
        metrics = run_evaluation(
            post,
            store,
            out,
            cfg,
            circuits=circuits,
            log=None if as_json else (lambda m: err.print(f"[dim]{m}[/dim]")),
        )
    except ValueError as e:
        bad_input(str(e).splitlines()[0])
    if as_json:
        typer.echo(json.dumps(metrics["summary"]))
        return
    table = Table(
        title=f"farm evaluate: {metrics['summary']['variant']}",
        show_header=False,
        title_justify="left",
    )
    table.add_column("metric", style="bold")
    table.add_column("value")
    for label, value in summary_table(metrics):
        table.add_row(label, value)
    Console().print(table)
    own = own_circuit_table(metrics)
    if own:
        o = metrics["own_circuit"]
        side = Table(
            title=f"spike counts of {o['num_draws']} reruns of each of {o['num_obs']} "
            "observations (fresh noise)",
            title_justify="left",
        )
        side.add_column("rerun", style="bold")
        side.add_column("own circuit", justify="right")
        side.add_column("random circuits", justify="right")
        for row in own:
            side.add_row(*row)
        Console().print(side)
    typer.echo(
        f"report: {Path(out) / 'metrics.json'} and {len(metrics['figures'])} figures "
        f"({', '.join(sorted(metrics['figures'].values()))}) in {out}"
    )
    for w in metrics["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {w}")


def compare(
    reports_in: Annotated[
        list[str],
        typer.Argument(
            metavar="REPORT...",
            help="Two or more report directories from `farm evaluate` "
            "(e.g. handcrafted, summary-net, flow-matching).",
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the comparison as JSON on stdout.")
    ] = False,
) -> None:
    """Show evaluation reports side by side: calibration, contraction, predictive error, train time.

    Example: farm compare reports/hand reports/snet reports/hand-fm
    """
    from rich.console import Console
    from rich.table import Table

    from inference.evaluation.evaluate import compare_reports, load_report

    if len(reports_in) < 2:
        raise typer.BadParameter(
            f"{len(reports_in)} report given; compare needs two or more", param_hint="REPORT..."
        )
    reports = []
    for i, path in enumerate(reports_in):
        try:
            reports.append(load_report(path))
        except ValueError as e:
            raise typer.BadParameter(
                str(e), param_hint=f"REPORT {chr(ord('A') + i) if i < 26 else i + 1}"
            ) from None
    cmp = compare_reports(*reports)
    if as_json:
        typer.echo(json.dumps(cmp))
        return
    letters = [chr(ord("A") + i) if i < 26 else f"R{i + 1}" for i in range(len(reports))]
    t = Table(title="farm compare", title_justify="left")
    t.add_column("metric", style="bold")
    for letter, name in zip(letters, cmp["columns"]):
        t.add_column(f"{letter}: {name}", justify="right")
    t.add_column("better", justify="center")
    for row in cmp["rows"]:
        t.add_row(*row)
    p = Table(
        title="per parameter: NRMSE (lower is better) and contraction (higher is better)",
        title_justify="left",
    )
    p.add_column("parameter", style="bold")
    for head in ("NRMSE", "contraction"):
        for letter in letters:
            p.add_column(f"{head} {letter}", justify="right")
    for name, *values in cmp["parameters"]:
        p.add_row(name, *(f"{v:.3f}" if isinstance(v, (int, float)) else "-" for v in values))
    console = Console()
    console.print(t)
    console.print(p)
    for note in cmp["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
    app.command()(compare)
