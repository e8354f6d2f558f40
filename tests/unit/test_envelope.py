import dataclasses
import json
from datetime import UTC, datetime

import pytest

from common.ens.envelope import (
    PUBLICATION,
    Ack,
    AckStatus,
    EnvelopeError,
    Notification,
    Renl,
    acks_from_json,
    acks_to_json,
    renl_of,
    standard_properties,
)
from common.ens.reference import EventReference
from common.payload import AlarmPayload
from tests.payloads import sample_payload

REF = EventReference.alarm("event", "jac", "u1", "", "1")


def test_notification_round_trips_as_versioned_json() -> None:
    props = standard_properties("alarmd", datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    n = Notification(REF, {"k": "v"}, props, Renl("alarmd", "7:1", 60.0))
    body = json.loads(n.to_json())
    assert body["v"] == 1
    assert body["type"] == "notification"
    assert set(body["properties"]) >= {"hostname", "pid", "process", "timestamp"}
    assert body["properties"]["timestamp"] == 1795428000000
    assert Notification.from_json(n.to_json()) == n


def test_unknown_keys_and_properties_are_ignored() -> None:
    body = json.loads(Notification(REF, {}).to_json())
    body["future"] = {"x": 1}
    body["properties"]["new"] = "value"
    assert Notification.from_json(json.dumps(body)).properties["new"] == "value"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"v": 2, "type": "notification"}', "version 2"),
        (b'{"v": 1, "type": "ack"}', "type 'notification'"),
        (b'{"v": 1, "type": "notification", "id": "x", "ref": "bogus", "payload": {}}', "'ref'"),
        (b'{"v": 1, "type": "notification", "id": "x", "ref": "enp:///ics/eventalarm", "payload": []}', "payload"),
    ],
)
def test_invalid_notifications_raise_envelope_error(raw: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        Notification.from_json(raw)


def test_ack_round_trip_and_bad_status() -> None:
    ack = Ack("7:1", AckStatus.RETRY, "451 try later")
    assert Ack.from_json(ack.to_json()) == ack
    with pytest.raises(EnvelopeError, match="delivered, failed, retry"):
        Ack.from_json(b'{"v": 1, "type": "ack", "renl_id": "7:1", "status": "maybe"}')


def test_several_acks_in_one_message_round_trip_and_a_bad_one_spoils_only_itself() -> None:
    acks = [Ack("7:1", AckStatus.DELIVERED), Ack("8:2", AckStatus.FAILED, "550 no such user", {"process": "notifyd"})]
    body = json.loads(acks_to_json(acks))
    assert (body["v"], body["type"], len(body["acks"])) == (1, "acks", 2)
    assert acks_from_json(acks_to_json(acks)) == (acks, [])
    assert acks_from_json(acks[0].to_json()) == ([acks[0]], [])  # one ack alone, as before
    body["acks"].insert(1, {"renl_id": "9:1", "status": "maybe"})
    body["acks"].append("not an object")
    got, errors = acks_from_json(json.dumps(body).encode())
    assert got == acks
    assert errors == [
        "ack 2 of 4: ack 'status' 'maybe' is not one of delivered, failed, retry",
        "ack 4 of 4: must be an object",
    ]
    with pytest.raises(EnvelopeError, match="'acks' must be a list"):
        acks_from_json(b'{"v": 1, "type": "acks", "acks": {}}')
    with pytest.raises(EnvelopeError, match="type 'ack' or 'acks', got 'notification'"):
        acks_from_json(b'{"v": 1, "type": "notification"}')
    with pytest.raises(EnvelopeError, match="type 'ack', got 'acks'"):
        Ack.from_json(acks_to_json(acks))  # a reader of single acks refuses a batch


def test_a_renl_request_says_whether_its_publisher_takes_acks_in_batches() -> None:
    batched = Notification(REF, {}, {}, Renl("alarmd", "7:1", 60.0, batch_acks=True))
    assert json.loads(batched.to_json())["renl"]["batch_acks"] is True
    assert Notification.from_json(batched.to_json()).renl == batched.renl
    plain = Notification(REF, {}, {}, Renl("alarmd", "7:1", 60.0))
    assert "batch_acks" not in json.loads(plain.to_json())["renl"]  # as an older publisher writes it
    assert Notification.from_json(plain.to_json()).renl == Renl("alarmd", "7:1", 60.0, batch_acks=False)
    truthy = plain.to_json().replace(b'"timeout"', b'"batch_acks":"yes","timeout"')
    renl = Notification.from_json(truthy).renl
    assert renl is not None
    assert renl.batch_acks is False  # only true itself says so


def test_renl_can_be_read_from_an_otherwise_invalid_message() -> None:
    raw = b'{"v": 99, "renl": {"ack_to": "alarmd", "renl_id": "3:1", "timeout": 5}}'
    assert renl_of(raw) == Renl("alarmd", "3:1", 5.0)
    assert renl_of(b"\xff\xfe") is None


def test_only_a_first_publication_not_redelivered_is_a_first_copy() -> None:
    ref = REF
    first = Notification(ref, {}, {PUBLICATION: 1})
    assert first.first_copy
    assert not dataclasses.replace(first, redelivered=True).first_copy
    assert not Notification(ref, {}, {PUBLICATION: 2}).first_copy
    assert not Notification(ref, {}, {}).first_copy  # another publisher: no claim to be first
    assert not Notification(ref, {}, {PUBLICATION: True}).first_copy
    assert not Notification(ref, {}, {PUBLICATION: "1"}).first_copy
    # the flag is the receiving bus's, not the wire's
    assert Notification.from_json(dataclasses.replace(first, redelivered=True).to_json()).first_copy


def test_a_payload_as_a_dict_has_every_field_in_order_and_its_own_recipients_list() -> None:
    payload = sample_payload(recipients=["a@example.com"])
    data = payload.to_dict()
    assert list(data) == [f.name for f in dataclasses.fields(AlarmPayload)]
    assert AlarmPayload.from_dict(data) == payload
    data["recipients"].append("b@example.com")
    assert payload.recipients == ["a@example.com"]
