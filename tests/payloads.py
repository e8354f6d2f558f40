"""A sample alarm payload for notifyd tests."""

from __future__ import annotations

import dataclasses
from typing import Any

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
