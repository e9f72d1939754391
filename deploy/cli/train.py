"""`farm train classifier|npe`: Ray Train fits from Zarr stores (the inference layer)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from deploy.cli.common import AddressOpt
from inference.defaults import ESTIMATORS, FEATURES, TrainConfig
from inference.defaults import TRAIN_DEFAULTS as D

train_app = typer.Typer(
    help="Train the restriction classifier or an amortized posterior with Ray Train, from Zarr "
    "stores.",
    no_args_is_help=True,
)

StoreOpt = Annotated[
    list[str],
    typer.Option(
        "--store", help="Zarr store from `farm simulate`; repeat for several stores of one setup."
    ),
]
OutOpt = Annotated[
    str,
    typer.Option(
        "--out",
        help="Artifact directory; checkpoints go inside, so re-running the same command resumes a "
        "killed training.",
    ),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=1, max=64, help="Ray Train workers (data-parallel).")
]
CpusOpt = Annotated[
    int,
    typer.Option(
        "--cpus-per-worker",
        min=0,
        max=256,
        help="CPUs each worker reserves, and its torch threads; 0 = the cluster's CPUs / workers. "
        "Use 1 on a machine busy with other work.",
    ),
]
GpusOpt = Annotated[
    float,
    typer.Option(
        "--gpus-per-worker",
        min=0,
        max=16,
        help="GPUs each worker reserves (Ray Train use_gpu); 0 trains on CPUs.",
    ),
]
EpochsOpt = Annotated[
    int,
    typer.Option(
        "--epochs",
        min=1,
        max=10_000,
        help="Maximum epochs; early stopping on the validation loss may end sooner.",
    ),
]
BatchOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=0,
        max=65_536,
        help="Samples per step and worker; 0 = from the data (256 below 1.4e5 training rows per "
        "worker, 512 at 2e5, up to 2048 from 5.7e5, with the learning rate scaled to match).",
    ),
]
LrOpt = Annotated[float, typer.Option("--lr", min=1e-6, max=0.5, help="Adam learning rate.")]
PatienceOpt = Annotated[
    int,
    typer.Option(
        "--patience",
        min=1,
        max=10_000,
        help="Rounds (epochs, or --round-samples rows of a large store) without validation "
        "improvement before stopping.",
    ),
]
RoundOpt = Annotated[
    int,
    typer.Option(
        "--round-samples",
        min=0,
        max=10**9,
        help="Most training rows between two validations, checkpoints and schedule steps; a "
        "longer epoch is split into rounds. 0 = one round per epoch.",
    ),
]
ValRowsOpt = Annotated[
    int,
    typer.Option(
        "--val-rows",
        min=0,
        max=10**9,
        help="Validation rows used (the first of the split, read once); 0 = all.",
    ),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", min=0, help="Seed of initialisation and shuffling.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch progress.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")]
ArchOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arch",
        help="Architecture FIELD=VALUE, repeatable, e.g. --arch cnn_input_pool=2 --arch "
        "time_samples=4 (fields: docs/inference.md, 'Architecture').",
    ),
]


def architecture_fields(items: list[str] | None, features: str, estimator: str) -> dict[str, Any]:
    """--arch FIELD=VALUE pairs as the estimator's config fields, checked before training starts."""
    from dataclasses import fields

    from inference.nets.flow_matching import FlowMatchingConfig
    from inference.nets.nsf import FlowConfig

    cls = FlowMatchingConfig if estimator == "flow-matching" else FlowConfig
    allowed = [f.name for f in fields(cls) if f.name != "variant"]
    arch: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or key not in allowed:
            raise typer.BadParameter(
                f"{item!r}: give FIELD=VALUE with FIELD one of {', '.join(allowed)} ({estimator})",
                param_hint="--arch",
            )
        try:
            value = json.loads(raw)  # numbers, lists ([16,32]), null; anything else stays a string
        except json.JSONDecodeError:
            value = raw
        arch[key] = tuple(value) if isinstance(value, list) else value
    try:
        cls(variant=features, **arch)
    except (TypeError, ValueError) as e:
        raise typer.BadParameter(str(e).splitlines()[0], param_hint="--arch") from None
    return arch


def _run_train(
    task: Any,
    stores: list[str],
    out: str,
    config: TrainConfig,
    *,
    address: str | None,
    as_json: bool,
    ensemble: int = 1,
) -> None:
    """Train through the library; its typed errors become exit codes in `deploy.cli.main`."""
    from inference.training.api import format_metrics, train

    metrics = train(task, stores, out, config, address=address, ensemble=ensemble)
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        typer.echo(format_metrics(task, out, metrics))


@train_app.command("classifier")
def train_classifier(
    store: StoreOpt,
    out: OutOpt = "artifacts/restricted",
    heldout: Annotated[
        list[str] | None,
        typer.Option(
            "--heldout", help="Store(s) from the box prior to report recall/precision on."
        ),
    ] = None,
    target_recall: Annotated[
        float,
        typer.Option(
            "--target-recall",
            min=0.5,
            max=1.0,
            help="Share of in-regime samples the restricted prior keeps.",
        ),
    ] = 0.99,
    workers: WorkersOpt = D["num_workers"],
    cpus_per_worker: CpusOpt = D["cpus_per_worker"],
    gpus_per_worker: GpusOpt = D["gpus_per_worker"],
    epochs: EpochsOpt = D["epochs"],
    batch_size: BatchOpt = D["batch_size"],
    lr: LrOpt = D["learning_rate"],
    patience: PatienceOpt = D["patience"],
    round_samples: RoundOpt = D["round_samples"],
    val_rows: ValRowsOpt = D["val_rows"],
    seed: SeedOpt = D["seed"],
    address: AddressOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train theta -> P(in regime) on a pilot store and write the restricted prior into --out.

    --out then holds restricted_prior.json + weights.npz: `farm simulate --prior OUT` samples it.

    Example: farm train classifier --store runs/pilot.zarr --out artifacts/restricted
    """
    from inference.training.tasks import ClassifierTask

    _run_train(
        ClassifierTask(target_recall=target_recall, heldout=tuple(heldout or ())),
        store,
        out,
        TrainConfig(
            num_workers=workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr,
            patience=patience,
            round_samples=round_samples,
            val_rows=val_rows,
            seed=seed,
            progress=not quiet,
        ),
        address=address,
        as_json=as_json,
    )


@train_app.command("npe")
def train_npe(
    store: StoreOpt,
    out: OutOpt = "artifacts/npe",
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help="handcrafted (named summary statistics), summary-net (1D CNN on the raw trace) "
            "or hybrid (the statistics beside a small CNN on the trace: ~2.8x summary-net's "
            "training speed, lower held-out loss).",
        ),
    ] = "handcrafted",
    prior: Annotated[
        str | None,
        typer.Option(
            "--prior",
            help="Restricted prior directory the store was simulated from (copied into the "
            "artifact).",
        ),
    ] = None,
    circuits: Annotated[
        str | None,
        typer.Option(
            "--circuits",
            help="Circuits store from `farm fingerprint` covering the stores' chips: the "
            "posterior learns each circuit's mismatch from its fingerprint (training records a "
            "fresh one per sample), and asks for the observed circuit's fingerprint at "
            "inference. Without it the posterior averages over circuits.",
        ),
    ] = None,
    estimator: Annotated[
        str,
        typer.Option(
            "--estimator",
            help="nsf (neural spline flow: one pass per draw) or flow-matching (vector field, ODE "
            "solve per draw).",
        ),
    ] = "nsf",
    ensemble: Annotated[
        int,
        typer.Option(
            "--ensemble",
            min=1,
            max=16,
            help="K posteriors (seeds seed..seed+K-1, parallel Ray Train runs when the cluster "
            "has room) served as their equal mixture.",
        ),
    ] = 1,
    arch: ArchOpt = None,
    workers: WorkersOpt = D["num_workers"],
    cpus_per_worker: CpusOpt = D["cpus_per_worker"],
    gpus_per_worker: GpusOpt = D["gpus_per_worker"],
    epochs: EpochsOpt = D["epochs"],
    batch_size: BatchOpt = D["batch_size"],
    lr: LrOpt = D["learning_rate"],
    patience: PatienceOpt = D["patience"],
    round_samples: RoundOpt = D["round_samples"],
    val_rows: ValRowsOpt = D["val_rows"],
    seed: SeedOpt = D["seed"],
    address: AddressOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train an amortized posterior (NPE: neural spline flow or flow matching) into --out.

    Example: farm train npe --store runs/sims.zarr --features summary-net --out artifacts/npe-sn

    Circuit-aware: farm fingerprint --chip-ids 0-7 --out runs/circuits.zarr, then
    farm train npe --store runs/sims.zarr --circuits runs/circuits.zarr --out artifacts/npe-circuit
    """
    if features not in FEATURES:
        raise typer.BadParameter(
            f"{features!r} unknown; choose one of {', '.join(FEATURES)}", param_hint="--features"
        )
    if estimator not in ESTIMATORS:
        raise typer.BadParameter(
            f"{estimator!r} unknown; choose {' or '.join(ESTIMATORS)}", param_hint="--estimator"
        )
    if circuits is not None and ensemble > 1:
        raise typer.BadParameter(
            f"--ensemble {ensemble} with --circuits: circuit-aware ensembles are not supported; "
            "use --ensemble 1",
            param_hint="--ensemble",
        )
    from inference.training.tasks import NPETask

    _run_train(
        NPETask(
            features=features,
            prior=prior,
            estimator=estimator,
            flow=architecture_fields(arch, features, estimator),
        ),
        store,
        out,
        TrainConfig(
            num_workers=workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=lr,
            patience=patience,
            round_samples=round_samples,
            val_rows=val_rows,
            seed=seed,
            progress=not quiet,
            circuits=circuits,
        ),
        address=address,
        as_json=as_json,
        ensemble=ensemble,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
