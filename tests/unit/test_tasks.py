"""`count_tasks`: every trio task of the run, nested nurseries included, counted exactly."""

from __future__ import annotations

import trio
import trio.testing

from hubd.tasks import count_tasks


async def test_counts_started_and_finished_tasks_exactly() -> None:
    before = count_tasks()
    assert before >= 1  # at least this test's own task
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(release.wait)
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == before + 5
        release.set()
    assert count_tasks() == before


async def test_counts_tasks_in_nested_nurseries() -> None:
    release = trio.Event()

    async def parent(children: int) -> None:
        async with trio.open_nursery() as inner:
            for _ in range(children):
                inner.start_soon(release.wait)

    before = count_tasks()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parent, 3)
        nursery.start_soon(parent, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == before + 2 + 3 + 2
        release.set()
    assert count_tasks() == before


async def test_counts_below_a_given_task() -> None:
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(release.wait)
        await trio.testing.wait_all_tasks_blocked()
        me = trio.lowlevel.current_task()
        assert count_tasks(me) == 1 + 4
        assert count_tasks() > count_tasks(me)  # the root also holds trio's system tasks
        release.set()
