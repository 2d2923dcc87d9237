"""Where users, API keys, usage and stored responses live: SQLite or PostgreSQL."""

from app.db.database import (
    UNAVAILABLE,
    Database,
    DatabaseUnavailable,
    SchemaTooNew,
    database_url,
)

__all__ = ["UNAVAILABLE", "Database", "DatabaseUnavailable", "SchemaTooNew", "database_url"]
