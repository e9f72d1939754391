"""Joining Ray: the one place that decides how a farm, trainer or server process calls ``ray.init``.

Why one place: every layer wants the same things (no dashboard, worker logs kept off the user's
terminal, a private loopback cluster when no address is given), and a process may call it twice
(`farm simulate` then a check) without starting a second Ray.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from farm.errors import FarmError, FarmInputError

_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _drop_auth_default_notice(record: logging.LogRecord) -> bool:
    """Ray's notice that token authentication is on by default (it stays on; the notice goes)."""
    return not record.getMessage().startswith(
        "Token authentication is enabled for this Ray cluster"
    )


#: Object store of a private local Ray: the farm's actors return only small statistics.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2
#: Starts of a private local Ray: its raylet has a fixed 30 s to register, which a loaded 2-core
#: machine can miss.
LOCAL_START_ATTEMPTS = 2

log = logging.getLogger("farm")


def _kill_ray_children() -> None:
    """SIGKILL this process's child processes that are Ray's (Linux /proc; elsewhere nothing)."""
    import os
    import signal
    from pathlib import Path

    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if (
                stat.read_text().rsplit(")", 1)[1].split()[1] == me
                and b"ray" in (stat.parent / "cmdline").read_bytes()
            ):
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue


def ray_connected() -> bool:
    """Whether this process is connected to Ray, without importing it (~0.6 s).

    Not imported means not connected.
    """
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def shutdown_ray() -> None:
    """``ray.shutdown()``, with the autoscaler monitor of a Ray this process started killed first.

    Why: Ray stops its node's processes one at a time, each with SIGTERM and up to 1 s of grace;
    the monitor of a private local cluster (nothing to scale) never exits within it, so every
    `farm simulate` spent ~1 s of its exit waiting on it. SIGKILL loses nothing there: it keeps
    no state. A Ray joined by address is not this process's to kill: only processes the node
    object started itself are listed in ``all_processes``.
    """
    import ray

    try:
        from ray._private import ray_constants, worker

        node = worker._global_node
        if node is not None and ray_constants.PROCESS_TYPE_MONITOR in node.all_processes:
            node.kill_monitor(check_alive=False)
    except Exception:  # another Ray's internals: shut down the slow way
        pass
    ray.shutdown()


def connect_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    quiet: bool = True,
    log_level: int = logging.WARNING,
    object_store_memory: int | None = LOCAL_OBJECT_STORE_BYTES,
    configure_logging: bool = True,
) -> bool:
    """Connect this process to Ray unless it already is.

    Args:
        address: a cluster (``auto``, ``host:port``, ``ray://host:10001``); None or ``local``
            starts a fresh cluster bound to 127.0.0.1, which never joins a `ray start` cluster
            that happens to run on this machine.
        num_cpus: CPUs of a local cluster (default: all); not allowed with a cluster address.
        quiet: keep worker stdout/stderr off this process's terminal.
        log_level: level of Ray's own loggers in this process.
        object_store_memory: object store bytes of a local cluster (None: Ray's default).
        configure_logging: let Ray configure this process's root logging (the farm's CLI); False
            leaves the caller's logging alone and only sets Ray's own level (trainer, server).

    Returns:
        True if this call started or joined Ray (the caller may shut it down), False if Ray was
        already initialised in this process.

    Raises:
        FarmInputError: ``num_cpus`` given together with a cluster address.
        FarmError: Ray could not be reached or started.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": not quiet,
        "configure_logging": configure_logging,
    }
    if configure_logging:
        kwargs["logging_level"] = log_level
    else:
        kwargs["logging_config"] = ray.LoggingConfig(log_level=logging.getLevelName(log_level))
    if address is None or address == "local":
        address = "local"
        # Ray turns token authentication on for a new local cluster and warns at every start that it
        # did so by default: keep it on, keep that one line off the user's terminal.
        logging.getLogger(_AUTH_LOGGER).addFilter(_drop_auth_default_notice)
        kwargs["_node_ip_address"] = "127.0.0.1"
        if object_store_memory is not None:
            kwargs["object_store_memory"] = int(object_store_memory)
        if num_cpus is not None:
            kwargs["num_cpus"] = int(num_cpus)
    elif num_cpus is not None:
        raise FarmInputError(
            f"num_cpus={num_cpus} only sizes a local Ray; omit it with address={address!r}"
        )
    attempts = LOCAL_START_ATTEMPTS if address == "local" else 1
    for attempt in range(attempts):
        try:
            ray.init(address=address, **kwargs)
            return True
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise FarmError(
                f"cannot connect to Ray at address={address!r}: {str(e).splitlines()[0]}"
            ) from None
        except (
            Exception
        ) as e:  # Ray raises a bare Exception when its raylet misses the fixed 30 s start window
            ray.shutdown()
            # the half-started node (GCS, raylet) is not Ray's to shut down: it never got a handle
            _kill_ray_children()
            if "timed out during startup" not in str(e) or attempt + 1 == attempts:
                raise FarmError(
                    f"Ray at address={address!r} did not start ({str(e).splitlines()[0]}); "
                    "is the machine overloaded? retry, or join a running cluster with --address"
                ) from None
            log.warning(
                "the local Ray missed its 30 s start window (a loaded machine); starting it again"
            )
        except (
            BaseException
        ):  # Ctrl-C or SIGTERM mid-start: ray.init never returned a handle to the node it began
            if address == "local":
                ray.shutdown()
                _kill_ray_children()
            raise
    return True
