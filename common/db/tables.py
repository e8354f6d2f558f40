"""The schema. Only ``alarmd.queue.AlarmQueue`` reads and writes the alarm tables
(``sources``, ``alarms``, ``alarm_history``); only ``notifyd.dedup.SqlDeliveryLog``
reads and writes ``deliveries``.

- ``sources``: calendar objects as enqueued (calid, uid, iCalendar text), from
  which instances are materialised. ``planned_until`` is set for recurring
  series: instances before it are in ``alarms``; the horizon job moves it on.
- ``alarms``: one row per alarm instance still to deliver (pending, inflight) or
  kept for an operator (failed, expired). ``next_at`` alone decides when a row
  is due: first publish, republish after a missing ack, and backoff.
- ``alarm_history``: every state change of every instance, kept after the
  instance row is deleted, so "what happened to my reminder?" has an answer.
- ``deliveries``: the instance keys notifyd has mailed, so that a notification
  delivered again (a lost ack, a republish) is acked without a second email.
  Rows expire after ``notifyd.dedup_retention``.
"""

from __future__ import annotations

import sqlalchemy as sa

from common.db.types import BigId, UTCDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("calid", sa.String(255), nullable=False),
    sa.Column("uid", sa.String(255), nullable=False),
    sa.Column("component", sa.String(8), nullable=False),
    sa.Column("ics", sa.Text, nullable=False),
    sa.Column("owner", sa.String(320), nullable=False, server_default=""),
    sa.Column("locale", sa.String(35), nullable=False, server_default=""),  # "" = notifyd's default
    sa.Column("tz", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("planned_until", UTCDateTime, nullable=True),  # NULL: every instance is materialised
    sa.UniqueConstraint("calid", "uid"),
)
sa.Index("ix_sources_planned_until", sources.c.planned_until)

alarms = sa.Table(
    "alarms",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("calid", sa.String(255), nullable=False),
    sa.Column("uid", sa.String(255), nullable=False),
    sa.Column("rid", sa.String(32), nullable=False, server_default=""),
    sa.Column("aid", sa.String(255), nullable=False),
    sa.Column("component", sa.String(8), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("trigger_at", UTCDateTime, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("next_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # lowered again by a release
    sa.Column("publications", sa.Integer, nullable=False, server_default="0"),  # claims ever made; never lowered
    sa.Column("claimed_by", sa.String(255), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("calid", "uid", "rid", "aid", "trigger_at"),
    sa.CheckConstraint("state IN ('pending', 'inflight', 'failed', 'expired')", name="state"),
)
# The claim query: due rows in order of next_at among the live states.
sa.Index(
    "ix_alarms_due",
    alarms.c.next_at,
    sqlite_where=alarms.c.state.in_(["pending", "inflight"]),
    postgresql_where=alarms.c.state.in_(["pending", "inflight"]),
)
# The rows not pending (in flight, failed, expired), by state: the failed-after-max-attempts
# check, listings by state, retry and purge. Pending rows (most of a large queue) are not
# in it; they are found through ix_alarms_due. A query names the condition as written
# (alarmd.queue.IS_NOT_PENDING) so that SQLite can use it.
sa.Index(
    "ix_alarms_not_pending",
    alarms.c.state,
    alarms.c.next_at,
    sqlite_where=alarms.c.state != "pending",
    postgresql_where=alarms.c.state != "pending",
)

alarm_history = sa.Table(
    "alarm_history",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("alarm_id", sa.BigInteger, nullable=False),
    sa.Column("calid", sa.String(255), nullable=False),
    sa.Column("uid", sa.String(255), nullable=False),
    sa.Column("rid", sa.String(32), nullable=False),
    sa.Column("aid", sa.String(255), nullable=False),
    sa.Column("trigger_at", UTCDateTime, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
)
sa.Index("ix_alarm_history_alarm_id", alarm_history.c.alarm_id)
sa.Index("ix_alarm_history_calid_uid", alarm_history.c.calid, alarm_history.c.uid)
sa.Index("ix_alarm_history_at", alarm_history.c.at)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # sha256 of calid, uid, rid, aid, trigger
    sa.Column("ref", sa.Text, nullable=False),
    sa.Column("trigger_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
)
sa.Index("ix_deliveries_expires_at", deliveries.c.expires_at)
