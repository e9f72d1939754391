"""One writer per store: a lock object beside the store, with owner, heartbeat and a unique token.

Why beside (``<out>.lock``) and not inside: the lock must exist before creation touches the store
path at all, so two runs racing to create one new store cannot both start. The lock is created
atomically where the filesystem allows it (local: a fully written temporary file hard-linked into
place, which fails if the lock exists; fsspec: ``open(path, "xb")``), else written and read back
to check the token. A heartbeat thread refreshes it every few seconds. A lock whose owner is dead
(same host, pid gone or reused) or whose heartbeat is stale is taken over with a warning; any
other is refused with a ``StoreLocked`` naming the owner and ``--break-lock``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from farm.errors import FarmInputError
from farm.store.paths import filesystem, is_remote, lock_url

log = logging.getLogger("farm")
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


class StoreLocked(FarmInputError):
    """Another live run holds the store's lock."""


@dataclass(frozen=True, slots=True)
class LockOwner:
    """What the lock object records (JSON)."""

    host: str
    pid: int
    started_at: str
    heartbeat: float  # wall-clock seconds since the epoch: other hosts compare it with theirs
    token: str
    proc_start: str = ""  # /proc start time: a reused pid is not the owner

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        return f"{self.host} pid {self.pid} (since {self.started_at}, heartbeat {age:.0f} s ago)"


def _proc_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """Hold the lock of the store at ``url`` while a run writes it (a context manager).

    Args:
        break_lock: take the lock even from a live owner (``--break-lock``).
        stale_after_s: heartbeat age after which an owner on another host counts as gone.
    """

    def __init__(
        self,
        url: str,
        *,
        break_lock: bool = False,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.store_url, self.url = url, lock_url(url)
        self.break_lock, self.stale_after_s, self.heartbeat_s = (
            break_lock,
            stale_after_s,
            heartbeat_s,
        )
        self.fs, self.path = filesystem(self.url)
        self.owner = LockOwner(
            socket.gethostname(),
            os.getpid(),
            datetime.now(UTC).isoformat(timespec="seconds"),
            time.time(),
            uuid.uuid4().hex,
            _proc_start(os.getpid()),
        )
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> StoreLock:
        for _ in range(5):
            try:
                created = self._try_create()
            except OSError as e:
                raise FarmInputError(
                    f"lock {self.url!r} of the store cannot be written: {e.strerror or e}; "
                    "choose a writable --out"
                ) from None
            if created:
                self._thread = threading.Thread(
                    target=self._beat, name="farm-lock-heartbeat", daemon=True
                )
                self._thread.start()
                return self
            held = self._read()
            reason = "--break-lock given" if self.break_lock else self._gone_reason(held)
            if reason is None:
                who = held.describe() if held else "an unreadable lock"
                raise StoreLocked(
                    f"store={self.store_url!r} is being written by {who}; wait for that run, "
                    f"or pass --break-lock if it is gone (lock {self.url})"
                )
            log.warning(
                "taking over the lock of %s from %s: %s",
                self.store_url,
                held.describe() if held else "an unreadable lock",
                reason,
            )
            self._remove_if(held)
        raise StoreLocked(
            f"store={self.store_url!r}: could not take its lock {self.url} after 5 tries; "
            "another run keeps taking it"
        )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        held = self._read()
        if held is not None and held.token == self.owner.token:
            self.fs.rm(self.path)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------------ internals
    def _payload(self) -> bytes:
        return json.dumps(asdict(self.owner)).encode()

    def _try_create(self) -> bool:
        """Create the lock atomically; False if it exists."""
        if not is_remote(self.url):
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            tmp = f"{self.path}.{self.owner.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(self._payload())
            try:
                os.link(
                    tmp, self.path
                )  # atomic, fails if the lock exists; content already complete
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(self._payload())
        except FileExistsError:
            return False
        except (
            ValueError,
            NotImplementedError,
            TypeError,
        ):  # no exclusive create: write, then read back
            if self.fs.exists(self.path):
                return False
            self.fs.pipe(self.path, self._payload())
            time.sleep(0.2)
        held = self._read()
        return held is not None and held.token == self.owner.token

    def _read(self) -> LockOwner | None:
        try:
            data = json.loads(self.fs.cat_file(self.path))
            return LockOwner(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, OSError):
            return None

    def _gone_reason(self, held: LockOwner | None) -> str | None:
        """Why the holder counts as gone, or None if it may still be running."""
        if held is None:
            return (
                None
                if self.fs.exists(self.path) and self._age_of_file() < self.stale_after_s
                else "lock unreadable and old, or vanished"
            )
        if held.host == self.owner.host:
            if not _pid_alive(held.pid):
                return f"pid {held.pid} no longer runs on {held.host}"
            if held.proc_start and _proc_start(held.pid) not in ("", held.proc_start):
                return f"pid {held.pid} now belongs to another process"
        age = time.time() - held.heartbeat
        if age > self.stale_after_s:
            return f"heartbeat {age:.0f} s old (stale after {self.stale_after_s:.0f} s)"
        return None

    def _age_of_file(self) -> float:
        try:
            modified = self.fs.modified(self.path)
            return time.time() - modified.timestamp()
        except (OSError, NotImplementedError, AttributeError):
            return 0.0

    def _remove_if(self, held: LockOwner | None) -> None:
        """Remove the lock only if it is still the one judged gone (another run may hold it now)."""
        again = self._read()
        if (again is None and held is None) or (
            again is not None and held is not None and again.token == held.token
        ):
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                held = self._read()
                if held is None or held.token != self.owner.token:
                    self.lost = True
                    log.warning(
                        "lost the lock of %s to %s",
                        self.store_url,
                        held.describe() if held else "nobody",
                    )
                    return
                self.owner = LockOwner(**{**asdict(self.owner), "heartbeat": time.time()})
                self._write_over()
            except OSError as e:  # a flaky filesystem: try again at the next beat
                log.warning("lock heartbeat of %s failed: %s", self.store_url, e)

    def _write_over(self) -> None:
        """Refresh the lock in one atomic step (local: write a temporary file, then rename over)."""
        if is_remote(self.url):
            self.fs.pipe(self.path, self._payload())
            return
        tmp = f"{self.path}.{self.owner.token}.tmp"
        with open(tmp, "wb") as f:
            f.write(self._payload())
        os.replace(tmp, self.path)
