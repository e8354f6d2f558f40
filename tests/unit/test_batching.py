"""Batcher and GroupCommit: calls that arrive together are applied together."""

from __future__ import annotations

import asyncio
import threading

import pytest

from common.batching import Batcher, GroupCommit


class Recorder:
    """An ``apply`` that records its batches (and can be told to fail one)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail_next = False
        self.threads: set[int] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.get_ident())
        self.batches.append(items)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("database gone")
        return [item * 10 for item in items]


async def test_calls_that_arrive_together_share_a_batch_and_each_gets_its_own_result() -> None:
    apply = Recorder()
    commit: GroupCommit[int, int] = GroupCommit(apply, name="test")
    results = await asyncio.gather(*(commit.submit(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert apply.batches == [list(range(50))]
    assert commit.batches == 1
    assert threading.get_ident() not in apply.threads  # applied in a worker thread


async def test_a_batch_is_at_most_max_batch_and_the_rest_follow() -> None:
    apply = Recorder()
    commit: GroupCommit[int, int] = GroupCommit(apply, name="test", max_batch=20)
    await asyncio.gather(*(commit.submit(i) for i in range(50)))
    assert [len(batch) for batch in apply.batches] == [20, 20, 10]


async def test_calls_made_while_a_batch_runs_form_the_next_one() -> None:
    apply = Recorder()
    commit: GroupCommit[int, int] = GroupCommit(apply, name="test", linger=0.0)
    first = asyncio.create_task(commit.submit(0))
    await asyncio.sleep(0)  # the first batch starts with one call
    rest = [asyncio.create_task(commit.submit(i)) for i in range(1, 6)]
    await asyncio.gather(first, *rest)
    assert apply.batches == [[0], [1, 2, 3, 4, 5]]


async def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_works() -> None:
    apply = Recorder()
    apply.fail_next = True
    commit: GroupCommit[int, int] = GroupCommit(apply, name="test")
    failed = await asyncio.gather(*(commit.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in failed)
    assert await commit.submit(7) == 70


async def test_drain_waits_for_what_was_submitted() -> None:
    apply = Recorder()
    commit: GroupCommit[int, int] = GroupCommit(apply, name="test", linger=0.01)
    tasks = [asyncio.create_task(commit.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    await commit.drain()
    assert all(task.done() for task in tasks)


def test_a_result_count_that_does_not_match_is_an_error() -> None:
    commit: GroupCommit[int, int] = GroupCommit(lambda items: [], name="broken")

    async def submit() -> int:
        return await commit.submit(1)

    with pytest.raises(RuntimeError, match="0 results for a batch of 1"):
        asyncio.run(submit())


async def test_without_linger_a_batch_is_what_arrived_while_the_previous_one_was_applied() -> None:
    """The acks a notifier sends: the first goes at once; those sent while its publish awaits
    the broker's confirm go together in the next."""
    batches: list[list[int]] = []
    confirm = asyncio.Event()

    async def publish(items: list[int]) -> list[None]:
        batches.append(items)
        if len(batches) == 1:
            await confirm.wait()
        return [None] * len(items)

    batcher: Batcher[int, None] = Batcher(publish, name="test", linger=0.0, max_batch=30)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert batches == [[0]]
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 51)]
    await asyncio.sleep(0)
    confirm.set()
    await asyncio.gather(first, *rest)
    assert batches == [[0], list(range(1, 31)), list(range(31, 51))]
    assert batcher.batches == 3
