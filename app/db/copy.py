"""``python -m app db copy --to postgresql://...``: one machine's database moved into another.

Every row of every table (users, API keys, usage, stored responses, the JWT secret) is copied
with its id, in one transaction on the target, which must be empty: a copy lands whole or not at
all. The source is read in one snapshot (rows written meanwhile are not half in). The users'
id sequence on the target continues after the highest id the source ever handed out (deleted
accounts included), so no account id is given twice; the API keys' after the highest present.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.database import Database
from app.db.tables import ALL, api_keys, users

_BATCH = 500
# Tables whose ids come from a sequence (PostgreSQL) or AUTOINCREMENT (SQLite).
_SEQUENCED = (users, api_keys)


class TargetNotEmpty(Exception):
    """The target database already holds rows; copying would mix two sets of accounts."""


async def _last_id(connection: AsyncConnection, table: sa.Table) -> int:
    """The highest id ``table`` ever handed out, deleted rows included."""
    highest = int(await connection.scalar(sa.select(sa.func.max(table.c.id))) or 0)
    if connection.dialect.name == "sqlite":
        statement = sa.text("SELECT seq FROM sqlite_sequence WHERE name = :name")
        issued = await connection.scalar(statement, {"name": table.name})
    else:
        statement = sa.text("SELECT pg_sequence_last_value(CAST(:name AS regclass))")
        issued = await connection.scalar(statement, {"name": await _sequence(connection, table)})
    return max(highest, int(issued or 0))


async def _sequence(connection: AsyncConnection, table: sa.Table) -> str:
    name = await connection.scalar(sa.select(sa.func.pg_get_serial_sequence(table.name, "id")))
    assert name is not None, f"{table.name}.id has no sequence"
    return str(name)


async def _continue_after(connection: AsyncConnection, table: sa.Table, last: int) -> None:
    if last == 0:
        return
    if connection.dialect.name == "sqlite":
        # The row exists once the table had an insert; explicit ids may have left it lower.
        await connection.execute(
            sa.text("UPDATE sqlite_sequence SET seq = max(seq, :last) WHERE name = :name"),
            {"last": last, "name": table.name},
        )
    else:
        await connection.execute(
            sa.select(sa.func.setval(await _sequence(connection, table), last, True))
        )


async def copy_database(source: Database, target: Database) -> dict[str, int]:
    """Copies every row of ``source`` into ``target`` (both open, so both migrated); the rows
    copied per table. Raises ``TargetNotEmpty`` if the target has any row."""
    copied: dict[str, int] = {}
    async with source.engine.connect() as reader, target.transaction() as writer:
        if reader.dialect.name == "postgresql":  # every table as of one moment
            await reader.execution_options(isolation_level="REPEATABLE READ")
        for table in ALL:
            if await writer.scalar(sa.select(sa.func.count()).select_from(table)):
                raise TargetNotEmpty(
                    f"{target.where} already has rows in {table.name}; copy only into a new, "
                    "empty database"
                )
        for table in ALL:
            copied[table.name] = 0
            result = await reader.stream(sa.select(table))
            async for rows in result.mappings().partitions(_BATCH):
                await writer.execute(sa.insert(table), [dict(row) for row in rows])
                copied[table.name] += len(rows)
        for table in _SEQUENCED:
            await _continue_after(writer, table, await _last_id(reader, table))
    return copied
