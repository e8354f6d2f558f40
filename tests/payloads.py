"""A sample alarm payload for notifyd tests, and the notification alarmd would publish for it."""

from __future__ import annotations

import dataclasses
from typing import Any

from common.ens.envelope import Notification, Renl
from common.ens.reference import EventReference
from common.payload import AlarmPayload


def sample_payload(**changes: Any) -> AlarmPayload:
    base = AlarmPayload(
        calid="jac",
        uid="u1",
        rid="",
        aid="1",
        component="event",
        action="DISPLAY",
        trigger="2026-11-23T09:45:00Z",
        summary="Team meeting",
        description="Agenda:\n1. Budget\n2. Hiring",
        location="Room 101",
        start="2026-11-23T10:00:00Z",
        end="2026-11-23T11:00:00Z",
        tz="Europe/Paris",
        owner="jac@example.com",
    )
    return dataclasses.replace(base, **changes)


def payload_dict(**changes: Any) -> dict[str, Any]:
    """The sample payload without description and location, as it travels."""
    return sample_payload(description="", location="", **changes).to_dict()


def notification(renl_id: str, **changes: Any) -> Notification:
    """The notification of ``payload_dict(**changes)``, asking for an ack to ``alarmd`` under ``renl_id``."""
    payload = payload_dict(**changes)
    ref = EventReference.alarm("event", payload["calid"], payload["uid"], payload["rid"], payload["aid"])
    return Notification(ref=ref, payload=payload, renl=Renl("alarmd", renl_id, 60.0))
