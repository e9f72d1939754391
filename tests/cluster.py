"""A real multi-node Ray cluster on loopback: `ray start --head` plus `ray start --address` workers.

Each node is a `ray start --block` process (raylet, object store, workers), exactly as on a lab's
cluster, only all on 127.0.0.1. Token authentication stays on (RAY_AUTH_MODE=token).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """All descendant pids of ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def node_id_of(proc: subprocess.Popen) -> str:
    """The Ray node id of a `ray start` process, read from its raylet's command line."""
    for pid in descendants(proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and args[0].endswith("raylet"):
            for arg in args:
                if arg.startswith("--node_id=") or arg.startswith("--node-id="):
                    return arg.split("=", 1)[1]
    raise RuntimeError(f"no raylet with a node id under pid {proc.pid}")


def pids_matching(needle: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


class LoopbackCluster:
    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []

    def _start(self, args: list[str]) -> subprocess.Popen:
        cmd = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            *args,
        ]
        proc = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.nodes.append(proc)
        return proc

    def start_head(self, num_cpus: int = 1) -> None:
        self._start(
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={num_cpus}",
                "--include-dashboard=false",
                "--resources",
                json.dumps({"head_node": 1}),
            ]
        )
        self.wait_for_nodes(1)

    def add_worker(self, num_cpus: int = 1) -> subprocess.Popen:
        """Start a worker node and wait until the cluster lists it (by its own node id, so a node
        killed just before, which the cluster may still list for a while, does not count)."""
        proc = self._start(
            [
                f"--address={self.address}",
                f"--num-cpus={num_cpus}",
                "--resources",
                json.dumps({"worker_node": 1}),
            ]
        )
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if node_id_of(proc) in self.active_nodes():
                    return proc
            except RuntimeError:  # its raylet is not up yet
                pass
            time.sleep(1.0)
        raise RuntimeError(f"worker node (pid {proc.pid}) did not join in 600 s")

    def active_nodes(self) -> list[str]:
        """Node ids `ray status` lists as active (none while it cannot answer)."""
        try:
            res = subprocess.run(
                [str(BIN / "ray"), "status", f"--address={self.address}"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:  # a loaded machine: ask again until the caller's cap
            return []
        if res.returncode != 0:
            return []
        active = res.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return [
            word.removeprefix("node_")
            for line in active.splitlines()
            for word in line.split()
            if word.startswith("node_")
        ]

    def count_nodes(self) -> int:
        return len(self.active_nodes())

    def wait_for_nodes(self, n: int, timeout: float = 600.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.count_nodes() >= n:
                return
            time.sleep(1.0)
        raise RuntimeError(f"cluster did not reach {n} nodes in {timeout} s")

    def kill_node(self, proc: subprocess.Popen) -> None:
        """Abrupt node loss: SIGKILL its raylet, object store and workers, then the launcher."""
        for pid in reversed(descendants(proc.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait()
        self.nodes.remove(proc)

    def shutdown(self) -> None:
        for proc in reversed(self.nodes):
            proc.send_signal(signal.SIGTERM)
        for proc in self.nodes:
            # a healthy node stops in a few seconds; one holding a detached Serve app may not stop
            # at all
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for pid in descendants(proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.kill()
        self.nodes.clear()
