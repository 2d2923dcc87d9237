"""Account types: what is stored, and what the API accepts and returns (never a hash)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from app.settings import MAX_PASSWORD, MIN_PASSWORD, USERNAME_PATTERN

Username = Annotated[
    str,
    Meta(pattern=USERNAME_PATTERN, description="3 to 64 of A-Z a-z 0-9 _ . -"),
]
Password = Annotated[
    str,
    Meta(
        min_length=MIN_PASSWORD,
        max_length=MAX_PASSWORD,
        description=f"{MIN_PASSWORD} to {MAX_PASSWORD} characters.",
    ),
]
KeyName = Annotated[
    str,
    # No control characters: PostgreSQL stores no NUL, and a name is shown in lists and pages.
    Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"),
]


class User(msgspec.Struct, frozen=True, kw_only=True):
    """A stored account, as the service sees it."""

    id: int
    username: str
    password_hash: str
    is_admin: bool
    disabled: bool
    token_version: int
    created_at: int
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None
    subject: str = ""
    """Random and never reused: what access tokens name, so that a token issued to a deleted
    account can never authenticate another one."""

    def view(self) -> UserView:
        """What the API shows of this account."""
        return UserView(
            id=self.id,
            username=self.username,
            is_admin=self.is_admin,
            disabled=self.disabled,
            created_at=self.created_at,
            requests_per_minute=self.requests_per_minute,
            tokens_per_day=self.tokens_per_day,
        )


class UserView(msgspec.Struct, kw_only=True):
    """An account, as the API shows it."""

    id: int
    username: str
    is_admin: bool
    disabled: bool
    created_at: Annotated[int, Meta(description="Unix time.")]
    requests_per_minute: Annotated[
        int | None,
        Meta(description="This user's limit; null: the service default, 0: none."),
    ] = None
    tokens_per_day: Annotated[
        int | None,
        Meta(description="Generated tokens per UTC day; null: the service default, 0: none."),
    ] = None


class Registration(msgspec.Struct, kw_only=True):
    """``POST /register``."""

    username: Username
    password: Password


class TokenRequest(msgspec.Struct, kw_only=True):
    """``POST /token``: the OAuth2 password flow, form-encoded."""

    username: str
    password: str
    grant_type: str | None = None
    scope: str = ""
    client_id: str | None = None
    client_secret: str | None = None


class TokenResponse(msgspec.Struct, kw_only=True):
    """An access token, as OAuth2 clients expect it."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: Annotated[int, Meta(description="Seconds until the token expires.")]


class PasswordChange(msgspec.Struct, kw_only=True):
    """``POST /users/me/password``."""

    current_password: str
    new_password: Password


class ApiKeyRequest(msgspec.Struct, kw_only=True):
    """``POST /users/me/api-keys``."""

    name: Annotated[KeyName, Meta(description="A label, e.g. the machine that uses the key.")]


class ApiKeyView(msgspec.Struct, kw_only=True):
    """An API key, without the key itself."""

    id: int
    name: str
    prefix: Annotated[str, Meta(description="The key's first characters, to recognise it.")]
    created_at: int
    last_used_at: int | None


class NewApiKey(ApiKeyView, kw_only=True):
    """A new API key; ``key`` is shown this once and stored only as a hash."""

    key: Annotated[str, Meta(description="Send as `Authorization: Bearer <key>`.")]


class NewUser(msgspec.Struct, kw_only=True):
    """``POST /admin/users``."""

    username: Username
    password: Password
    is_admin: bool = False


Limit = Annotated[int, Meta(ge=0, le=1_000_000_000)]


class UserUpdate(msgspec.Struct, kw_only=True):
    """``PATCH /admin/users/{username}``: only the fields given change."""

    disabled: bool | None = None
    is_admin: bool | None = None
    password: Password | None = None
    requests_per_minute: Annotated[
        Limit | msgspec.UnsetType | None,
        Meta(description="A limit for this user; null: back to the default, 0: no limit."),
    ] = msgspec.UNSET
    tokens_per_day: Annotated[
        Limit | msgspec.UnsetType | None,
        Meta(description="A limit for this user; null: back to the default, 0: no limit."),
    ] = msgspec.UNSET
