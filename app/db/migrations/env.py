"""Alembic's environment: migrations run on the connection ``app.db.migrate`` hands over, inside
its transaction and lock (``python -m app db upgrade``; the service does the same at start)."""

from alembic import context

from app.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the migrations with 'python -m app db upgrade'")
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters most of a table by copying it: Alembic's batch mode does that.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
