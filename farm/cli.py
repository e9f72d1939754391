"""The `farm` command line: simulate, info, train, serve, query, evaluate, compare.

One typer app, one command per verb. Bad input exits with code 2 and one line naming the value
and what is allowed; runtime failures exit with 1. Only this module reaches up to `inference`
and `deploy`, lazily, inside the commands that need them.
"""

from __future__ import annotations

import json
import math
import signal
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
    chunk: Annotated[Optional[int], typer.Option("--chunk", min=1, max=100_000, help="Samples per store chunk and per work item; fixed when the store is created (default 1000, or the existing store's).")] = None,
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
train_app = typer.Typer(help="Train the restriction classifier or an amortized posterior with Ray Train, from Zarr stores.", no_args_is_help=True)
app.add_typer(train_app, name="train")

StoreOpt = Annotated[list[str], typer.Option("--store", help="Zarr store from `farm simulate`; repeat for several stores of one setup.")]
OutOpt = Annotated[str, typer.Option("--out", help="Artifact directory; checkpoints go inside, so re-running the same command resumes a killed training.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, max=64, help="Ray Train workers (data-parallel).")]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, max=10_000, help="Maximum epochs; early stopping on the validation loss may end sooner.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=2, max=65_536, help="Samples per step and worker.")]
LrOpt = Annotated[float, typer.Option("--lr", min=1e-6, max=0.5, help="Adam learning rate.")]
PatienceOpt = Annotated[int, typer.Option("--patience", min=1, max=10_000, help="Epochs without validation improvement before stopping.")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed of initialisation and shuffling.")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray cluster: `auto`, `ray://host:10001`, or host:port. Default: start a local Ray.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch progress.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")]


def _run_train(task: str, **kwargs) -> None:
    from inference.cli_train import TrainingError, train_command

    as_json = kwargs.pop("as_json")
    try:
        metrics = train_command(task, **kwargs)
    except ValueError as e:
        bad_input(str(e))
    except TrainingError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        from inference.cli_train import format_metrics

        typer.echo(format_metrics(task, kwargs["out"], metrics))


@train_app.command("classifier")
def train_classifier(
    store: StoreOpt,
    out: OutOpt = "artifacts/restricted",
    heldout: Annotated[Optional[list[str]], typer.Option("--heldout", help="Store(s) from the box prior to report recall/precision on.")] = None,
    target_recall: Annotated[float, typer.Option("--target-recall", min=0.5, max=1.0, help="Share of in-regime samples the restricted prior keeps.")] = 0.99,
    workers: WorkersOpt = 1,
    epochs: EpochsOpt = 30,
    batch_size: BatchOpt = 256,
    lr: LrOpt = 1e-3,
    patience: PatienceOpt = 5,
    seed: SeedOpt = 0,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train theta -> P(in regime) on a pilot store and write the restricted prior into --out.

    --out then holds restricted_prior.json + weights.npz, so `farm simulate --prior OUT` samples from it.

    Example: farm train classifier --store runs/pilot.zarr --out artifacts/restricted
    """
    _run_train("classifier", stores=store, out=out, heldout=heldout, target_recall=target_recall, workers=workers, epochs=epochs, batch_size=batch_size,
               learning_rate=lr, patience=patience, seed=seed, address=address, quiet=quiet, as_json=as_json)


@train_app.command("npe")
def train_npe(
    store: StoreOpt,
    out: OutOpt = "artifacts/npe",
    features: Annotated[str, typer.Option("--features", help="handcrafted (named summary statistics) or summary-net (1D CNN on the raw trace).")] = "handcrafted",
    prior: Annotated[Optional[str], typer.Option("--prior", help="Restricted prior directory the store was simulated from (copied into the artifact).")] = None,
    workers: WorkersOpt = 1,
    epochs: EpochsOpt = 30,
    batch_size: BatchOpt = 256,
    lr: LrOpt = 1e-3,
    patience: PatienceOpt = 5,
    seed: SeedOpt = 0,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train an amortized posterior (NPE, neural spline flow) and write a loadable artifact into --out.

    Example: farm train npe --store runs/sims.zarr --features summary-net --out artifacts/npe-summary-net
    """
    if features not in ("handcrafted", "summary-net"):
        raise typer.BadParameter(f"{features!r} unknown; choose handcrafted or summary-net", param_hint="--features")
    _run_train("npe", stores=store, out=out, variant=features, prior=prior, workers=workers, epochs=epochs, batch_size=batch_size,
               learning_rate=lr, patience=patience, seed=seed, address=address, quiet=quiet, as_json=as_json)


# --- serve / query (deploy; issue 5)
@app.command()
def serve(
    posterior: Annotated[str, typer.Option("--posterior", help="Artifact directory written by `farm train npe` (either variant).")],
    host: Annotated[str, typer.Option("--host", help="Interface to bind; 127.0.0.1 keeps it local, 0.0.0.0 exposes it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="HTTP port.")] = 8000,
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=64, help="Serve replicas of the posterior (0.5 CPU each).")] = 1,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster: `auto` or `ray://host:10001`. Default: start a local Ray.")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, max=256, help="Concurrent /sample requests per forward pass; 1 turns batching off.")] = 16,
    detach: Annotated[bool, typer.Option("--detach", help="Return once the service answers; it keeps running (stop it with `kill -INT PID`, or `serve shutdown` on a cluster).")] = False,
    pid_file: Annotated[Optional[Path], typer.Option("--pid-file", help="With --detach and a local Ray: write the server's PID here.")] = None,
    log: Annotated[Optional[Path], typer.Option("--log", help="With --detach and a local Ray: the server's log file (default: farm-serve-PORT.log in the temp dir).")] = None,
) -> None:
    """Serve a trained posterior over HTTP with Ray Serve and print its URL.

    Blocks until Ctrl-C unless --detach. Endpoints: /health, /info, /sample, /log_prob, /predictive (docs/http-api.md).

    Example: farm serve --posterior artifacts/npe-handcrafted --port 8000
    """
    from deploy.launch import READY_MARKER, ServeOptions, check_posterior, deploy, port_free, serve_until_interrupted, spawn_detached, wait_healthy

    opts = ServeOptions(posterior=posterior, host=host, port=port, replicas=replicas, address=address, max_batch_size=max_batch_size)
    try:
        described = check_posterior(posterior)
    except (ValueError, OSError) as e:
        raise typer.BadParameter(str(e).splitlines()[0], param_hint="--posterior") from None
    if address is None and not port_free(host, port):
        raise typer.BadParameter(f"port {port} on {host} is already in use; pick another --port", param_hint="--port")
    for name, path in (("--log", log), ("--pid-file", pid_file)):
        if path is not None and not path.parent.is_dir():
            raise typer.BadParameter(f"directory {str(path.parent)!r} does not exist", param_hint=name)
    if detach and address is None:
        proc, log, offset = spawn_detached(opts, log)
        try:
            wait_healthy(opts.url, process=proc, log=log, log_offset=offset)
        except (RuntimeError, TimeoutError) as e:
            proc.send_signal(signal.SIGINT)  # a server that never came up must not linger
            fail(f"{e}; see {log}")
        if pid_file is not None:
            pid_file.write_text(f"{proc.pid}\n")
        typer.echo(f"Serving {described} at {opts.url} (pid {proc.pid}, log {log}); stop with: kill -INT {proc.pid}")
        return

    def announce(url: str) -> None:
        typer.echo(f"{READY_MARKER}{described} at {url}" + ("" if detach else "  (Ctrl-C to stop)"))
        sys.stdout.flush()

    if detach:  # on a cluster: the app outlives this process, nothing to block on
        try:
            announce(deploy(opts))
        except RuntimeError as e:
            fail(f"deployment failed: {str(e).splitlines()[0]}")
        return
    try:
        serve_until_interrupted(opts, announce)
    except RuntimeError as e:
        fail(f"deployment failed: {str(e).splitlines()[0]}")


@app.command()
def query(
    url: Annotated[str, typer.Option("--url", help="Base URL printed by `farm serve`, e.g. http://127.0.0.1:8000.")],
    trace: Annotated[Optional[Path], typer.Option("--trace", help="Recorded trace: .npy (or .csv) of 1000 MADC codes.")] = None,
    store: Annotated[Optional[str], typer.Option("--store", help="Take the observation from this store (with --index); its true parameters are shown.")] = None,
    index: Annotated[Optional[int], typer.Option("--index", min=0, help="Sample index in --store.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=10_000, help="Posterior draws.")] = 1000,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, max=2**32 - 1, help="Seed for reproducible draws.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a pair plot of the draws to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary rows as JSON.")] = False,
) -> None:
    """Ask a running posterior service about one trace; print mean, std and 90 % interval per parameter.

    Example: farm query --url http://127.0.0.1:8000 --store runs/test.zarr --index 3 --plot post.png
    """
    from deploy.client import PosteriorClient, QueryError, load_store_trace, load_trace_file, print_table, save_pairplot, summary_rows

    if (trace is None) == (store is None):
        raise typer.BadParameter("give exactly one of --trace FILE or --store S --index I", param_hint="--trace/--store")
    if store is not None and index is None:
        raise typer.BadParameter("--store needs --index I (which sample to query)", param_hint="--index")
    truth = None
    try:
        if trace is not None:
            obs = load_trace_file(trace)
        else:
            obs, truth = load_store_trace(store, index)
    except (ValueError, OSError, KeyError) as e:
        raise typer.BadParameter(str(e).splitlines()[0], param_hint="--trace" if trace is not None else "--store/--index") from None
    try:
        client = PosteriorClient(url)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--url") from None
    with client:
        try:
            result = client.sample(obs, num_samples=n, seed=seed)
            info = client.info() if plot is not None else None
        except QueryError as e:
            if e.status == 422:
                bad_input(f"the service rejected the observation: {e}")
            fail(str(e))
    rows = summary_rows(result, truth)
    if as_json:
        typer.echo(json.dumps({"fingerprint": result["fingerprint"], "num_samples": result["num_samples"], "rows": rows}))
    else:
        source = str(trace) if trace is not None else f"{store}[{index}]"
        print_table(rows, title=f"posterior for {source} ({result['num_samples']} draws, model {result['fingerprint']})")
    if plot is not None:
        out = save_pairplot(result, info, plot, truth)
        typer.echo(f"pair plot: {out}", err=as_json)


# --- evaluate / compare (inference; issue 6)
@app.command()
def evaluate(
    posterior: Annotated[str, typer.Option("--posterior", help="Posterior artifact directory from `farm train npe`.")],
    store: Annotated[str, typer.Option("--store", help="Held-out store simulated from the posterior's prior with a seed not used in training.")],
    out: Annotated[str, typer.Option("--out", help="Report directory: metrics.json and PNG figures are written here.")],
    n_obs: Annotated[str, typer.Option("--n-obs", help="Held-out observations for SBC, TARP and recovery (at most the store's size).")] = "500",
    n_samples: Annotated[str, typer.Option("--n-samples", help="Posterior samples per observation.")] = "500",
    n_ppc: Annotated[int, typer.Option("--n-ppc", min=0, max=10_000, help="Observations given posterior-predictive simulations (0: none).")] = 40,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Selects observations; seeds sampling and predictive simulations.")] = 0,
    hpd: Annotated[bool, typer.Option("--hpd/--no-hpd", help="Also compute HPD expected coverage from the posterior density (200 observations; slower).")] = False,
    c2st: Annotated[bool, typer.Option("--c2st/--no-c2st", help="Also run C2ST of prior vs data-averaged posterior.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Calibrate and check a posterior on held-out simulations: SBC, TARP, recovery, predictive checks.

    Example: farm evaluate --posterior runs/npe-hand --store runs/test.zarr --out reports/hand
    """
    from inference.evaluate import EvalConfig

    try:
        cfg = EvalConfig(num_obs=parse_count(n_obs, "--n-obs"), num_samples=parse_count(n_samples, "--n-samples"), num_ppc=n_ppc, num_ppc_samples=min(20, parse_count(n_samples, "--n-samples")), seed=seed, hpd=hpd, c2st=c2st)
    except ValueError as e:
        hint = "--n-obs" if "num_obs" in str(e) else "--n-samples"
        raise typer.BadParameter(str(e).replace("num_obs", "--n-obs").replace("num_samples", "--n-samples"), param_hint=hint) from None
    from rich.console import Console
    from rich.table import Table

    from inference import load_posterior
    from inference.evaluate import load_held_out, summary_table
    from inference.evaluate import evaluate as run_evaluation

    try:
        post = load_posterior(posterior)
    except (ValueError, OSError, KeyError) as e:
        raise typer.BadParameter(str(e).splitlines()[0] if str(e) else repr(e), param_hint="--posterior") from None
    try:
        load_held_out(store, 10, seed)
    except ValueError as e:
        raise typer.BadParameter(str(e).splitlines()[0], param_hint="--store") from None
    err = Console(stderr=True)
    try:
        metrics = run_evaluation(post, store, out, cfg, log=None if as_json else (lambda m: err.print(f"[dim]{m}[/dim]")))
    except ValueError as e:
        bad_input(str(e).splitlines()[0])
    if as_json:
        typer.echo(json.dumps(metrics["summary"]))
        return
    table = Table(title=f"farm evaluate: {metrics['summary']['variant']}", show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value")
    for label, value in summary_table(metrics):
        table.add_row(label, value)
    Console().print(table)
    typer.echo(f"report: {Path(out) / 'metrics.json'} and {len(metrics['figures'])} figures ({', '.join(sorted(metrics['figures'].values()))}) in {out}")
    for w in metrics["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {w}")


@app.command()
def compare(
    report_a: Annotated[str, typer.Argument(help="Report directory from `farm evaluate` (e.g. the handcrafted variant).")],
    report_b: Annotated[str, typer.Argument(help="Second report directory (e.g. the summary-net variant).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON on stdout.")] = False,
) -> None:
    """Print two evaluation reports side by side: calibration, contraction, predictive error.

    Example: farm compare reports/hand reports/snet
    """
    from rich.console import Console
    from rich.table import Table

    from inference.evaluate import compare_reports, load_report

    reports = []
    for hint, path in (("REPORT_A", report_a), ("REPORT_B", report_b)):
        try:
            reports.append(load_report(path))
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint=hint) from None
    cmp = compare_reports(*reports)
    if as_json:
        typer.echo(json.dumps(cmp))
        return
    col_a, col_b = f"A: {cmp['columns'][0]}", f"B: {cmp['columns'][1]}"
    t = Table(title="farm compare", title_justify="left")
    t.add_column("metric", style="bold")
    t.add_column(col_a, justify="right")
    t.add_column(col_b, justify="right")
    t.add_column("better", justify="center")
    for label, va, vb, win in cmp["rows"]:
        t.add_row(label, va, vb, win)
    p = Table(title="per parameter: NRMSE (lower is better) and contraction (higher is better)", title_justify="left")
    p.add_column("parameter", style="bold")
    for head in ("NRMSE A", "NRMSE B", "contraction A", "contraction B"):
        p.add_column(head, justify="right")
    for name, na, nb, ca, cb in cmp["parameters"]:
        p.add_row(name, *(f"{v:.3f}" if isinstance(v, (int, float)) else "-" for v in (na, nb, ca, cb)))
    console = Console()
    console.print(t)
    console.print(p)
    for note in cmp["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")



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
