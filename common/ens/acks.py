"""Acks received, handed to the publisher's handler: the same on every adapter.

A message holds one ack or several (a subscriber gathers the acks it sends together to a
publisher that takes them so: its RENL request says ``batch_acks``). Each goes to the
handler, those of one message all at once (the publisher applies acks in batches). One
that is not valid, or that the handler fails on, is dropped with a log line; the others
still count, and the publisher's RENL timeout sends the notification of a dropped one again.
A message with an ack the handler failed on is rejected on AMQP, so that the broker's
dead-letter policy keeps a copy for inspection (deploy/README.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from common.ens.abc import AckHandler
from common.ens.envelope import Ack, EnvelopeError, acks_from_json

log = logging.getLogger(__name__)


async def hand_over(body: bytes | Ack, handler: AckHandler, *, redelivered: bool = False) -> bool:
    """Decode ``body`` (an :class:`Ack` as it is) and hand each of its acks to ``handler``;
    False when the handler failed on one of them.

    ``redelivered``: the message came before and may have been applied already. Never raises
    for a bad message or a failing handler; cancellation goes through.
    """
    if isinstance(body, Ack):
        acks = [body]
    else:
        try:
            acks, errors = acks_from_json(body)
        except EnvelopeError as exc:
            log.warning("dropped an invalid ack: %s", exc)
            return True
        for problem in errors:
            log.warning("dropped an invalid ack: %s", problem)
    if redelivered:
        acks = [dataclasses.replace(ack, redelivered=True) for ack in acks]
    if len(acks) == 1:
        results: list[Exception | None] = [await _guarded(handler, acks[0])]
    else:
        results = await asyncio.gather(*(_guarded(handler, ack) for ack in acks))
    for ack, error in zip(acks, results, strict=True):
        if error is not None:
            log.error("ack handler failed on renl_id=%s; ack dropped", ack.renl_id, exc_info=error)
    return not any(results)


async def _guarded(handler: AckHandler, ack: Ack) -> Exception | None:
    try:
        await handler(ack)
    except Exception as exc:  # noqa: BLE001 - logged by hand_over with the ack it failed on
        return exc
    return None
