"""Where users, API keys, usage and stored responses live: SQLite or PostgreSQL."""

from app.db.database import (
    Database,
    DatabaseUnavailable,
    SchemaTooNew,
    database_url,
    is_outage,
)

__all__ = ["Database", "DatabaseUnavailable", "SchemaTooNew", "database_url", "is_outage"]
