"""Account rules: registration, login, tokens' users, API keys, administration."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time

import msgspec

from app.accounts.passwords import Passwords
from app.accounts.schemas import ApiKeyView, NewApiKey, User, UserUpdate
from app.accounts.store import AccountStore, LastAdmin, UsernameTaken
from app.errors import (
    Conflict,
    InvalidCredentials,
    NotFound,
    PermissionDenied,
    WrongPassword,
)

logger = logging.getLogger(__name__)

# JWTs start with "eyJ"; anything that starts with this is looked up as an API key instead.
API_KEY_PREFIX = "sk-"
# How stale last_used_at may get before a request writes it again.
_TOUCH_INTERVAL = 60


def hash_api_key(key: str) -> str:
    """API keys are long random strings, so a fast hash stores them safely."""
    return hashlib.sha256(key.encode()).hexdigest()


class AdminBootstrapError(Exception):
    """The configured admin name belongs to an ordinary user; promoting it would be unsafe."""


class AccountService:
    """Everything the service knows how to do with accounts."""

    def __init__(self, store: AccountStore, passwords: Passwords, *, registration_open: bool):
        self._store = store
        self._passwords = passwords
        self.registration_open = registration_open

    async def register(self, username: str, password: str) -> User:
        """Self-service sign-up, when registration is open."""
        if not self.registration_open:
            raise PermissionDenied("Registration is closed; ask an administrator for an account.")
        return await self.create_user(username, password, is_admin=False)

    async def create_user(self, username: str, password: str, *, is_admin: bool) -> User:
        """A new account; raises ``Conflict`` if the name is taken (in any letter case)."""
        password_hash = await self._passwords.hash(password)
        try:
            return await self._store.create_user(username, password_hash, is_admin=is_admin)
        except UsernameTaken:
            raise Conflict(f"The username '{username}' is taken.", param="username") from None

    async def authenticate(self, username: str, password: str) -> User:
        """The user these credentials belong to; one error for every kind of wrong."""
        user = await self._store.user_by_name(username)
        valid = await self._passwords.verify(user.password_hash if user else None, password)
        if user is None or not valid or user.disabled:
            raise InvalidCredentials()
        if self._passwords.needs_rehash(user.password_hash):
            new_hash = await self._passwords.hash(password)
            await self._store.set_password(user.id, new_hash, revoke_tokens=False)
            logger.info("upgraded the password hash of user %d", user.id)
        return user

    async def user_for_token(self, subject: str, token_version: int) -> User | None:
        """The token's user, if the account still exists, is enabled, and has not revoked it."""
        user = await self._store.user_by_subject(subject)
        if user is None or user.disabled or user.token_version != token_version:
            return None
        return user

    async def user_for_api_key(self, key: str) -> User | None:
        """The key's owner, if the key exists and the account is enabled."""
        found = await self._store.user_by_api_key(hash_api_key(key))
        if found is None:
            return None
        user, key_id, last_used = found
        if user.disabled:
            return None
        now = int(time.time())
        if last_used is None or now - last_used >= _TOUCH_INTERVAL:
            await self._store.touch_api_key(key_id, now)
        return user

    async def change_password(self, user: User, current: str, new: str) -> None:
        """Self-service password change; ends the user's existing tokens."""
        if not await self._passwords.verify(user.password_hash, current):
            raise WrongPassword()
        await self._store.set_password(user.id, await self._passwords.hash(new), revoke_tokens=True)

    async def create_api_key(self, user: User, name: str) -> NewApiKey:
        """A new key for ``user``; the key itself is returned once and stored as a hash."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        view = await self._store.create_api_key(user.id, name, key[:10], hash_api_key(key))
        return NewApiKey(**msgspec.structs.asdict(view), key=key)

    async def api_keys(self, user: User) -> list[ApiKeyView]:
        """The user's keys, without the keys."""
        return await self._store.api_keys(user.id)

    async def revoke_api_key(self, user: User, key_id: int) -> None:
        """Deletes one of the user's keys."""
        if not await self._store.delete_api_key(user.id, key_id):
            raise NotFound(f"You have no API key with id {key_id}.", param="key_id")

    async def users(self) -> list[User]:
        """Every account."""
        return await self._store.users()

    async def user(self, username: str) -> User:
        """The account named ``username``; raises ``NotFound``."""
        user = await self._store.user_by_name(username)
        if user is None:
            raise NotFound(f"There is no user '{username}'.", param="username")
        return user

    async def update_user(self, username: str, update: UserUpdate) -> User:
        """Disables or enables, grants or revokes admin, resets the password, sets limits."""
        user = await self.user(username)
        losing_admin = user.is_admin and (update.disabled is True or update.is_admin is False)
        new_hash = None
        if update.password is not None:
            new_hash = await self._passwords.hash(update.password)
        limits = {
            name: value
            for name in ("requests_per_minute", "tokens_per_day")
            if (value := getattr(update, name)) is not msgspec.UNSET
        }
        try:
            await self._store.update_user(
                user.id,
                password_hash=new_hash,
                disabled=update.disabled if update.disabled != user.disabled else None,
                is_admin=update.is_admin if update.is_admin != user.is_admin else None,
                limits=limits,
                keep_an_admin=losing_admin,
            )
        except LastAdmin:
            raise self._last_admin(user) from None
        return await self.user(username)

    async def delete_user(self, username: str) -> None:
        """Deletes the account and its API keys."""
        user = await self.user(username)
        try:
            await self._store.delete_user(user.id, keep_an_admin=user.is_admin)
        except LastAdmin:
            raise self._last_admin(user) from None

    @staticmethod
    def _last_admin(losing: User) -> Conflict:
        return Conflict(f"'{losing.username}' is the last enabled admin; make another admin first.")

    async def ensure_admin(self, username: str, password: str | None) -> str | None:
        """Creates the first admin when none exists; returns the password if it was generated."""
        if await self._store.has_admin():
            return None
        if await self._store.user_by_name(username) is not None:
            raise AdminBootstrapError(
                f"No admin exists and APP_ADMIN_USERNAME '{username}' is an ordinary user; "
                "choose another APP_ADMIN_USERNAME, or promote a user with "
                "'python -m app users promote NAME'."
            )
        generated = None if password else secrets.token_urlsafe(18)
        try:
            await self.create_user(username, password or generated or "", is_admin=True)
        except Conflict:
            # Another process starting on the same database created it a moment ago.
            if await self._store.has_admin():
                return None
            raise
        return generated
