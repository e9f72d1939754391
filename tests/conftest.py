"""Shared fixtures: one local Ray for the whole session (ray.init costs ~7 s on 2 cores)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

#: tests/serving.py: the fixtures of the test_serve_* modules, which share one Ray Serve start.
pytest_plugins = ("tests.serving",)

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray cluster shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def npe_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A box-prior training store (8000 sims) and a held-out store (300), shared across modules."""
    from farm.run.config import FarmConfig
    from farm.run.runner import run_farm

    root = tmp_path_factory.mktemp("npe-stores")
    train, heldout = str(root / "train.zarr"), str(root / "heldout.zarr")
    run_farm(FarmConfig(train, num_sims=8000, seed=21, chunk_size=1000, in_process=True))
    run_farm(FarmConfig(heldout, num_sims=300, seed=22, chunk_size=300, in_process=True))
    return train, heldout


@pytest.fixture(scope="session")
def handcrafted_npe(
    npe_stores: tuple[str, str], tmp_path_factory: pytest.TempPathFactory, ray_session
) -> tuple[Path, dict]:
    """One handcrafted NPE trained by the real Ray Train loop (15 epochs at most), shared read-only.

    Every Ray Train run costs ~20 s of fixed start/stop on 2 cores, so the modules that need *a*
    trained handcrafted posterior (recovery, evaluation, serving, misspecification) share this one.
    Tests that alter an artifact copy it first. One torch thread (``cpus_per_worker=1``): the other
    xdist worker keeps the second core busy, and two torch threads on one free core run far slower
    (OpenMP's barriers wait for a thread that is not scheduled).
    """
    from inference.defaults import TrainConfig
    from inference.training.api import train

    out = tmp_path_factory.mktemp("hc") / "npe-handcrafted"
    config = TrainConfig(epochs=15, patience=4, batch_size=128, cpus_per_worker=1, progress=False)
    metrics = train("npe", [npe_stores[0]], str(out), config)
    return out, metrics


@pytest.fixture(scope="session")
def summary_net_npe(
    npe_stores: tuple[str, str], tmp_path_factory: pytest.TempPathFactory, ray_session
) -> tuple[Path, dict]:
    """One summary-network NPE (1 epoch: the contract, not its quality), shared read-only.

    It is `make demo`'s served configuration: flow matching, input pooling and several path points
    per row (the NSF summary net is built, without Ray Train, in test_sbi_interop).
    """
    from inference.defaults import TrainConfig
    from inference.training.api import train
    from inference.training.tasks import NPETask

    out = tmp_path_factory.mktemp("sn") / "npe-summary-net"
    task = NPETask(
        features="summary-net",
        estimator="flow-matching",
        flow={"cnn_input_pool": 2, "time_samples": 2},
    )
    config = TrainConfig(epochs=1, batch_size=256, cpus_per_worker=1, progress=False)
    metrics = train(task, [npe_stores[0]], str(out), config)
    return out, metrics


@pytest.fixture(scope="session")
def circuit_npe(
    npe_stores: tuple[str, str], tmp_path_factory: pytest.TempPathFactory, ray_session
) -> tuple[Path, str, dict]:
    """A circuit-aware handcrafted NPE (2 epochs: the contract, not its quality) and the circuits
    store of its training chips (the default pool, 0-7), shared read-only."""
    from farm.circuits.runner import FingerprintConfig, run_fingerprint
    from inference.defaults import TrainConfig
    from inference.training.api import train
    from inference.training.tasks import NPETask

    root = tmp_path_factory.mktemp("circuit")
    circuits = str(root / "circuits.zarr")
    run_fingerprint(FingerprintConfig(circuits, chip_ids=tuple(range(8)), seed=3))
    out = root / "npe-circuit"
    config = TrainConfig(
        epochs=2, batch_size=256, cpus_per_worker=1, progress=False, circuits=circuits
    )
    task = NPETask(features="handcrafted", estimator="flow-matching")
    metrics = train(task, [npe_stores[0]], str(out), config)
    return out, circuits, metrics


@pytest.fixture()
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Small tmpfs mounts (a disk that fills up on demand); skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"disk{len(mounted)}"
        mnt.mkdir()
        if (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                capture_output=True,
            ).returncode
            != 0
        ):
            pytest.skip("needs permission to mount a tmpfs (root in the CI container)")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ------------------------------------------------------ parallel runs (pytest-xdist, `make test`)
#: Session fixtures that train with Ray Train; the modules using them run in one worker, so each is
#: built once.
SHARED_POSTERIORS = frozenset({"npe_stores", "handcrafted_npe", "summary_net_npe", "circuit_npe"})
POSTERIOR_MODULES = frozenset(
    {
        "test_circuit_posterior",
        "test_evaluate_cli",
        "test_misspecification",
        "test_npe",
        "test_serve_api",
        "test_serve_bad_input",
        "test_serve_bounds",
        "test_serve_cli",
        "test_serve_health",
        "test_serve_summary_net",
    }
)
#: Groups by their cost on 2 cores, heaviest first, so the two workers finish at about the same
#: time.
HEAVY_FIRST = (
    "posteriors",
    "test_multinode",
    "test_train_ray",
    "test_ensemble",
    "test_classifier",
    "test_farm",
    "test_protocols",
    "test_evaluate",
    "test_store_safety",
)


def _group_of(nodeid: str) -> str:
    """A test's scheduling unit: its module, or ``posteriors`` for modules sharing posteriors."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    return "posteriors" if module in POSTERIOR_MODULES else module


@pytest.hookimpl(optionalhook=True)  # a plain `pytest` without pytest-xdist installed still runs
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Whole groups go to one worker (module fixtures and the shared posteriors are built once).

    Why not ``--dist loadgroup``: xdist 3.8 marks groups by rewriting ``item._nodeid``, which
    pytest 9.2's structured node ids ignore, so every test became its own unit and module fixtures
    ran once per worker.
    """
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group_of(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heaviest groups first (xdist hands them out in collection order); posterior users grouped.

    A module that uses the shared posteriors outside their group is a usage error.
    """
    stray = sorted(
        {
            i.module.__name__
            for i in items
            if SHARED_POSTERIORS & set(i.fixturenames) and _group_of(i.nodeid) != "posteriors"
        }
    )
    if stray:
        raise pytest.UsageError(
            f"{', '.join(stray)} use the shared posteriors: "
            "add them to POSTERIOR_MODULES in tests/conftest.py"
        )
    rank = {g: k for k, g in enumerate(HEAVY_FIRST)}
    items.sort(
        key=lambda i: rank.get(_group_of(i.nodeid), len(rank))
    )  # stable: the order within a group is kept
