"""The secret that signs access tokens, the same on every replica.

``JWT_SECRET_KEY`` when it is set (checked by ``auth.configured_jwt_secret``); otherwise one
generated on the first start and kept in the database's ``secrets`` table, so that a token issued
by one replica is valid on every other replica sharing the database. Replicas starting together
agree on one: each offers its own, the first insert wins and everyone reads the winner. A secret
that an earlier release generated into the data directory is carried into the database, so the
tokens it signed stay valid.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa

from app.db import Database
from app.db.tables import secrets as secrets_table
from app.settings import ConfigError

logger = logging.getLogger(__name__)

MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_NAME = "jwt"
# Where releases before the shared database kept the generated secret.
LEGACY_FILE = "jwt_secret"


class SigningSecret:
    """The signing secret, known once the app's lifespan has started."""

    def __init__(
        self, db: Database, *, configured: str | None, algorithm: str, data_dir: Path
    ) -> None:
        self._db = db
        self._value = configured
        self._configured = configured is not None
        self._algorithm = algorithm
        self._legacy_file = data_dir / LEGACY_FILE

    @property
    def value(self) -> str:
        if self._value is None:
            raise RuntimeError("the signing secret is read before the database is open")
        return self._value

    @asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan (after the database's): the secret is known before requests."""
        if not self._configured:
            self._value = await self._stored()
        yield

    async def carry(self) -> None:
        """Stores the secret in the database if it is not there yet (``db copy`` runs this on
        its source, so that the tokens it signed stay valid on the target)."""
        if not self._configured:
            await self._stored()

    async def _stored(self) -> str:
        query = sa.select(secrets_table.c.value).where(secrets_table.c.name == _NAME)
        stored: str | None = await self._db.scalar(query)
        if stored is None:
            offer, source = self._offer()
            await self._db.execute(
                self._db.insert(secrets_table)
                .values(name=_NAME, value=offer)
                .on_conflict_do_nothing(index_elements=[secrets_table.c.name])
            )
            stored = await self._db.scalar(query)
            if stored is None:
                raise ConfigError(
                    "the JWT secret could not be stored in the database (the 'jwt' row of the "
                    "secrets table is missing after inserting it); set JWT_SECRET_KEY"
                )
            if stored == offer:
                logger.info("%s the JWT secret into the database (%s)", source, self._db.where)
            self._retire_legacy_file()
        if len(stored.encode()) < MIN_SECRET_BYTES[self._algorithm]:
            raise ConfigError(
                f"the JWT secret stored in the database is too short for {self._algorithm}; "
                "set JWT_SECRET_KEY, or delete the 'jwt' row of the secrets table to have a new "
                "one generated (existing tokens will stop working)."
            )
        return stored

    def _retire_legacy_file(self) -> None:
        """The database holds the secret now: the old file is renamed, so that deleting the
        database's row (to rotate a leaked secret) does not bring the old one back."""
        if self._legacy_file.exists():
            moved = self._legacy_file.with_name(LEGACY_FILE + ".moved-to-database")
            try:
                self._legacy_file.rename(moved)
            except OSError as exc:
                logger.warning("cannot rename %s: %s", self._legacy_file, exc)

    def _offer(self) -> tuple[str, str]:
        try:
            previous = self._legacy_file.read_text().strip()
        except FileNotFoundError:
            previous = ""
        except OSError as exc:
            logger.warning("cannot read the earlier JWT secret %s: %s", self._legacy_file, exc)
            previous = ""
        if previous:
            return previous, f"carried {self._legacy_file} as"
        return secrets.token_urlsafe(64), "generated"  # 86 characters: enough for HS512
