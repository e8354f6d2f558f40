"""A delivery method of your own: alarm notifications in, an HTTP POST out, an ack back.

    python deploy/examples/webhook_subscriber.py --bus amqp://guest:guest@127.0.0.1:5672/ \\
        --url https://chat.example.com/hooks/reminders [--pool webhook] [--timeout 10] [--no-ack]

It joins the pool ``webhook`` (``enp+pool.webhook:///ics/eventalarm`` and ``…/todoalarm``):
start it several times and each notification goes to one of them; notifications wait in
the pool's durable queue while none runs. For each one, at its ``not_before`` when it came
ahead of its trigger, it POSTs
``{"ref", "summary", "trigger", "start", "recipients"}`` as JSON and acks end to end:

- 2xx → ``delivered``;
- 5xx, 408, 429, a timeout or a connection error → ``retry`` (alarmd tries again later);
- any other status → ``failed`` with the reason (alarmd keeps the alarm as failed);
- a payload it cannot read → ``failed`` with the reason, and no POST.

alarmd keeps one verdict per alarm, whoever sends it: beside notifyd (which acks too),
run this with ``--no-ack`` (best effort, no retries), or notifyd's acks and these would
decide for each other (docs/subscribers.md, "One verdict per alarm").

A message that is not a notification envelope at all is acked ``failed`` by the bus
library itself. SIGTERM or SIGINT: stop taking notifications, finish the ones in hand,
exit 0 (1: the bus failed after start-up; 2: bad arguments). Uses only ``common.ens``
(the bus API) and the standard library; docs/subscribers.md has the wire format for
subscribers in other languages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from common.ens import AckStatus, Bus, BusError, Notification, create_bus, standard_properties
from common.ens.startup import start_when_reachable

log = logging.getLogger("webhook")
BASES = ("/ics/eventalarm", "/ics/todoalarm")


def webhook_body(notification: Notification) -> dict[str, Any]:
    """What is POSTed; ValueError says what is wrong with a payload that cannot be used."""
    payload = notification.payload
    if payload.get("v") != 1:
        raise ValueError(f"payload version {payload.get('v')!r} is not 1")
    body: dict[str, Any] = {"ref": str(notification.ref)}
    for name in ("summary", "trigger", "start"):
        value = payload.get(name, "")
        if not isinstance(value, str):
            raise ValueError(f"payload {name!r} must be a string")
        body[name] = value
    if not body["trigger"]:
        raise ValueError("payload lacks 'trigger'")
    recipients = payload.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise ValueError("payload 'recipients' must be a list of strings")
    body["recipients"] = recipients
    return body


def post(url: str, body: bytes, timeout: float) -> tuple[AckStatus, str]:
    """POST ``body``; the ack status and reason its outcome deserves (blocking: run it in a thread)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return AckStatus.DELIVERED, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        detail = ""
        with contextlib.suppress(OSError):  # the error page, if it can be read, says why
            detail = " ".join(exc.read(200).decode(errors="replace").split())
        reason = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
        transient = exc.code >= 500 or exc.code in (408, 429)  # server trouble, timeout, rate limit
        return (AckStatus.RETRY if transient else AckStatus.FAILED), reason
    except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, DNS, timed out
        return AckStatus.RETRY, f"cannot POST to {url}: {getattr(exc, 'reason', exc)}"


class Webhook:
    def __init__(self, bus: Bus, url: str, timeout: float, ack: bool = True) -> None:
        self.bus, self.url, self.timeout, self.acks = bus, url, timeout, ack

    async def __call__(self, notification: Notification) -> None:
        try:
            body = json.dumps(webhook_body(notification)).encode()
        except ValueError as exc:
            status, reason = AckStatus.FAILED, f"invalid payload: {exc}"
        else:
            # alarmd publishes up to alarmd.publish_ahead (≤ 10 s) before the trigger: wait for it.
            not_before = notification.not_before()
            if not_before is not None:
                await asyncio.sleep(min(max((not_before - datetime.now(UTC)).total_seconds(), 0.0), 10.0))
            # Answer well within the RENL timeout, or alarmd publishes the alarm again meanwhile.
            timeout = min(self.timeout, notification.renl.timeout / 2) if notification.renl else self.timeout
            try:
                status, reason = await asyncio.to_thread(post, self.url, body, timeout)
            except Exception as exc:  # noqa: BLE001 - never leave a notification unanswered
                status, reason = AckStatus.RETRY, f"webhook error: {type(exc).__name__}: {exc}"
        log.info("%s -> %s %s", notification.ref, status, reason)
        if self.acks:  # BusUnavailable here leaves the handler: no ack, so alarmd publishes the alarm again
            await self.bus.ack(notification, status, reason, standard_properties("webhook", datetime.now(UTC)))


async def run(bus_url: str, url: str, pool: str, http_timeout: float, ack: bool) -> int:
    try:
        bus = create_bus(bus_url, prefetch=8)  # up to 8 POSTs at once
    except BusError as exc:
        log.error("%s", exc)
        return 2
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        # a broker that is not up yet is waited for (with backoff), not an error
        if await start_when_reachable(bus, stop, service="webhook"):
            handler = Webhook(bus, url, http_timeout, ack)
            for base in BASES:
                await bus.subscribe(f"enp+pool.{pool}://{base}", handler)
            log.info("subscribed as pool %r; posting to %s", pool, url)
            await stop.wait()
    except BusError as exc:
        log.error("%s", exc)
        return 1
    finally:
        await bus.close()  # lets the notifications in hand finish and ack
    log.info("stopped")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="POST alarm notifications to a URL and ack them end to end.")
    parser.add_argument("--bus", required=True, help="amqp://user:pass@host:5672/vhost[?exchange=NAME]")
    parser.add_argument("--url", required=True, help="where to POST each reminder")
    parser.add_argument("--pool", default="webhook", help="subscribers with the same pool share the work")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds an HTTP request may take")
    parser.add_argument("--no-ack", dest="ack", action="store_false", help="never ack (beside notifyd)")
    args = parser.parse_args()
    if not args.bus.startswith(("amqp://", "amqps://")):
        parser.error("--bus must be amqp://… or amqps://…: alarmd runs in another process")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    raise SystemExit(asyncio.run(run(args.bus, args.url, args.pool, args.timeout, args.ack)))


if __name__ == "__main__":
    main()
