"""What every adapter does with a message that is not a valid notification envelope."""

from __future__ import annotations

import logging

from common.ens.abc import Bus, BusError
from common.ens.envelope import Ack, AckStatus, EnvelopeError, renl_of

log = logging.getLogger(__name__)


async def reject_poison(bus: Bus, body: bytes, error: EnvelopeError) -> None:
    """Drop an invalid notification, acking it ``failed`` when its RENL is readable.

    Never raises for a bus problem: the message is dropped either way, and a lost
    ``failed`` ack only means the publisher's RENL timeout fires and it resends.
    """
    renl = renl_of(body)
    log.warning("dropped an invalid notification (%s); renl=%s", error, renl.renl_id if renl else None)
    if renl is not None:
        try:
            await bus.send_ack(renl.ack_to, Ack(renl.renl_id, AckStatus.FAILED, f"invalid notification: {error}"))
        except BusError as exc:
            log.warning("could not ack the invalid notification %s: %s", renl.renl_id, exc)
