"""alarms.publications: how many times an instance was handed to the bus, never lowered.

``attempts`` is given back when a claim could not be published (``release``), so it
cannot tell notifyd that a notification is an instance's first publication. This
counter can: a first publication that the broker did not redeliver cannot have been
mailed before, and notifyd skips its delivery-log lookup for it.

Existing rows count the ``published`` events in their history (at least ``attempts``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.add_column(sa.Column("publications", sa.Integer, nullable=False, server_default="0"))
    alarms = sa.table("alarms", sa.column("id"), sa.column("attempts"), sa.column("publications"))
    history = sa.table("alarm_history", sa.column("alarm_id"), sa.column("event"))
    published = (
        sa.select(sa.func.count())
        .where(history.c.alarm_id == alarms.c.id, history.c.event == "published")
        .scalar_subquery()
    )
    op.execute(
        sa.update(alarms).values(
            publications=sa.case((published > alarms.c.attempts, published), else_=alarms.c.attempts)
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.drop_column("publications")
