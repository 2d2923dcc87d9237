"""Account routes: sign-up and login (public), the caller's own account, administration."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, Parameter, SkipValidation
from litestar.security.jwt import OAuth2PasswordBearerAuth, Token
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from app.accounts.auth import PUBLIC, admin_only, issue_token
from app.accounts.limits import Limits
from app.accounts.schemas import (
    ApiKeyRequest,
    ApiKeyView,
    NewApiKey,
    NewUser,
    PasswordChange,
    Registration,
    TokenRequest,
    TokenResponse,
    User,
    UserUpdate,
    UserView,
)
from app.accounts.service import AccountService
from app.accounts.throttle import LoginThrottle
from app.accounts.usage import UsageLedger, UsageReport, UserDayUsage
from app.error_responses import error_responses
from app.errors import InvalidCredentials, InvalidRequest, WrongPassword

Accounts = NamedDependency[SkipValidation[AccountService]]
LimitsDependency = NamedDependency[SkipValidation[Limits]]
Ledger = NamedDependency[SkipValidation[UsageLedger]]
AuthRequest = Request[User, Token | None, Any]


class AuthController(Controller):
    """Public: create an account, exchange a password for an access token."""

    tags = ["Accounts"]  # noqa: RUF012 - Litestar reads it as a class attribute
    opt = {PUBLIC: True}  # noqa: RUF012

    @post(
        "/register",
        summary="Create an account",
        description="Open to anyone unless `APP_REGISTRATION=closed`; then admins create users.",
        responses=error_responses(400, 403, 409),
    )
    async def register(self, data: Annotated[Registration, Body()], accounts: Accounts) -> UserView:
        return (await accounts.register(data.username, data.password)).view()

    @post(
        "/token",
        summary="Get an access token",
        description=(
            "The OAuth2 password flow, form-encoded: `grant_type=password&username=...&"
            "password=...`. Send the token as `Authorization: Bearer <access_token>`. Repeated "
            "failures for a username or from an address are paused with 429 and `Retry-After`."
        ),
        status_code=HTTP_200_OK,
        responses=error_responses(400, 401, 429),
    )
    async def token(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[TokenRequest, Body(media_type=RequestEncodingType.URL_ENCODED)],
        accounts: Accounts,
        auth: NamedDependency[SkipValidation[OAuth2PasswordBearerAuth[User, Token]]],
        login_throttle: NamedDependency[SkipValidation[LoginThrottle]],
    ) -> TokenResponse:
        if data.grant_type not in (None, "", "password"):
            raise InvalidRequest("Only grant_type=password is supported.", param="grant_type")
        username = f"user:{data.username.lower()}"
        address = f"addr:{request.client.host if request.client else '-'}"
        async with login_throttle.attempt(username, address, clears=username) as attempt:
            try:
                user = await accounts.authenticate(data.username, data.password)
            except InvalidCredentials:
                attempt.failed()
                raise
        return TokenResponse(
            access_token=issue_token(auth, user),
            expires_in=int(auth.default_token_expiration.total_seconds()),
        )


class MeController(Controller):
    """The caller's own account and API keys."""

    path = "/users/me"
    tags = ["Accounts"]  # noqa: RUF012

    @get(summary="Your account", responses=error_responses(401))
    async def me(self, request: AuthRequest) -> UserView:
        return request.user.view()

    @post(
        "/password",
        summary="Change your password",
        description=(
            "Ends every access token issued before; API keys keep working. Wrong current "
            "passwords are throttled like logins (429 with `Retry-After`)."
        ),
        status_code=HTTP_204_NO_CONTENT,
        responses=error_responses(400, 401, 429),
    )
    async def change_password(
        self,
        request: AuthRequest,
        data: Annotated[PasswordChange, Body()],
        accounts: Accounts,
        login_throttle: NamedDependency[SkipValidation[LoginThrottle]],
    ) -> None:
        # A stolen token or API key must not be a way to guess the password without limit.
        account = f"user:{request.user.username.lower()}"
        async with login_throttle.attempt(account) as attempt:
            try:
                await accounts.change_password(
                    request.user, data.current_password, data.new_password
                )
            except WrongPassword:
                attempt.failed()
                raise

    @get(
        "/usage",
        summary="Your usage and limits",
        description=(
            "Requests and tokens per UTC day (newest first, days with use only), your limits "
            "and today's generated tokens. Streamed requests count what was generated, also "
            "when the client left early."
        ),
        responses=error_responses(400, 401),
    )
    async def usage(
        self,
        request: AuthRequest,
        limits: LimitsDependency,
        days: Annotated[int, Parameter(ge=1, le=366, description="How many days back.")] = 30,
    ) -> UsageReport:
        return await limits.report(request.user, days)

    @get("/api-keys", summary="List your API keys", responses=error_responses(401))
    async def api_keys(self, request: AuthRequest, accounts: Accounts) -> list[ApiKeyView]:
        return await accounts.api_keys(request.user)

    @post(
        "/api-keys",
        summary="Create an API key",
        description="The key is in the response this once; only its hash is stored.",
        responses=error_responses(400, 401),
    )
    async def create_api_key(
        self, request: AuthRequest, data: Annotated[ApiKeyRequest, Body()], accounts: Accounts
    ) -> NewApiKey:
        return await accounts.create_api_key(request.user, data.name)

    @delete(
        "/api-keys/{key_id:int}",
        summary="Revoke an API key",
        responses=error_responses(401, 404),
    )
    async def revoke_api_key(
        self, request: AuthRequest, key_id: FromPath[int], accounts: Accounts
    ) -> None:
        await accounts.revoke_api_key(request.user, key_id)


class AdminController(Controller):
    """Administration of every account; admins only."""

    path = "/admin/users"
    tags = ["Admin"]  # noqa: RUF012
    guards = [admin_only]  # noqa: RUF012

    @get(summary="List users", responses=error_responses(401, 403))
    async def list_users(self, accounts: Accounts) -> list[UserView]:
        return [user.view() for user in await accounts.users()]

    @post(summary="Create a user", responses=error_responses(400, 401, 403, 409))
    async def create_user(self, data: Annotated[NewUser, Body()], accounts: Accounts) -> UserView:
        user = await accounts.create_user(data.username, data.password, is_admin=data.is_admin)
        return user.view()

    @get("/{username:str}", summary="Show a user", responses=error_responses(401, 403, 404))
    async def show_user(self, username: FromPath[str], accounts: Accounts) -> UserView:
        return (await accounts.user(username)).view()

    @patch(
        "/{username:str}",
        summary="Change a user",
        description=(
            "Disable or enable (`disabled`), grant or revoke admin (`is_admin`), reset the "
            "password (`password`). Disabling or a new password ends the user's access tokens. "
            "The last enabled admin cannot be disabled or demoted."
        ),
        responses=error_responses(400, 401, 403, 404, 409),
    )
    async def update_user(
        self, username: FromPath[str], data: Annotated[UserUpdate, Body()], accounts: Accounts
    ) -> UserView:
        return (await accounts.update_user(username, data)).view()

    @delete(
        "/{username:str}",
        summary="Delete a user",
        description="Deletes the account and its API keys. The last enabled admin stays.",
        responses=error_responses(401, 403, 404, 409),
    )
    async def delete_user(self, username: FromPath[str], accounts: Accounts) -> None:
        await accounts.delete_user(username)


class AdminUsageController(Controller):
    """Every user's usage; admins only."""

    path = "/admin/usage"
    tags = ["Admin"]  # noqa: RUF012
    guards = [admin_only]  # noqa: RUF012

    @get(
        summary="Usage of all users",
        description="Requests and tokens per user and UTC day, from `since` to `until` "
        "(inclusive; both default to today).",
        responses=error_responses(400, 401, 403),
    )
    async def usage(
        self,
        ledger: Ledger,
        since: Annotated[date | None, Parameter(description="First day, YYYY-MM-DD.")] = None,
        until: Annotated[date | None, Parameter(description="Last day, YYYY-MM-DD.")] = None,
    ) -> list[UserDayUsage]:
        today = ledger.today()
        return await ledger.everyone(
            since.isoformat() if since else today, until.isoformat() if until else today
        )
