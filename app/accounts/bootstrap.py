"""The first admin, made on the first start when no admin exists.

A generated password goes to a private file in the data directory, never to the log (logs get
shipped and kept).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from app.accounts.service import AccountService

logger = logging.getLogger(__name__)

ADMIN_PASSWORD_FILE = "initial_admin_password"  # noqa: S105 - a file name


class FirstAdmin:
    """``APP_ADMIN_USERNAME`` with ``APP_ADMIN_PASSWORD`` (or a generated one)."""

    def __init__(
        self, accounts: AccountService, *, username: str, password: str | None, data_dir: Path
    ) -> None:
        self._accounts = accounts
        self._username = username
        self._password = password
        self._data_dir = data_dir

    @asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        """The app's lifespan: the admin exists before the first request."""
        await self.ensure()
        yield

    async def ensure(self) -> None:
        """Creates the admin if there is none. Raises ``AdminBootstrapError`` when the name
        belongs to an ordinary user."""
        generated = await self._accounts.ensure_admin(self._username, self._password)
        if generated is None:
            return
        # With a database server the data directory holds nothing else, and may not exist yet.
        self._data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._data_dir / ADMIN_PASSWORD_FILE
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generated + "\n")
        logger.warning(
            "created the admin user %r with a generated password, written to %s (readable by "
            "this user only); log in, change it with POST /users/me/password or 'python -m app "
            "users passwd %s', then delete the file",
            self._username,
            path,
            self._username,
        )
