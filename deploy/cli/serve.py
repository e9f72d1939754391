"""`farm serve` and `farm query`: the posterior over HTTP (Ray Serve) and its client."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from deploy.cli.common import bad_input, fail, parse_circuit
from deploy.defaults import DEFAULT_MAX_BATCH_SIZE


def serve(
    posterior: Annotated[
        str,
        typer.Option(
            "--posterior", help="Artifact directory written by `farm train npe` (either variant)."
        ),
    ],
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Interface to bind; 127.0.0.1 keeps it local, 0.0.0.0 exposes it."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="HTTP port.")] = 8000,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas", min=1, max=64, help="Serve replicas of the posterior (0.5 CPU each)."
        ),
    ] = 1,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray cluster: `auto` or `ray://host:10001`. Default: start a local Ray.",
        ),
    ] = None,
    max_batch_size: Annotated[
        int,
        typer.Option(
            "--max-batch-size",
            min=1,
            max=256,
            help="Concurrent /sample requests per forward pass; 1 turns batching off.",
        ),
    ] = DEFAULT_MAX_BATCH_SIZE,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Return once the service answers; it keeps running "
            "(stop it with `kill -INT PID`, or `serve shutdown` on a cluster).",
        ),
    ] = False,
    pid_file: Annotated[
        Path | None,
        typer.Option(
            "--pid-file", help="With --detach and a local Ray: write the server's PID here."
        ),
    ] = None,
    log: Annotated[
        Path | None,
        typer.Option(
            "--log",
            help="With --detach and a local Ray: the server's log file "
            "(default: farm-serve-PORT.log in the temp dir).",
        ),
    ] = None,
    direct_ingress: Annotated[
        bool,
        typer.Option(
            "--direct-ingress",
            help="Also let the replica answer HTTP on a port of its own (printed as `direct:`), "
            "skipping the proxy hop (~12 ms per request, docs/performance.md). "
            "Ray Serve's experimental direct ingress: one replica, local Ray only.",
        ),
    ] = False,
    circuits: Annotated[
        str | None,
        typer.Option(
            "--circuits",
            help="Circuits store written by `farm fingerprint` (circuit-aware posteriors only): "
            "requests may then name their circuit as `circuit: {chip, neuron}` instead of "
            "sending its fingerprint, and /predictive reruns the draws on that circuit. Read "
            "once at start; its reference settings must be the posterior's.",
        ),
    ] = None,
) -> None:
    """Serve a trained posterior over HTTP with Ray Serve and print its URL.

    Blocks until Ctrl-C unless --detach. Endpoints: /health, /info, /sample, /log_prob, /predictive
    (docs/http-api.md). A circuit-aware posterior (`farm train npe --circuits`) needs each
    observation's circuit: its `fingerprint`, or with --circuits its `circuit` ids.

    Example: farm serve --posterior artifacts/npe-circuit --circuits runs/circuits.zarr --port 8000
    """
    from deploy.serve.launch import (
        READY_MARKER,
        ServeOptions,
        check_circuits,
        check_posterior,
        deploy,
        port_free,
        ready_line,
        serve_until_interrupted,
        spawn_detached,
        wait_healthy,
    )

    if direct_ingress and address is not None:
        raise typer.BadParameter(
            f"--direct-ingress with --address {address}: "
            "the mode works on the private local Ray `farm serve` starts; drop one of the two",
            param_hint="--direct-ingress",
        )
    if direct_ingress and replicas != 1:
        raise typer.BadParameter(
            f"--direct-ingress with --replicas {replicas}: each replica would answer on its own "
            "port and need a load balancer in front; use --replicas 1",
            param_hint="--direct-ingress",
        )
    opts = ServeOptions(
        posterior=posterior,
        host=host,
        port=port,
        replicas=replicas,
        address=address,
        max_batch_size=max_batch_size,
        direct_ingress=direct_ingress,
        circuits=circuits,
    )
    try:
        described = check_posterior(posterior)
    except (ValueError, OSError) as e:
        raise typer.BadParameter(str(e).splitlines()[0], param_hint="--posterior") from None
    if circuits is not None:
        try:
            described += f", {check_circuits(circuits, posterior)}"
        except (ValueError, OSError) as e:
            raise typer.BadParameter(str(e).splitlines()[0], param_hint="--circuits") from None
    if address is None and not port_free(host, port):
        raise typer.BadParameter(
            f"port {port} on {host} is already in use; pick another --port", param_hint="--port"
        )
    for name, path in (("--log", log), ("--pid-file", pid_file)):
        if path is not None and not path.parent.is_dir():
            raise typer.BadParameter(
                f"directory {str(path.parent)!r} does not exist", param_hint=name
            )
    if detach and address is None:
        proc, log, offset = spawn_detached(opts, log)
        try:
            wait_healthy(opts.url, process=proc, log=log, log_offset=offset)
        except (RuntimeError, TimeoutError) as e:
            proc.send_signal(signal.SIGINT)  # a server that never came up must not linger
            fail(f"{e}; see {log}")
        if pid_file is not None:
            pid_file.write_text(f"{proc.pid}\n")
        line = ready_line(log, offset) or ""
        where = (
            line.rsplit(" at ", 1)[1].removesuffix("(Ctrl-C to stop)").strip()
            if " at " in line
            else opts.url
        )
        typer.echo(
            f"Serving {described} at {where} (pid {proc.pid}, log {log}); "
            f"stop with: kill -INT {proc.pid}"
        )
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


def query(
    url: Annotated[
        str,
        typer.Option("--url", help="Base URL printed by `farm serve`, e.g. http://127.0.0.1:8000."),
    ],
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace",
            help="Recorded trace: .npy (or .csv) of the protocol's MADC codes: 1000 for step; "
            "sweeps x T (flat, or one row per sweep) for multi-sweep protocols.",
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Take the observation from this store (with --index); "
            "its true parameters are shown.",
        ),
    ] = None,
    index: Annotated[
        int | None, typer.Option("--index", min=0, help="Sample index in --store.")
    ] = None,
    circuit: Annotated[
        str | None,
        typer.Option(
            "--circuit",
            metavar="CHIP:NEURON",
            help="Circuit-aware posteriors: the circuit the trace was recorded on, e.g. 3:17; "
            "the service looks up its fingerprint in its circuits store (`farm serve "
            "--circuits`). With --store and neither option, a circuit-aware service gets the "
            "sample's own circuit (the store's chip and neuron).",
        ),
    ] = None,
    fingerprint: Annotated[
        Path | None,
        typer.Option(
            "--fingerprint",
            help="Circuit-aware posteriors: the circuit's fingerprint instead of --circuit, a .npy "
            "(or .csv) of (references, time) ADC codes, e.g. (6, 400), as `farm fingerprint` "
            "records them.",
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=10_000, help="Posterior draws.")] = 1000,
    seed: Annotated[
        int | None,
        typer.Option("--seed", min=0, max=2**32 - 1, help="Seed for reproducible draws."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a pair plot of the draws to this PNG.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary rows as JSON.")
    ] = False,
) -> None:
    """Ask a running posterior service about one trace: mean, std and 90 % interval per parameter.

    A circuit-aware posterior also needs the trace's circuit: --circuit CHIP:NEURON (looked up
    in the service's circuits store) or --fingerprint FILE.npy (the circuit's recording).

    Example: farm query --url http://127.0.0.1:8000 --store runs/test.zarr --index 3 --plot post.png

    Example: farm query --url http://127.0.0.1:8000 --trace rec.npy --circuit 3:17
    """
    from deploy.client import (
        PosteriorClient,
        QueryError,
        load_fingerprint_file,
        load_store_circuit,
        load_store_trace,
        load_trace_file,
        misspecification_warning,
        print_table,
        refusal_line,
        save_pairplot,
        summary_rows,
    )

    if (trace is None) == (store is None):
        raise typer.BadParameter(
            "give exactly one of --trace FILE or --store S --index I", param_hint="--trace/--store"
        )
    if store is not None and index is None:
        raise typer.BadParameter(
            "--store needs --index I (which sample to query)", param_hint="--index"
        )
    if circuit is not None and fingerprint is not None:
        raise typer.BadParameter(
            "give at most one of --circuit CHIP:NEURON or --fingerprint FILE",
            param_hint="--circuit/--fingerprint",
        )
    ids = None if circuit is None else parse_circuit(circuit)
    codes = None
    if fingerprint is not None:
        try:
            codes = load_fingerprint_file(fingerprint)
        except (ValueError, OSError) as e:
            raise typer.BadParameter(str(e).splitlines()[0], param_hint="--fingerprint") from None
    truth = None
    try:
        if trace is not None:
            obs = load_trace_file(trace)
        else:
            obs, truth = load_store_trace(store, index)
    except (ValueError, OSError, KeyError) as e:
        raise typer.BadParameter(
            str(e).splitlines()[0], param_hint="--trace" if trace is not None else "--store/--index"
        ) from None
    try:
        client = PosteriorClient(url)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--url") from None
    with client:
        try:
            info = client.info() if plot is not None or (ids is None and codes is None) else None
            if ids is None and codes is None and info is not None and info.get("circuit_aware"):
                if store is None:
                    shape = "x".join(str(k) for k in info.get("fingerprint_shape") or ())
                    bad_input(
                        "the served posterior is circuit-aware: give the trace's circuit as "
                        f"--circuit CHIP:NEURON or --fingerprint FILE.npy ({shape} ADC codes)"
                    )
                try:
                    ids = load_store_circuit(store, index)  # the sample's own circuit
                except KeyError as e:
                    bad_input(
                        f"{store} records no circuit per sample ({e}); give --circuit or "
                        "--fingerprint"
                    )
            result = client.sample(obs, num_samples=n, seed=seed, fingerprint=codes, circuit=ids)
        except QueryError as e:
            if e.misspecification is not None and as_json:  # a refusal: its check, as an answer's
                typer.echo(json.dumps({"refused": str(e), "misspecification": e.misspecification}))
            if e.status == 422:
                bad_input(refusal_line(e))
            fail(str(e))
    rows = summary_rows(result, truth)
    if (warning := misspecification_warning(result)) is not None:
        typer.echo(
            warning, err=True
        )  # a log line, not a result: stdout stays the table or the JSON
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "fingerprint": result["fingerprint"],
                    "num_samples": result["num_samples"],
                    "rows": rows,
                    "misspecification": result.get("misspecification"),
                    "circuit": None if ids is None else {"chip": ids[0], "neuron": ids[1]},
                }
            )
        )
    else:
        source = str(trace) if trace is not None else f"{store}[{index}]"
        if ids is not None:
            source += f" on circuit {ids[0]}:{ids[1]}"
        print_table(
            rows,
            title=f"posterior for {source} "
            f"({result['num_samples']} draws, model {result['fingerprint']})",
        )
    if plot is not None:
        out = save_pairplot(result, info, plot, truth)
        typer.echo(f"pair plot: {out}", err=as_json)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(query)
