"""The tables, once, for every backend: SQLAlchemy Core reads and writes them on SQLite and on
PostgreSQL alike. The migrations in ``app/db/migrations`` create what is described here."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite's ids are its rowids ("INTEGER PRIMARY KEY"): a BIGINT there would not be one.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    # Unique regardless of case (an index on lower(username)); usernames are ASCII.
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    # Bumped when the password changes or the account is disabled: older tokens stop working.
    sa.Column("token_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # Per-user limits set by an admin; NULL: the settings' default, 0: no limit.
    sa.Column("requests_per_minute", sa.Integer),
    sa.Column("tokens_per_day", sa.BigInteger),
    # What access tokens name: random per account, so a token authenticates only its own account.
    sa.Column("subject", sa.Text, nullable=False, unique=True),
    # Ids are never handed out twice (SQLite: AUTOINCREMENT; PostgreSQL: a sequence).
    sqlite_autoincrement=True,
)
sa.Index("users_by_lower_username", sa.func.lower(users.c.username), unique=True)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_used_at", sa.BigInteger),
    sa.Index("api_keys_by_user", "user_id"),
)

# What each user used, per UTC day; one row updated in place per request.
usage = sa.Table(
    "usage",
    metadata,
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("day", sa.Text, primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, server_default="0"),
    # Input tokens embedded (/v1/embeddings): part of the daily token limit.
    sa.Column("embedding_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("usage_by_day", "day"),
)

# Stored responses (/v1/responses), private to their user and deleted with them.
responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # The response object as the API returns it (JSON).
    sa.Column("body", sa.Text, nullable=False),
    # This request's input items, with their ids (JSON).
    sa.Column("input_items", sa.Text, nullable=False),
    # The conversation a follow-up continues from (JSON chat messages, without instructions).
    sa.Column("conversation", sa.Text, nullable=False),
    # While a background response is generated: until when (Unix time) the replica generating
    # it answers for it, renewed as it runs; NULL once it is done. Past it, it was lost.
    sa.Column("lease_until", sa.BigInteger, nullable=True),
    # Set where a replica not generating it was asked to cancel it; the one that is, stops.
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("responses_by_user", "user_id"),
    sa.Index("responses_by_age", "created_at"),
)

# Values every replica must agree on (the JWT signing secret), by name.
secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# What `python -m app db copy` moves, parents before children.
ALL = (users, api_keys, usage, responses, secrets)
