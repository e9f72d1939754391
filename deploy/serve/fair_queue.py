"""Which request the replica's model thread serves next, and which one a full replica sheds.

Why: a replica has one model thread and a bounded queue. First come, first served lets 48 clients
that each ask for 10,000 draws keep the queue full, so a scientist asking for 1,000 draws is shed
like them (docs/performance.md, "Load run"). Here the queue is ordered by *least recent usage*: each
client's model cost (the draws of its passes so far, decayed with a half-life, plus what it has
waiting ahead of the request) decides its place, so a light client goes before heavy ones, and
heavy clients take turns among themselves. A full queue
sheds the newest waiting request of the client with the most load (usage plus what it has waiting),
and only for a newcomer whose client would still carry less, so a light client is never shed while
a heavier one holds a place. Unseeded /sample requests that wait at the same time share one
forward pass (continuous batching): the next request in line takes along waiting requests that ask
for at most as many draws, up to a draw budget per pass, so a small request never waits for a large
one's pass, and no pass is so large that a light newcomer waits long for the model thread.

Clients are told apart by the ``X-Client-Id`` header (a gateway can set it from an API key), else by
their address. Pure asyncio: no Serve, no torch, so its rules are tested directly.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Decay of a client's recorded usage: what it was granted a minute ago counts a quarter.
USAGE_HALF_LIFE_S = 30.0


class QueueFull(Exception):
    """The replica's queue is full and the request's client is the heaviest user waiting."""


@dataclass(eq=False)
class Entry:
    """One admitted request waiting for (or holding) the model thread."""

    client: str
    cost: float
    seq: int
    future: asyncio.Future
    admitted: float
    call: Callable[[], Any] | None = None  # run alone: seeded /sample, /log_prob, /predictive
    num_samples: int = 0  # unseeded /sample: may share a pass with requests asking no more draws
    payload: Any = None
    running: bool = field(default=False)


class FairModelQueue:
    """A bounded, least-recent-usage-first queue in front of one model thread.

    Args:
        capacity: requests admitted at once (waiting or running); more are shed.
        run: runs a zero-argument callable on the model thread (returns an awaitable of its result).
        run_batch: runs a list of batch payloads as one pass; returns one result per payload.
        max_batch_size: most requests in one pass.
        max_pass_draws: most draws in one pass (a single larger request still gets its own pass).
        batch_wait_s: under load, how long the oldest batchable request waits for batch mates.
        half_life_s: decay of each client's recorded usage.
        clock: monotonic seconds (a test passes its own).
    """

    def __init__(
        self,
        capacity: int,
        run: Callable[[Callable[[], Any]], Any],
        run_batch: Callable[[list[Any]], Any],
        max_batch_size: int = 1,
        max_pass_draws: int = 16_000,
        batch_wait_s: float = 0.0,
        half_life_s: float = USAGE_HALF_LIFE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or max_batch_size < 1:
            raise ValueError(
                f"capacity={capacity} and max_batch_size={max_batch_size} must be >= 1"
            )
        self.capacity = capacity
        self.max_batch_size = max_batch_size
        self.max_pass_draws = max_pass_draws
        self.batch_wait_s = batch_wait_s
        self._run, self._run_batch = run, run_batch
        self._rate = math.log(2.0) / half_life_s
        self._clock = clock
        self._usage: dict[
            str, tuple[float, float]
        ] = {}  # client -> (usage, when it was last updated)
        self._entries: list[Entry] = []
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        """Admitted requests, waiting or running."""
        return len(self._entries)

    def usage(self, client: str, now: float | None = None) -> float:
        """The client's decayed model cost of the passes granted so far (draws), at ``now``."""
        value, when = self._usage.get(client, (0.0, 0.0))
        return value * math.exp(
            -self._rate * max((self._clock() if now is None else now) - when, 0.0)
        )

    def _charge(self, client: str, cost: float) -> None:
        now = self._clock()
        self._usage[client] = (self.usage(client, now) + cost, now)
        if len(self._usage) > 10_000:  # forget the lightest clients; their usage has decayed anyway
            for name in sorted(self._usage, key=lambda c: self.usage(c, now))[:5_000]:
                del self._usage[name]

    def load(self, client: str, now: float) -> float:
        """Usage plus the cost of the client's waiting requests: what a full queue sheds by."""
        return self.usage(client, now) + sum(
            e.cost for e in self._entries if e.client == client and not e.running
        )

    # ------------------------------------------------------------------ admission
    def submit(
        self,
        client: str,
        cost: float,
        *,
        call: Callable[[], Any] | None = None,
        batch: tuple[int, Any] | None = None,
    ) -> Entry:
        """Admit one request, shedding the heaviest client's waiting request if the queue is full.

        Args:
            client: who asks (``X-Client-Id`` or the address).
            cost: what the request asks of the model, in draws.
            call: the model work of a request that runs alone.
            batch: ``(num_samples, payload)`` of a request that may share a pass.

        Returns:
            The entry; await ``entry.future`` for its result (``run``'s, or its item of
            ``run_batch``'s).

        Raises:
            QueueFull: the queue is full and no waiting request belongs to a client with more load
                than this client would carry with the request.
        """
        if (call is None) == (batch is None):
            raise ValueError("give exactly one of call= and batch=")
        if len(self._entries) >= self.capacity:
            now = self._clock()
            loads = {
                c: self.load(c, now) for c in {e.client for e in self._entries if not e.running}
            }
            heaviest = max(
                (e for e in self._entries if not e.running),
                key=lambda e: (loads[e.client], e.seq),
                default=None,
            )
            if heaviest is None or loads[heaviest.client] <= self.load(client, now) + cost:
                raise QueueFull(
                    f"replica busy: {len(self._entries)} requests wait for the model "
                    f"(limit {self.capacity})"
                )
            self._drop(heaviest)
            heaviest.future.set_exception(
                QueueFull(
                    f"shed for a lighter client: {len(self._entries) + 1} requests wait "
                    f"(limit {self.capacity})"
                )
            )
        loop = asyncio.get_running_loop()
        entry = Entry(
            client=client,
            cost=float(cost),
            seq=next(self._seq),
            future=loop.create_future(),
            admitted=self._clock(),
            call=call,
        )
        if batch is not None:
            entry.num_samples, entry.payload = batch
        self._entries.append(entry)
        self._ensure_worker(loop)
        assert self._wake is not None
        self._wake.set()
        return entry

    def withdraw(self, entry: Entry) -> bool:
        """Take a request not yet started out of the queue (deadline passed); False if it runs."""
        if entry.running or entry not in self._entries:
            return False
        self._drop(entry)
        return True

    def _drop(self, entry: Entry) -> None:
        self._entries.remove(entry)

    # ------------------------------------------------------------------ the model thread's turn
    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._serve_forever())

    def finish_tags(self) -> dict[Entry, float]:
        """Each waiting request's place in line: its client's usage plus its own and its older
        waiting requests' cost.

        This is the usage the client would have once the request is served (a virtual finish time,
        as in fair queueing), so among clients that were never served a small request still goes
        before a large one, and a client's backlog counts against its later requests.
        """
        now = self._clock()
        tags: dict[Entry, float] = {}
        ahead: dict[str, float] = {}
        for e in sorted((e for e in self._entries if not e.running), key=lambda e: e.seq):
            ahead[e.client] = ahead.get(e.client, self.usage(e.client, now)) + e.cost
            tags[e] = ahead[e.client]
        return tags

    def next_group(self) -> list[Entry]:
        """The next pass: the request with the lowest finish tag, plus mates that ask no more draws.

        Mates join while the pass holds at most ``max_batch_size`` requests and ``max_pass_draws``
        draws: one pass is not preempted, so its size bounds how long a light newcomer waits, and a
        pass of large requests gains little from batching on a CPU (docs/performance.md).
        """
        tags = self.finish_tags()
        waiting = sorted(tags, key=lambda e: (tags[e], e.seq))
        if not waiting:
            return []
        head = waiting[0]
        if head.call is not None or self.max_batch_size == 1:
            return [head]
        group, draws = [head], head.num_samples
        for e in waiting[1:]:
            if len(group) == self.max_batch_size:
                break
            if (
                e.call is None
                and e.num_samples <= head.num_samples
                and draws + e.num_samples <= self.max_pass_draws
            ):
                group.append(e)
                draws += e.num_samples
        return group

    def _worth_waiting(self, group: list[Entry]) -> bool:
        """A batchable pass not yet full waits for mates: only under load, ``batch_wait_s`` long."""
        if group[0].call is not None or len(group) >= self.max_batch_size or len(self._entries) < 2:
            return False
        return self._clock() < group[0].admitted + self.batch_wait_s

    async def _serve_forever(self) -> None:
        assert self._wake is not None
        while True:
            group = self.next_group()
            if not group:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._worth_waiting(group):
                await asyncio.sleep(group[0].admitted + self.batch_wait_s - self._clock())
                continue  # the line may have changed meanwhile
            for e in group:
                e.running = True
                self._charge(e.client, e.cost)
            try:
                if group[0].call is not None:
                    results: list[Any] = [await self._run(group[0].call)]
                else:
                    results = list(await self._run_batch([e.payload for e in group]))
            except Exception as error:  # the call itself failed: every request of the pass gets it
                results = [error] * len(group)
            if len(results) != len(group):  # never strand a request marked running
                results = [
                    RuntimeError(f"a pass of {len(group)} requests returned {len(results)} answers")
                ] * len(group)
            for e, result in zip(group, results, strict=True):
                if e in self._entries:
                    self._drop(e)
                if e.future.done():  # its deadline passed while it ran
                    continue
                if isinstance(result, BaseException):
                    e.future.set_exception(result)
                else:
                    e.future.set_result(result)
