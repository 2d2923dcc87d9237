"""Command line: ``python -m app serve`` (the default), ``check-config``, ``model ...``,
``users ...``."""

from __future__ import annotations

import os

# llama.cpp's OpenMP threads spin after each parallel region before they sleep; on a small
# machine the default spin starves the event loop that streams the tokens (scripts/bench: at 8
# clients, 200 -> 230 tokens/s on 2 cores). OpenMP reads this once, when llama.cpp loads, so it
# is set here, before anything imports llama_cpp; a value in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

import argparse
import asyncio
import contextlib
import getpass
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import uvicorn
from sqlalchemy.exc import ArgumentError

from app.accounts.auth import configured_jwt_secret
from app.accounts.schemas import NewUser, UserUpdate
from app.accounts.service import AccountService, AdminBootstrapError
from app.accounts.signing import SigningSecret
from app.db import Database, DatabaseUnavailable, SchemaTooNew
from app.errors import ModelNotFound, ServiceError
from app.factory import account_service, build_services, catalog_for, create_app, database
from app.inference import commands
from app.inference.host import ModelState
from app.settings import ConfigError, Settings
from app.system.connections import (
    BACKLOG,
    QuietAcceptErrors,
    connection_cap,
    http_protocol,
)
from app.system.logs import configure_logging
from app.validation import describe

logger = logging.getLogger("app")

_GIL_SWITCH_SECONDS = 0.0005


def main(argv: list[str] | None = None) -> int:
    """Runs the command named in ``argv``; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "check-config":
            catalog_for(settings)
            print("configuration is valid")
            return 0
        if args.command == "model":
            if args.action == "pull":
                return commands.pull(
                    catalog_for(settings),
                    args.models,
                    token=settings.huggingface_token,
                    log_every=settings.download_log_seconds,
                )
            return commands.list_models(catalog_for(settings))
        if args.command == "users":
            return asyncio.run(_users(settings, args))
        if args.command == "db":
            return asyncio.run(_db(settings, args))
        return asyncio.run(serve(settings))
    except (ConfigError, SchemaTooNew, AdminBootstrapError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ModelNotFound as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="A self-hosted, OpenAI-compatible text generation service.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="Fetch the model if needed and serve the API (the default).")
    commands.add_parser(
        "check-config", help="Validate the configuration from the environment and .env, then exit."
    )
    model = commands.add_parser(
        "model", help="Fetch model files ahead of time, or show what is cached and configured."
    ).add_subparsers(dest="action", metavar="ACTION", required=True)
    model.add_parser(
        "pull",
        help="Download and check the configured models' files (for image builds and "
        "air-gapped hosts).",
    ).add_argument(
        "models", nargs="*", metavar="MODEL", help="Model ids or aliases (default: all)."
    )
    model.add_parser("list", help="Show the configured models and the GGUF files in the cache.")
    db = commands.add_parser(
        "db", help="The database: migrate it, or copy it into PostgreSQL."
    ).add_subparsers(dest="action", metavar="ACTION", required=True)
    db.add_parser(
        "upgrade",
        help="Migrate the database (APP_DATABASE_URL, or app.db in APP_DATA_DIR) to this "
        "release's schema; safe beside running replicas, which do the same at start.",
    )
    db.add_parser(
        "copy",
        help="Copy every user, API key, usage row, stored response and the JWT secret into "
        "another, empty database; both are first migrated to this release's schema.",
    ).add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="The target, e.g. postgresql://USER@HOST/DB (the password may come from "
        "PGPASSWORD or ~/.pgpass instead of the URL).",
    )
    users = commands.add_parser(
        "users", help="Manage accounts in the database (APP_DATABASE_URL, or APP_DATA_DIR)."
    ).add_subparsers(dest="action", metavar="ACTION", required=True)
    users.add_parser("list", help="List the users.")
    for action, help_text in (
        ("create", "Create a user (asks for the password, or reads it with --password-stdin)."),
        ("passwd", "Set a user's password; ends their access tokens."),
    ):
        sub = users.add_parser(action, help=help_text)
        sub.add_argument("username")
        sub.add_argument(
            "--password-stdin", action="store_true", help="Read the password from standard input."
        )
        if action == "create":
            sub.add_argument("--admin", action="store_true", help="Make the user an admin.")
    for action, help_text in (
        ("disable", "Disable a user; ends their access tokens and refuses their API keys."),
        ("enable", "Enable a disabled user."),
        ("promote", "Make a user an admin."),
        ("demote", "Take admin rights away from a user."),
        ("delete", "Delete a user and their API keys."),
    ):
        users.add_parser(action, help=help_text).add_argument("username")
    return parser


async def serve(settings: Settings) -> int:
    """Serves until interrupted; exits 1 if the model cannot be fetched or loaded."""
    # The scheduler thread needs the GIL between llama.cpp decodes (which release it) while
    # the event loop holds it to stream chunks; with Python's default 5 ms switch interval
    # llama.cpp's threads sat idle in those hand-overs (scripts/bench: 1.7x -> 2x at C=8).
    sys.setswitchinterval(_GIL_SWITCH_SECONDS)
    services = build_services(settings)
    app = create_app(settings, services)
    host = services.host
    logging.getLogger("asyncio").addFilter(QuietAcceptErrors())
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Slow or endless request headers and connection floods are cut off (slowloris).
        http=http_protocol(
            header_timeout=settings.header_timeout,
            max_connections=connection_cap(settings.max_connections),
        ),
        backlog=BACKLOG,
        log_config=None,
        access_log=False,  # app.access writes one richer line per request
        # The app's lifespan runs around the server (below), so that a problem at start (the
        # database, the first admin) is one sentence rather than a failed server startup.
        lifespan="off",
        # Running streams may finish this long after SIGTERM before they are cut.
        timeout_graceful_shutdown=int(settings.shutdown_grace) or None,
    )
    server = _Server(config, on_exit=host.stop_admitting)

    async def stop_if_model_fails() -> None:
        if await host.wait_settled() is ModelState.FAILED:
            logger.error("stopping: the model is not available")
            server.should_exit = True

    with server.deferring_signals():
        with _first_error():
            async with app.lifespan():
                logger.info("application started")
                watcher = asyncio.create_task(stop_if_model_fails())
                try:
                    await server.serve()
                finally:
                    watcher.cancel()
        logger.info("application shut down")
    return 1 if host.state is ModelState.FAILED else 0


_SHUTDOWN = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _first_error() -> Iterator[None]:
    """Litestar runs the lifespan in a task group, which wraps what a lifespan raised (a
    database from a newer release, say) in an exception group; ``main`` reports it as it is."""
    try:
        yield
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        raise group from None


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app as soon as a shutdown signal arrives, and holding the
    shutdown signals back until the app has shut down (``deferring_signals``)."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._deferred: list[int] = []
        self._handlers: dict[int, Any] = {}

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a shutdown signal as soon as it stops serving, which would end the
        # process before the app's lifespan (draining engines, writing held usage) finishes.
        try:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._deferred.extend(self._captured_signals)
                    self._captured_signals.clear()
        finally:
            # uvicorn has put the previous handlers back: a second SIGTERM while the lifespan
            # shuts down would end the process midway. It is noted instead.
            for sig in _SHUTDOWN:
                handler = signal.signal(sig, lambda sig, _: self._deferred.append(sig))
                self._handlers.setdefault(sig, handler)

    @contextlib.contextmanager
    def deferring_signals(self) -> Iterator[None]:
        """Around the app's whole life: the shutdown signals received while serving and while
        shutting down are raised once it ends (each once), so that supervisors see how the
        process ended; the previous handlers are back however it ends."""
        try:
            yield
        finally:
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            self._handlers.clear()
        for sig in reversed(dict.fromkeys(self._deferred)):
            signal.raise_signal(sig)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # From here on /health answers 503 and new generations are refused, while uvicorn
        # lets the responses in flight finish.
        self._on_exit()
        super().handle_exit(sig, frame)


async def _users(settings: Settings, args: argparse.Namespace) -> int:
    db = database(settings)
    await db.open()
    try:
        accounts = account_service(settings, db)
        await _USER_ACTIONS[args.action](accounts, args)
        return 0
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await db.close()


async def _db(settings: Settings, args: argparse.Namespace) -> int:
    from app.db import migrate
    from app.db.copy import TargetNotEmpty, copy_database

    source = database(settings)
    await source.open()  # migrates
    try:
        if args.action == "upgrade":
            print(f"{source.where} is at schema {await migrate.current(source)} (current)")
            return 0
        try:
            target = Database(args.to)
        except (ValueError, ArgumentError):
            raise ConfigError(
                "--to is not a database URL this service takes: use "
                "postgresql://USER:PASSWORD@HOST[:PORT]/DB or sqlite:///PATH"
            ) from None
        # A secret still in an earlier release's file goes into the source first, and so across.
        await SigningSecret(
            source,
            configured=configured_jwt_secret(settings),
            algorithm=settings.algorithm,
            data_dir=Path(settings.data_dir),
        ).carry()
        await target.open()
        try:
            copied = await copy_database(source, target)
        except TargetNotEmpty as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            await target.close()
        rows = ", ".join(f"{count} {table}" for table, count in copied.items())
        print(f"copied {rows} from {source.where} to {target.where}")
        if settings.jwt_secret_key:
            print("tokens are signed with JWT_SECRET_KEY: give the replicas the same one")
        return 0
    finally:
        await source.close()


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise ConfigError("the two passwords differ")
    else:
        raise ConfigError("no terminal to ask for the password; use --password-stdin")
    return password


def _checked(struct: type[msgspec.Struct], **fields: object) -> msgspec.Struct:
    """Applies the API's own rules (username pattern, password length) to command-line input."""
    try:
        return msgspec.convert(fields, struct)
    except msgspec.ValidationError as exc:
        raise ConfigError(describe(exc)) from None


async def _list(accounts: AccountService, _: argparse.Namespace) -> None:
    print(f"{'id':>4}  {'username':<24} {'admin':<6} {'disabled':<9} created")
    for user in await accounts.users():
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(user.created_at))
        print(
            f"{user.id:>4}  {user.username:<24} {'yes' if user.is_admin else 'no':<6} "
            f"{'yes' if user.disabled else 'no':<9} {created} UTC"
        )


async def _create(accounts: AccountService, args: argparse.Namespace) -> None:
    new = _checked(
        NewUser, username=args.username, password=_read_password(args), is_admin=args.admin
    )
    assert isinstance(new, NewUser)
    await accounts.create_user(new.username, new.password, is_admin=new.is_admin)
    print(f"created {'admin' if new.is_admin else 'user'} {new.username}")


async def _update(accounts: AccountService, username: str, update: UserUpdate, done: str) -> None:
    await accounts.update_user(username, update)
    print(f"{done} {username}")


async def _passwd(accounts: AccountService, args: argparse.Namespace) -> None:
    update = _checked(UserUpdate, password=_read_password(args))
    assert isinstance(update, UserUpdate)
    await _update(accounts, args.username, update, "changed the password of")


async def _delete(accounts: AccountService, args: argparse.Namespace) -> None:
    await accounts.delete_user(args.username)
    print(f"deleted {args.username}")


def _flag(
    update: UserUpdate, done: str
) -> Callable[[AccountService, argparse.Namespace], Awaitable[None]]:
    async def action(accounts: AccountService, args: argparse.Namespace) -> None:
        await _update(accounts, args.username, update, done)

    return action


_USER_ACTIONS: dict[str, Callable[[AccountService, argparse.Namespace], Awaitable[None]]] = {
    "list": _list,
    "create": _create,
    "passwd": _passwd,
    "delete": _delete,
    "disable": _flag(UserUpdate(disabled=True), "disabled"),
    "enable": _flag(UserUpdate(disabled=False), "enabled"),
    "promote": _flag(UserUpdate(is_admin=True), "promoted"),
    "demote": _flag(UserUpdate(is_admin=False), "demoted"),
}


if __name__ == "__main__":
    sys.exit(main())
