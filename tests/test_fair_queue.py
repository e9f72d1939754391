"""The replica's fair queue: a light client is served before heavy ones and is never the one shed.

These drive ``deploy.serve.fair_queue.FairModelQueue`` with a model call that waits on an event,
so the order of service is observed exactly; the Serve app's use of it is tested in test_serve.py.
"""

from __future__ import annotations

import asyncio

import pytest

from deploy.serve.fair_queue import FairModelQueue, QueueFull


class Model:
    """A one-thread model whose calls finish only when the test releases them; records the order."""

    def __init__(self) -> None:
        self.order: list[object] = []
        self.release = asyncio.Event()

    async def run(self, call):
        await self.release.wait()
        self.release.clear()
        result = call()
        self.order.append(result)
        return result

    async def run_batch(self, payloads):
        await self.release.wait()
        self.release.clear()
        self.order.append(tuple(payloads))
        return [f"draws for {p}" for p in payloads]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_light_client_goes_before_a_heavy_clients_backlog():
    async def scenario():
        model = Model()
        queue = FairModelQueue(capacity=8, run=model.run, run_batch=model.run_batch)
        heavy = [queue.submit("heavy", 10_000, call=lambda k=k: f"heavy{k}") for k in range(5)]
        await settle()  # heavy0 is on the model thread now
        light = queue.submit("light", 1_000, call=lambda: "light")
        for _ in range(6):
            model.release.set()
            await settle()
        await asyncio.gather(*(e.future for e in [*heavy, light]))
        return model.order

    order = asyncio.run(scenario())
    assert order == ["heavy0", "light", "heavy1", "heavy2", "heavy3", "heavy4"]


def test_heavy_clients_take_turns_by_their_usage():
    async def scenario():
        model = Model()
        queue = FairModelQueue(capacity=8, run=model.run, run_batch=model.run_batch)
        a = [queue.submit("a", 5_000, call=lambda k=k: f"a{k}") for k in range(3)]
        b = [queue.submit("b", 5_000, call=lambda k=k: f"b{k}") for k in range(3)]
        for _ in range(6):
            await settle()
            model.release.set()
        await asyncio.gather(*(e.future for e in [*a, *b]))
        return model.order

    order = asyncio.run(scenario())
    # b arrived after all of a's requests, yet the two alternate: each pass goes to the one served
    # less
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_a_full_queue_sheds_the_heaviest_clients_waiting_request_not_the_light_one():
    async def scenario():
        model = Model()
        queue = FairModelQueue(capacity=3, run=model.run, run_batch=model.run_batch)
        flood = [queue.submit(f"flood{k}", 10_000, call=lambda k=k: f"flood{k}") for k in range(3)]
        await settle()
        with pytest.raises(
            QueueFull, match="limit 3"
        ):  # a fourth heavy client is no lighter than those waiting
            queue.submit("flood3", 10_000, call=lambda: "flood3")
        light = queue.submit(
            "light", 1_000, call=lambda: "light"
        )  # admitted: flood2 (the newest heaviest) makes room
        with pytest.raises(QueueFull, match="lighter client"):
            await flood[2].future
        assert len(queue) == 3
        for _ in range(3):
            model.release.set()
            await settle()
        return [await e.future for e in (flood[0], light, flood[1])], model.order

    answers, order = asyncio.run(scenario())
    assert (
        answers == order == ["flood0", "light", "flood1"]
    )  # neither client was served yet: the smaller request first


def test_waiting_samples_share_a_pass_but_never_one_asking_more_draws():
    async def scenario():
        model = Model()
        queue = FairModelQueue(
            capacity=16, run=model.run, run_batch=model.run_batch, max_batch_size=3
        )
        first = queue.submit("c", 100, batch=(100, "first"))
        await settle()  # alone on an idle model: a pass of one
        small = [queue.submit("c", 1_000, batch=(1_000, f"small{k}")) for k in range(4)]
        big = queue.submit("c", 10_000, batch=(10_000, "big"))
        for _ in range(4):
            model.release.set()
            await settle()
        await asyncio.gather(*(e.future for e in [first, *small, big]))
        return model.order, small[0].future.result()

    order, answer = asyncio.run(scenario())
    assert order == [("first",), ("small0", "small1", "small2"), ("small3",), ("big",)]
    assert answer == "draws for small0"


def test_a_pass_holds_at_most_max_pass_draws_so_a_newcomer_never_waits_behind_a_huge_one():
    async def scenario():
        model = Model()
        queue = FairModelQueue(
            capacity=64,
            run=model.run,
            run_batch=model.run_batch,
            max_batch_size=16,
            max_pass_draws=20_000,
        )
        first = queue.submit("h0", 100, batch=(100, "first"))
        await settle()
        heavy = [queue.submit(f"h{k}", 10_000, batch=(10_000, f"heavy{k}")) for k in range(1, 6)]
        huge = queue.submit("h9", 50_000, batch=(50_000, "huge"))
        light = queue.submit("light", 1_000, batch=(1_000, "light"))
        for _ in range(6):
            model.release.set()
            await settle()
        await asyncio.gather(*(e.future for e in [first, *heavy, huge, light]))
        return model.order

    order = asyncio.run(scenario())
    # clients never served: the light request first; then two 10k requests per pass; the 50k one
    # alone, last
    assert order == [
        ("first",),
        ("light",),
        ("heavy1", "heavy2"),
        ("heavy3", "heavy4"),
        ("heavy5",),
        ("huge",),
    ]


def test_a_withdrawn_request_is_never_run_and_a_failed_call_reaches_only_its_request():
    async def scenario():
        model = Model()
        queue = FairModelQueue(capacity=4, run=model.run, run_batch=model.run_batch)
        running = queue.submit("a", 1, call=lambda: "running")
        await settle()
        late = queue.submit("a", 1, call=lambda: "late")
        bad = queue.submit("b", 1, call=lambda: 1 / 0)
        assert queue.withdraw(late) and not queue.withdraw(running)
        late.future.cancel()
        for _ in range(2):
            model.release.set()
            await settle()
        with pytest.raises(ZeroDivisionError):
            await bad.future
        return await running.future, model.order, len(queue)

    answer, order, left = asyncio.run(scenario())
    assert answer == "running" and order == ["running"] and left == 0


def test_usage_decays_with_the_half_life():
    now = [0.0]
    queue = FairModelQueue(
        capacity=2, run=None, run_batch=None, half_life_s=30.0, clock=lambda: now[0]
    )  # type: ignore[arg-type]
    queue._charge("a", 1000.0)
    now[0] = 60.0
    assert queue.usage("a") == pytest.approx(250.0, rel=1e-12)
    assert queue.usage("never-seen") == 0.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="capacity=0"):
        FairModelQueue(capacity=0, run=None, run_batch=None)  # type: ignore[arg-type]

    async def both():
        FairModelQueue(capacity=1, run=None, run_batch=None).submit(
            "a", 1, call=lambda: 1, batch=(1, 1)
        )  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="exactly one"):
        asyncio.run(both())
