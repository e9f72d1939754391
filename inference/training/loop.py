"""Ray Train for the restriction classifier and the NPE: one plain torch loop per worker.

Anchor: Ray's ``torch_fashion_mnist_example.py`` (``prepare_model``, ``train_loop_config``,
``ScalingConfig``). Every round (an epoch, or a share of one on a large store:
``inference.training.schedule``) ends with a checkpoint in ``<out>/checkpoints/run``; a killed
training, started again with the same command, resumes from the last one (Ray Train restores the
run's checkpoint history from its storage path). Early stopping uses the validation loss,
all-reduced over workers so every worker stops at the same round; the learning rate follows a
schedule on the same loss (reduce-on-plateau by default), whose state is in the checkpoint too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from farm.run.raycluster import connect_ray
from inference.data.circuits import CircuitInputs, build_circuit_inputs, open_cache
from inference.data.datasets import ChunkStream, DataPlan, StoreSet, box_bounds, plan_data
from inference.defaults import TrainConfig
from inference.errors import TrainingError
from inference.training.lean_trainer import lean_torch_trainer
from inference.training.outcome import TrainOutcome
from inference.training.schedule import Rounds, resolve
from inference.training.tasks import Task, task_for

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
#: Smallest drop of the validation loss that counts as an improvement for early stopping (nats per
#: row for NSF, squared error for flow matching). The mean loss over ~3,000 validation rows has a
#: sampling error near 1e-2, so smaller gains are not evidence of a better posterior, and counting
#: them keeps patience alive for tens of epochs at the learning-rate floor.
MIN_IMPROVEMENT = 1e-3
#: Seed of the validation pass's random draws (the same every epoch; see ``_validate``).
VALIDATION_SEED = 0x5EED_0F_7A1
#: Worker-group failures (a node lost, a worker process killed, a worker's error) that Ray Train
#: recovers from by itself: it restarts every worker from the latest checkpoint once the cluster
#: can place them again. A lab's node loss should not lose the run; an error in the loop itself
#: fails again on each restart, so a few are enough.
MAX_WORKER_FAILURES = 3
#: Tries to place a (re)started worker group, each waiting RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S
#: (60 s by default): about 10 minutes for a replacement node to join before the run fails and
#: says how to resume. Ray's default (-1) waits forever on a cluster that cannot grow.
MAX_PLACEMENT_TRIES = 10


def model_stats(plan: DataPlan, stores: StoreSet) -> dict[str, Any]:
    """Standardisation and box bounds a model is built from (fitted on the training split)."""
    low, high = box_bounds(stores)
    circuits = plan.extra.get("circuits")
    circuit = {"circuit_mean": circuits["mean"], "circuit_std": circuits["std"]} if circuits else {}
    return circuit | {
        "low": low.tolist(),
        "high": high.tolist(),
        "feature_mean": plan.feature_mean,
        "feature_std": plan.feature_std,
        "theta_mean": plan.theta_mean,
        "theta_std": plan.theta_std,
        "trace_mean": plan.trace_mean,
        "trace_std": plan.trace_std,
    }


def make_scheduler(
    cfg: TrainConfig, opt: torch.optim.Optimizer, rounds_per_epoch: int = 1
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The learning-rate schedule, stepped once per round (``plateau`` on the validation loss).

    Why reduce-on-plateau by default: early stopping decides the number of epochs, so a schedule
    tied to a fixed epoch count (cosine) would barely decay before the run stops.
    """
    if cfg.lr_schedule == "plateau":
        # threshold as the early-stopping's improvement margin; at most 6 halvings (1/64)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            factor=0.5,
            patience=cfg.lr_patience,
            threshold=1e-4,
            threshold_mode="abs",
            min_lr=cfg.learning_rate / 64,
        )
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * rounds_per_epoch)
    return None


# ---------------------------------------------------------------------------- the worker loop
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: stream this worker's chunks, step, validate, checkpoint, report."""
    cfg = TrainConfig(**config)
    import ray.train
    import ray.train.torch

    # The worker narrates each report at INFO ("Reporting training result ..."); the [train] lines
    # below already say it, once. Set on the module's own logger: Ray Train re-applies its logging
    # config to `ray.train` during the run, and leaves loggers it does not name alone.
    logging.getLogger("ray.train.v2._internal.execution.context").setLevel(logging.WARNING)
    assert cfg.plan is not None and cfg.stats is not None, "run_training fills in plan and stats"
    task, plan = task_for(cfg), DataPlan.from_dict(cfg.plan)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.cpus_per_worker:
        torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()  # a GPU with use_gpu, else the CPU
    # on the device before the optimizer exists: a restored Adam state follows its parameters'
    # device
    model = task.build_model(cfg, cfg.stats).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    stores = attach_circuits(StoreSet(plan.urls), plan)
    rounds = Rounds.plan(cfg, plan.num_train, world, len(stores.chunks))
    sched = make_scheduler(cfg, opt, rounds.parts)
    state: dict[str, Any] = {
        "epoch": -1,
        "best_val": math.inf,
        "best_epoch": -1,
        "bad_epochs": 0,
        "stopped": False,
        "history": [],
        "resumed_at": [],
        "fingerprint": plan.fingerprint,
    }
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / STATE_FILE, weights_only=True, map_location="cpu")
        if saved["fingerprint"] != plan.fingerprint:
            raise TrainingError(
                f"checkpoint was trained on stores with fingerprint {saved['fingerprint']}, now "
                f"{plan.fingerprint}; use another --out"
            )
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if "rng" in saved:  # a stochastic loss (flow matching) draws on as if never stopped
            torch.set_rng_state(saved["rng"])
        if sched is not None and saved.get("scheduler"):
            sched.load_state_dict(saved["scheduler"])
        state = {k: saved[k] for k in state} | {"best_model": saved["best_model"]}
        state["resumed_at"] = [*state["resumed_at"], state["epoch"] + 1]
        if rank == 0:
            print(f"[train] resuming from the checkpoint of epoch {state['epoch'] + 1}", flush=True)
    ddp = ray.train.torch.prepare_model(
        model
    )  # DDP across workers (the model is already on its device)
    fields = task.fields()
    train_stream = ChunkStream(
        stores, plan, "train", fields, cfg.batch_size, rank, world, cfg.shuffle_chunks
    )
    # a fixed validation subset, read once: the same rows every round, no store pass per round
    val_batches = ChunkStream(
        stores, plan, "val", fields, max(cfg.batch_size, 1024), rank, world
    ).head(-(-cfg.val_rows // world))
    steps, parts = rounds.steps, rounds.parts
    report_every = max(1, steps // 4)
    for rnd in range(state["epoch"] + 1, cfg.epochs * parts):
        if state["stopped"]:
            break
        epoch, part = divmod(rnd, parts)
        where = f"epoch {epoch + 1}/{cfg.epochs}" + (
            f" round {part + 1}/{parts}" if parts > 1 else ""
        )
        t0, waited = time.perf_counter(), train_stream.wait_seconds
        ddp.train()
        run_loss, run_n = (
            torch.zeros((), dtype=torch.float64, device=device),
            0,
        )  # summed on the device: no sync per step on a GPU
        for step, batch in enumerate(train_stream.steady(epoch, steps, part=part, parts=parts)):
            warm = rounds.lr_at(cfg, rnd * steps + step)
            if warm is not None:
                for group in opt.param_groups:
                    group["lr"] = warm
            loss, _ = task.batch_loss(ddp, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            run_loss += loss.detach().double() * len(batch["theta"])
            run_n += len(batch["theta"])
            if cfg.progress and rank == 0 and (step + 1) % report_every == 0:
                print(
                    f"[train] {where} step {step + 1}/{steps} loss {float(run_loss) / run_n:.4f}",
                    flush=True,
                )
        seconds = time.perf_counter() - t0
        waited = train_stream.wait_seconds - waited
        t1 = time.perf_counter()
        val = _validate(task, model, val_batches, world, device)
        val_seconds = time.perf_counter() - t1
        train_loss = _allreduce_mean(float(run_loss), run_n, world, device)
        lr = opt.param_groups[0]["lr"]
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val["val_loss"])
        elif sched is not None:
            sched.step()
        improved = val["val_loss"] < state["best_val"] - MIN_IMPROVEMENT
        if improved:
            state.update(
                best_val=val["val_loss"],
                best_epoch=rnd,
                bad_epochs=0,
                best_model={
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                },
            )
        else:
            state["bad_epochs"] += 1
        state["stopped"] = state["bad_epochs"] >= cfg.patience
        state["epoch"] = rnd
        # "epoch" counts rounds (an epoch unless it is split: ``inference.training.schedule``)
        metrics = {
            "epoch": rnd + 1,
            "train_loss": train_loss,
            **val,
            "best_val_loss": state["best_val"],
            "lr": lr,
            "samples_per_s": run_n * world / seconds,
            "epoch_seconds": seconds,
            "samples_seen": (rnd + 1) * steps * cfg.batch_size * world,
            "data_wait_seconds": waited,
            "val_seconds": val_seconds,
        }
        state["history"] = [*state["history"], metrics]
        if rank == 0 and cfg.progress:
            extra = f" val_acc {val['val_accuracy']:.3f}" if "val_accuracy" in val else ""
            print(
                f"[train] {where} train_loss {train_loss:.4f} val_loss "
                f"{val['val_loss']:.4f}{extra} lr {lr:.1e} ({metrics['samples_per_s']:.0f} "
                f"samples/s){' *' if improved else ''}{' early stop' if state['stopped'] else ''}",
                flush=True,
            )
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save(
                    {
                        **state,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict() if sched is not None else {},
                        "rng": torch.get_rng_state(),
                    },
                    Path(tmp) / STATE_FILE,
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def _allreduce_mean(
    total: float, count: int, world: int, device: torch.device | None = None
) -> float:
    if world > 1:  # on the worker's device: NCCL (GPU workers) reduces device tensors only
        t = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


@torch.no_grad()
def _validate(
    task: Task,
    model: torch.nn.Module,
    batches: list[dict[str, Any]],
    world: int,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Validation loss and the task's extra metrics, per row, summed over all workers."""
    model.eval()
    acc = torch.zeros(2 + len(task.extra_metrics), dtype=torch.float64)  # loss sum, rows, extras
    # Common random numbers: a stochastic loss (flow matching draws a time and a noise point per
    # row) sees the same draws every epoch, so epochs differ only by their weights. With fresh draws
    # the validation loss jittered by more than an epoch's gain and halved the learning rate too
    # early.
    with torch.random.fork_rng(
        devices=[torch.cuda.current_device()]
        if device is not None and device.type == "cuda"
        else []
    ):
        torch.manual_seed(VALIDATION_SEED)
        for batch in batches:
            loss, extra = task.batch_loss(model, batch)
            n = len(batch["theta"])
            acc += torch.tensor(
                [float(loss) * n, n, *(extra[k] for k in task.extra_metrics)], dtype=torch.float64
            )
    if world > 1:
        acc = acc.to(device)
        torch.distributed.all_reduce(acc)
        acc = acc.cpu()
    out = {"val_loss": float(acc[0] / max(acc[1], 1))}
    for i, k in enumerate(task.extra_metrics):
        out[k] = float(acc[2 + i] / max(acc[1], 1))
    return out


# ---------------------------------------------------------------------------- the driver
def run_training(
    cfg: TrainConfig, address: str | None = None, task: Task | None = None
) -> TrainOutcome:
    """Plan the data, run the Ray Train ``TorchTrainer``, return the best model's state.

    Args:
        cfg: the run; ``cfg.out`` holds the checkpoints, so the same call resumes a killed run.
        address: Ray cluster to join; None reuses an initialised Ray or starts a private local one
            (``"local"``: never the last `ray start` cluster on this machine by accident).
        task: the task object (its architecture overrides); None = ``cfg.task`` with defaults.

    Raises:
        TrainingError: a worker failed, or ``out`` holds a run of other settings.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    # A TrainConfig may be written before its stores and output are known (``train`` fills them
    # in); a run needs both.
    if not cfg.stores:
        raise ValueError("stores=() is empty; give at least one --store")
    if not cfg.out:
        raise ValueError("out='' is empty; give the artifact directory (--out)")
    # Workers may run elsewhere (another cwd or node): local paths become absolute.
    cfg = replace(
        cfg,
        stores=tuple(_absolute(s) for s in cfg.stores),
        out=_absolute(cfg.out),
        circuits=None if cfg.circuits is None else _absolute(cfg.circuits),
    )
    task = task or task_for(cfg)
    cfg = task.configure(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stores = StoreSet(cfg.stores)
    plan = plan_data(stores, cfg.val_fraction, cfg.test_fraction)
    requested = cfg
    cfg = resolve(cfg, plan.num_train)  # batch_size=0: the data's batch and learning rate
    ident_path = out / "train_config.json"
    if ident_path.is_file():
        have = json.loads(ident_path.read_text())
        cfg = keep_resolved_batch(requested, cfg, have)
        if have != json.loads(json.dumps(cfg.identity())):
            diff = sorted(
                k
                for k in set(have) | set(cfg.identity())
                if have.get(k) != json.loads(json.dumps(cfg.identity())).get(k)
            )
            raise TrainingError(
                f"out={str(out)!r} holds a training with other {', '.join(diff)}; use another "
                "--out or the same settings to resume"
            )
    if cfg.circuits is not None:
        inputs = build_circuit_inputs(stores, plan, cfg.circuits, out, progress=cfg.progress)
        plan.extra["circuits"] = inputs.to_dict()
        attach_circuits(stores, plan)
    task.check_plan(cfg, plan)
    ident_path.write_text(json.dumps(cfg.identity(), indent=2))
    stats = model_stats(plan, stores)
    started = False
    if not ray.is_initialized():
        # Workers print progress themselves; Ray's own INFO chatter (checkpoint paths, state-API
        # polling without a dashboard) would drown it, so workers log at WARNING and above. Quiet
        # runs forward nothing from workers: a failure still arrives as trainer.fit()'s exception.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        started = connect_ray(
            address,
            quiet=not cfg.progress,
            log_level=logging.ERROR,
            object_store_memory=None,
            configure_logging=False,
        )
    try:
        cpus = cfg.cpus_per_worker or max(
            1, int(ray.cluster_resources().get("CPU", 1)) // cfg.num_workers
        )
        cfg_run = replace(cfg, cpus_per_worker=cpus, plan=plan.to_dict(), stats=stats)
        trainer = lean_torch_trainer(
            train_loop_per_worker,
            train_loop_config=asdict(cfg_run),
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.gpus_per_worker > 0,
                resources_per_worker={"CPU": cpus}
                | ({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker > 0 else {}),
            ),
            run_config=RunConfig(
                name="run",
                storage_path=str(out / "checkpoints"),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                failure_config=FailureConfig(
                    max_failures=MAX_WORKER_FAILURES,
                    controller_failure_limit=MAX_PLACEMENT_TRIES,
                ),
                # Ray Train narrates every report and checkpoint at INFO; the CLI prints its own
                # progress, and a failed run surfaces as one TrainingError line, so quiet hides
                # Train's logs entirely.
                logging_config=LoggingConfig(log_level="WARNING" if cfg.progress else "CRITICAL"),
            ),
        )
        alive = _alive_nodes()
        try:
            result = trainer.fit()
        except Exception as e:  # Ray wraps worker errors; keep the root cause on one line
            raise TrainingError(_failure_line(e, alive - _alive_nodes(), cfg)) from e
        if result.checkpoint is None:
            raise TrainingError("training produced no checkpoint")
        with result.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, weights_only=True, map_location="cpu")
        if "best_model" not in state:
            raise TrainingError(
                f"the validation loss was never finite in {len(state['history'])} epochs; lower "
                "--lr"
            )
    finally:
        if started:
            ray.shutdown()
    return TrainOutcome(
        config=cfg,
        plan=plan,
        stats=stats,
        state=state,
        stores=stores,
        build_model=task_for(cfg).build_model,  # as the workers rebuild it, from the config
    )


def attach_circuits(stores: StoreSet, plan: DataPlan) -> StoreSet:
    """Serve the plan's cached circuit statistics as the ``circuit`` field, if it has them."""
    if plan.extra.get("circuits"):
        inputs = CircuitInputs.from_dict(plan.extra["circuits"])
        stores.attach("circuit", open_cache(inputs, len(stores.stores)))
    return stores


def _absolute(url: str) -> str:
    return url if "://" in url else str(Path(url).absolute())


def keep_resolved_batch(
    requested: TrainConfig, resolved: TrainConfig, have: dict[str, Any]
) -> TrainConfig:
    """On resume, the batch and rate the run chose (``batch_size=0``), whatever the workers now.

    The data's batch follows rows per worker, so a run resumed on fewer workers (a node lost)
    would otherwise choose another batch and be refused as other settings.
    """
    base = have.get("warmup_from") or have.get("learning_rate")
    if requested.batch_size or "batch_size" not in have or base != requested.learning_rate:
        return resolved
    return replace(
        resolved,
        batch_size=int(have["batch_size"]),
        learning_rate=float(have["learning_rate"]),
        warmup_from=float(have.get("warmup_from", 0.0)),
    )


def _alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _failure_line(e: BaseException, lost: set[str], cfg: TrainConfig) -> str:
    """One line: what failed, which nodes were lost, and how to resume from the last checkpoint."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    placing = e
    while placing is not None and not isinstance(placing, WorkerGroupStartupTimeoutError):
        placing = placing.__cause__ or getattr(placing, "controller_failure", None)
    resume = (
        f"the checkpoints in {cfg.out}/checkpoints are kept: run the same command again to resume "
        "once the cluster has the workers' resources, or with fewer --workers"
    )
    reason = (
        f"the cluster could not place {cfg.num_workers} worker(s) in {MAX_PLACEMENT_TRIES} tries"
        if placing is not None
        else _root_cause(e)
    )
    if lost:
        return f"training failed: lost node {', '.join(sorted(lost))}; {reason}; {resume}"
    if placing is not None:
        return f"training failed: {reason}; {resume}"
    return f"training failed: {reason}"


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"
