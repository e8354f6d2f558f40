"""Group commit: calls that arrive together are applied together, in one call.

A service that writes one row per message (an ack applied, a delivery recorded) pays a
transaction, a thread hop and a connection checkout per message; one that publishes a
message per ack pays the broker for each. :class:`Batcher` queues the calls instead: the
first starts a batch, which waits ``linger`` seconds for company and then awaits
``apply`` on everything queued (up to ``max_batch``); calls that arrive meanwhile form
the next batch. Under load that is one transaction (or message) per batch; alone, a call
is a batch of one. Each caller gets its own item's result, or the batch's exception.
:class:`GroupCommit` runs a blocking ``apply`` (database work) in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """``await submit(item)`` → ``(await apply([... item ...]))[its index]``; see the module doc."""

    def __init__(
        self,
        apply: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        name: str,
        linger: float = 0.002,
        max_batch: int = 500,
    ) -> None:
        self._apply = apply
        self._name = name
        self.linger = linger
        self.max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # batches applied so far, for tests and benchmarks

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=self._name)
        return await future

    async def drain(self) -> None:
        """Wait until every call submitted so far has been applied."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._pending:
            if self.linger:
                await asyncio.sleep(self.linger)
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self.batches += 1
            try:
                results = await self._apply([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self._name}: {len(results)} results for a batch of {len(batch)}")
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                for _item, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_item, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class GroupCommit(Batcher[T, R]):
    """A :class:`Batcher` whose ``apply`` blocks (a database transaction): it runs in a worker thread."""

    def __init__(
        self, apply: Callable[[list[T]], Sequence[R]], *, name: str, linger: float = 0.002, max_batch: int = 500
    ) -> None:
        async def in_thread(items: list[T]) -> Sequence[R]:
            return await asyncio.to_thread(apply, items)

        super().__init__(in_thread, name=name, linger=linger, max_batch=max_batch)
