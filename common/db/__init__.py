"""Database engine, column types and tables (the schema Alembic migrates)."""

from common.db.engine import create_engine_from_url
from common.db.tables import alarm_history, alarms, deliveries, metadata, sources

__all__ = ["alarm_history", "alarms", "create_engine_from_url", "deliveries", "metadata", "sources"]
