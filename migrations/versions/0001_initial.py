"""Initial schema: sources, alarms, alarm_history.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from common.db.types import BigId, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LIVE = sa.text("state IN ('pending', 'inflight')")


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("calid", sa.String(255), nullable=False),
        sa.Column("uid", sa.String(255), nullable=False),
        sa.Column("component", sa.String(8), nullable=False),
        sa.Column("ics", sa.Text, nullable=False),
        sa.Column("owner", sa.String(320), nullable=False, server_default=""),
        sa.Column("tz", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sources"),
        sa.UniqueConstraint("calid", "uid", name="uq_sources_calid_uid"),
    )
    op.create_table(
        "alarms",
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
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alarms"),
        sa.UniqueConstraint("calid", "uid", "rid", "aid", "trigger_at", name="uq_alarms_calid_uid_rid_aid_trigger_at"),
        sa.CheckConstraint("state IN ('pending', 'inflight', 'failed', 'expired')", name="ck_alarms_state"),
    )
    op.create_index("ix_alarms_due", "alarms", ["next_at"], sqlite_where=LIVE, postgresql_where=LIVE)
    op.create_index("ix_alarms_state", "alarms", ["state"])
    op.create_table(
        "alarm_history",
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
        sa.PrimaryKeyConstraint("id", name="pk_alarm_history"),
    )
    op.create_index("ix_alarm_history_alarm_id", "alarm_history", ["alarm_id"])
    op.create_index("ix_alarm_history_calid_uid", "alarm_history", ["calid", "uid"])
    op.create_index("ix_alarm_history_at", "alarm_history", ["at"])


def downgrade() -> None:
    op.drop_table("alarm_history")
    op.drop_table("alarms")
    op.drop_table("sources")
