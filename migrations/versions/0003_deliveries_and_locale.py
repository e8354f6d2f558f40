"""notifyd's delivery records (dedup) and the reminder language of each source.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from common.db.types import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("locale", sa.String(35), nullable=False, server_default=""))
    op.create_table(
        "deliveries",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("ref", sa.Text, nullable=False),
        sa.Column("trigger_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("key", name="pk_deliveries"),
    )
    op.create_index("ix_deliveries_expires_at", "deliveries", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_expires_at", table_name="deliveries")
    op.drop_table("deliveries")
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("locale")
