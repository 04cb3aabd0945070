"""The pixel budget on its own: room is taken and given back exactly, waiters are served
in arrival order, and a waiter that gives up (its request's deadline) leaves no pixels
behind, whether it left before or just as it was granted room."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sightwise.serve.budget import Hold, PixelBudget


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_waiters_are_served_in_arrival_order_and_threads_give_back():
    async def main():
        b = PixelBudget(100)
        assert b.try_take(80)
        order = []

        async def want(name, n):
            await b.take(n)
            order.append(name)

        big = asyncio.create_task(want("big", 95))
        await asyncio.sleep(0)
        small = asyncio.create_task(want("small", 10))  # fits now, but queues behind big
        await asyncio.sleep(0)
        assert b.waiting == 2 and not b.try_take(1) and order == []
        threading.Thread(target=b.give, args=(80,)).start()  # a decode thread finishing
        await big
        await asyncio.sleep(0)
        assert order == ["big"] and b.in_use == 95 and b.waiting == 1  # 95 + 10 > 100
        b.give(95)
        await small
        assert order == ["big", "small"] and b.in_use == 10
        b.give(10)
        assert b.in_use == 0 and b.waiting == 0

    run(main())


@pytest.mark.parametrize("granted_first", [False, True])
def test_a_waiter_that_gives_up_leaves_the_budget_as_it_was(granted_first):
    async def main():
        b = PixelBudget(100)
        assert b.try_take(100)
        task = asyncio.create_task(b.take(60))
        await asyncio.sleep(0)
        assert b.waiting == 1
        if granted_first:
            b.give(100)  # room is granted (delivery scheduled) ...
        task.cancel()  # ... and the request gives up in the same moment
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # let a scheduled delivery run
        assert b.waiting == 0
        assert b.in_use == (0 if granted_first else 100)

    run(main())


def test_an_image_larger_than_the_budget_takes_all_of_it():
    b = PixelBudget(100)
    assert b.try_take(500) and b.in_use == 100 and not b.try_take(1)
    b.give(500)
    assert b.in_use == 0


def test_a_hold_is_given_back_once_by_whoever_ends_it():
    b = PixelBudget(100)
    assert b.try_take(40)
    unused = Hold(b, 40)
    unused.abandon()  # the request gave up before a thread started
    assert b.in_use == 0 and not unused.claim()
    assert b.try_take(40)
    used = Hold(b, 40)
    assert used.claim()
    used.abandon()  # a thread runs with it: only the thread gives it back
    assert b.in_use == 40
    used.release()
    used.release()
    assert b.in_use == 0
