"""Replace ix_alarms_state with ix_alarms_not_pending: (state, next_at) of the rows not pending.

ix_alarms_state held every row, so every instance enqueued wrote an entry to it, and on
SQLite it misled the claim: the planner, without statistics, took ``state IN
('pending', 'inflight')`` through it over the claim's own index ix_alarms_due, walked
every live row and sorted them (9 ms a claim of 100 with 10,000 pending, growing with
the queue). The new index holds only in-flight, failed and expired rows: what the
failed-after-max-attempts check, ``alarmctl list --state``, ``retry`` and ``purge`` look
for. Pending rows, the bulk of a large queue, are found through ix_alarms_due.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NOT_PENDING = sa.text("state <> 'pending'")


def upgrade() -> None:
    op.drop_index("ix_alarms_state", table_name="alarms")
    op.create_index(
        "ix_alarms_not_pending",
        "alarms",
        ["state", "next_at"],
        sqlite_where=NOT_PENDING,
        postgresql_where=NOT_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_alarms_not_pending", table_name="alarms")
    op.create_index("ix_alarms_state", "alarms", ["state"])
