"""Who is calling: Litestar's OAuth2 bearer auth with API keys, the admin guard.

Litestar's ``OAuth2PasswordBearerAuth`` signs and checks tokens (pyjwt, one algorithm only, so
``alg: none`` and algorithm swaps are refused) and documents the password flow for Swagger's
Authorize button. Its default middleware also reads tokens from a cookie, which would let any web
page a logged-in browser visits make requests on the user's behalf; ours reads only the
``Authorization: Bearer`` header, where it also accepts API keys.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AuthenticationResult, DefineMiddleware
from litestar.openapi.spec import Components, OAuthFlows, SecurityScheme
from litestar.security.jwt import JWTAuthenticationMiddleware, OAuth2PasswordBearerAuth, Token

from app.accounts.schemas import User
from app.accounts.service import API_KEY_PREFIX, AccountService
from app.accounts.signing import MIN_SECRET_BYTES, SigningSecret
from app.errors import NotAuthenticated, PermissionDenied
from app.settings import ConfigError, Settings

logger = logging.getLogger(__name__)

PUBLIC = "public"
"""Route ``opt`` key that marks a handler as needing no credentials."""

# Sample secrets from well-known tutorials and templates: anyone can sign tokens with them.
_PUBLISHED_SECRETS = frozenset(
    {
        "09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7",
        "your-secret-key-here-change-in-production",
        "change-this-to-a-long-random-secret-key",
    }
)


def configured_jwt_secret(settings: Settings) -> str | None:
    """``JWT_SECRET_KEY``, checked; None when it is unset (``SigningSecret`` then keeps a
    generated one in the database).

    Raises ``ConfigError`` for a secret anyone could know.
    """
    configured = settings.jwt_secret_key
    if not configured:
        return None
    if configured in _PUBLISHED_SECRETS or len(set(configured)) < 8:
        raise ConfigError(
            "JWT_SECRET_KEY is a published sample or trivially guessable value; anyone could "
            "sign tokens with it. Set a random one (python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))') or leave it empty to have one generated."
        )
    # RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
    minimum = MIN_SECRET_BYTES[settings.algorithm]
    if len(configured.encode()) < minimum:
        raise ConfigError(
            f"JWT_SECRET_KEY must be at least {minimum} bytes long for {settings.algorithm} "
            "(RFC 7518: no shorter than the hash)."
        )
    return configured


ApiKeyUser = Callable[[str], Awaitable[User | None]]


class BearerAuthMiddleware(JWTAuthenticationMiddleware):
    """Authenticates ``Authorization: Bearer <JWT or API key>``, or the same credential in
    ``x-api-key`` (as Anthropic's clients send it); nothing else is accepted."""

    def __init__(
        self,
        *,
        auth_cookie_key: str,
        api_key_user: ApiKeyUser,
        signing_secret: SigningSecret,
        **kwargs: Any,
    ) -> None:
        # OAuth2PasswordBearerAuth passes a cookie name; tokens are never read from cookies here.
        super().__init__(**kwargs)
        self._api_key_user = api_key_user
        self._signing_secret = signing_secret

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        scheme, _, credential = connection.headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        if not scheme and "x-api-key" in connection.headers:
            # What the Anthropic SDK sends: the same credentials in another header.
            scheme, credential = "bearer", connection.headers["x-api-key"].strip()
        if scheme.lower() != "bearer" or not credential:
            raise NotAuthenticated(
                "Missing credentials: send 'Authorization: Bearer <access token or API key>' "
                "(or 'x-api-key: <API key or access token>')."
            )
        if credential.startswith(API_KEY_PREFIX):
            user = await self._api_key_user(credential)
            if user is None:
                raise NotAuthenticated("Invalid API key.")
            return AuthenticationResult(user=user, auth=None)
        try:
            self.token_secret = self._signing_secret.value  # known once the lifespan started
            return await self.authenticate_token(credential, connection)
        except NotAuthorizedException:
            raise NotAuthenticated("Invalid or expired access token.") from None


class _OAuth2Bearer(OAuth2PasswordBearerAuth[User, Token]):
    """Litestar's OAuth2 password bearer auth, documented as a valid OpenAPI 3.1 scheme, whose
    middleware also takes API keys."""

    api_key_user: ApiKeyUser | None = None
    signing_secret: SigningSecret | None = None

    @property
    def middleware(self) -> DefineMiddleware:
        middleware = super().middleware
        middleware.kwargs["api_key_user"] = self.api_key_user
        middleware.kwargs["signing_secret"] = self.signing_secret
        return middleware

    def create_token(self, *args: Any, **kwargs: Any) -> str:
        assert self.signing_secret is not None
        self.token_secret = self.signing_secret.value
        return super().create_token(*args, **kwargs)

    @property
    def openapi_components(self) -> Components:
        # Litestar also writes name, in, scheme and bearerFormat, which OpenAPI 3.1 forbids on
        # an oauth2 scheme; strict validators then reject the whole document.
        return Components(
            security_schemes={
                self.openapi_security_scheme_name: SecurityScheme(
                    type="oauth2",
                    description=self.description,
                    flows=OAuthFlows(password=self.oauth_flow),
                )
            }
        )


def bearer_auth(
    accounts: AccountService,
    secret: SigningSecret,
    *,
    algorithm: str,
    token_minutes: int,
    public_paths: list[str],
) -> OAuth2PasswordBearerAuth[User, Token]:
    """The auth configuration: every route needs credentials unless its ``opt`` marks it public
    or its path matches one of the ``public_paths`` patterns."""

    async def user_for_token(token: Token, _: ASGIConnection[Any, Any, Any, Any]) -> User | None:
        try:
            version = int(token.extras["ver"])
        except (KeyError, TypeError, ValueError):
            return None
        return await accounts.user_for_token(token.sub, version)

    auth = _OAuth2Bearer(
        token_url="/token",  # noqa: S106 - a route
        # Replaced by the signing secret's value before each use: it is known only once the
        # database is open, and this placeholder signs and accepts nothing meanwhile.
        token_secret=secrets.token_urlsafe(64),
        algorithm=algorithm,
        retrieve_user_handler=user_for_token,
        authentication_middleware_class=BearerAuthMiddleware,  # type: ignore[arg-type]
        default_token_expiration=timedelta(minutes=token_minutes),
        require_claims=["exp", "iat", "sub", "jti"],
        oauth_scopes={},  # OpenAPI requires the map, empty or not; we use no scopes
        exclude_opt_key=PUBLIC,
        exclude=public_paths,
        # Litestar's default also skips HEAD; no HEAD route exists, and any future one needs
        # credentials like its GET.
        exclude_http_methods=["OPTIONS"],
        description=(
            "An access token from POST /token (OAuth2 password flow), or an API key from "
            "POST /users/me/api-keys, sent as `Authorization: Bearer ...`."
        ),
    )
    auth.api_key_user = accounts.user_for_api_key
    auth.signing_secret = secret
    return auth


def issue_token(auth: OAuth2PasswordBearerAuth[User, Token], user: User) -> str:
    """A signed access token for ``user``; revoked when the password changes or on disable."""
    return auth.create_token(
        identifier=user.subject,
        token_unique_jwt_id=secrets.token_hex(16),
        token_extras={"ver": user.token_version},
    )


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: the caller must be an admin."""
    if connection.scope.get("method") == "OPTIONS":
        return  # preflights carry no credentials and only learn the allowed methods
    if not connection.user.is_admin:
        raise PermissionDenied("This needs an admin account.")
