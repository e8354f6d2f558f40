"""Recurring series: how far each source's instances are materialised.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from common.db.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("planned_until", UTCDateTime, nullable=True))
    op.create_index("ix_sources_planned_until", "sources", ["planned_until"])


def downgrade() -> None:
    op.drop_index("ix_sources_planned_until", table_name="sources")
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("planned_until")
