"""The account service on a real SQLite file: password hashing rules and login throttling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from argon2 import PasswordHasher

from app.accounts.passwords import Passwords
from app.accounts.schemas import UserUpdate
from app.accounts.service import AccountService, AdminBootstrapError
from app.accounts.store import AccountStore
from app.accounts.throttle import LoginThrottle
from app.db import Database
from app.errors import Conflict, InvalidCredentials, TooManyAttempts
from app.factory import account_service
from app.settings import Settings

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


class CountingHasher(PasswordHasher):
    """Records which hashes ``verify`` was asked to check."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8 * 1024, parallelism=1)
        self.checked: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.checked.append(str(hash))
        return super().verify(hash, password)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await db.open()
    yield db
    await db.close()


def service(db: Database, hasher: PasswordHasher) -> AccountService:
    return AccountService(AccountStore(db), Passwords(hasher), registration_open=True)


async def test_an_unknown_user_costs_a_full_password_check(db: Database) -> None:
    hasher = CountingHasher()
    accounts = service(db, hasher)
    await accounts.create_user("kim", "kim-password", is_admin=False)
    hasher.checked.clear()
    for username in ("kim", "nobody"):
        with pytest.raises(InvalidCredentials):
            await accounts.authenticate(username, "wrong-password")
    assert len(hasher.checked) == 2, "both cases must run argon2 once"
    assert all(h.startswith("$argon2id$") for h in hasher.checked)


async def test_login_upgrades_a_hash_made_with_older_parameters(db: Database) -> None:
    await service(db, FAST).create_user("kim", "kim-password", is_admin=False)
    store = AccountStore(db)
    before = await store.user_by_name("kim")
    assert before is not None
    assert "m=8192,t=1,p=1" in before.password_hash

    stronger = PasswordHasher(time_cost=2, memory_cost=16 * 1024, parallelism=1)
    user = await service(db, stronger).authenticate("kim", "kim-password")
    after = await store.user_by_name("kim")
    assert after is not None
    assert "m=16384,t=2,p=1" in after.password_hash
    assert after.token_version == before.token_version, "an upgrade must not end tokens"
    assert user.id == before.id
    assert await service(db, stronger).authenticate("kim", "kim-password")


async def test_passwords_are_stored_as_argon2id(db: Database) -> None:
    await service(db, FAST).create_user("kim", "kim-password", is_admin=False)
    user = await AccountStore(db).user_by_name("KIM")
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert "kim-password" not in user.password_hash


async def test_the_first_admin_is_never_an_existing_ordinary_user(db: Database) -> None:
    accounts = service(db, FAST)
    await accounts.create_user("admin", "someone-registered", is_admin=False)
    with pytest.raises(AdminBootstrapError, match="ordinary user"):
        await accounts.ensure_admin("admin", None)
    assert await accounts.ensure_admin("root", "root-password") is None
    assert await accounts.ensure_admin("other", None) is None, "an admin exists now"


async def fail(throttle: LoginThrottle, *keys: str) -> None:
    with contextlib.suppress(InvalidCredentials):
        async with throttle.attempt(*keys) as attempt:
            attempt.failed()
            raise InvalidCredentials()


async def test_throttle_pauses_a_key_then_lets_it_go(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    throttle = LoginThrottle(max_failures=2, window_seconds=60)
    await fail(throttle, "user:kim")
    now[0] += 10
    await fail(throttle, "user:kim")
    with pytest.raises(TooManyAttempts) as caught:
        async with throttle.attempt("user:kim", "addr:1.2.3.4"):
            pytest.fail("a paused key must not get to check a password")
    assert caught.value.retry_after == 50  # until the first failure is 60 s old
    async with throttle.attempt("user:other"):
        pass
    now[0] += 51
    async with throttle.attempt("user:kim"):
        pass


async def test_a_correct_login_clears_the_usernames_failures() -> None:
    throttle = LoginThrottle(max_failures=2, window_seconds=60)
    await fail(throttle, "user:kim", "addr:a")
    async with throttle.attempt("user:kim", "addr:a", clears="user:kim"):
        pass  # the right password
    await fail(throttle, "user:kim", "addr:a")
    async with throttle.attempt("user:kim"):
        pass
    with pytest.raises(TooManyAttempts):
        async with throttle.attempt("addr:a"):
            pass


async def test_concurrent_attempts_reserve_their_place_before_the_check() -> None:
    throttle = LoginThrottle(max_failures=3, window_seconds=60)
    checking = 0
    checked = []

    async def guess() -> None:
        nonlocal checking
        async with throttle.attempt("user:kim") as attempt:
            checking += 1
            checked.append(checking)
            await asyncio.sleep(0.01)  # a password check takes a while
            checking -= 1
            attempt.failed()

    results = await asyncio.gather(*(guess() for _ in range(20)), return_exceptions=True)
    assert len(checked) <= 3
    assert sum(isinstance(r, TooManyAttempts) for r in results) >= 17


async def test_the_settings_choose_the_hash_cost_and_a_change_upgrades_at_login(
    db: Database,
) -> None:
    cheap = Settings.from_mapping(
        {"APP_PASSWORD_HASH_MEMORY_KIB": "1024", "APP_PASSWORD_HASH_TIME_COST": "1"}
    )
    await account_service(cheap, db).create_user("kim", "kim-password", is_admin=False)
    await account_service(Settings.from_mapping({}), db).authenticate("kim", "kim-password")
    user = await AccountStore(db).user_by_name("kim")
    assert user is not None
    assert "$m=65536,t=3,p=4$" in user.password_hash  # argon2-cffi's RFC 9106 defaults


async def test_two_admins_removing_each_other_at_once_leave_one(db: Database) -> None:
    accounts = service(db, FAST)
    for name in ("ann", "ben"):
        await accounts.create_user(name, f"{name}-password-1", is_admin=True)
    # Each request checks "another enabled admin exists" and then writes: together, on two
    # replicas, both checks could pass. The check and the write are one transaction, with the
    # admins locked: exactly one of the two goes through.
    outcomes = await asyncio.gather(
        accounts.update_user("ann", UserUpdate(disabled=True)),
        accounts.update_user("ben", UserUpdate(is_admin=False)),
        return_exceptions=True,
    )
    assert sum(isinstance(outcome, Conflict) for outcome in outcomes) == 1, outcomes
    enabled_admins = [u for u in await accounts.users() if u.is_admin and not u.disabled]
    assert len(enabled_admins) == 1
    with pytest.raises(Conflict, match="last enabled admin"):
        await accounts.delete_user(enabled_admins[0].username)
