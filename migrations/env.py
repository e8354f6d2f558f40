"""Alembic environment. Run through ``alarmctl db upgrade`` (common.db.migrate)."""

from __future__ import annotations

from alembic import context

from common.db.engine import create_engine_from_url
from common.db.tables import metadata

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "common.db.migrate sets sqlalchemy.url"

connection = config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
