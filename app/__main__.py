"""Command line: ``python -m app serve`` (the default)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvicorn

from app.factory import create_app
from app.inference.host import ModelHost, ModelState
from app.settings import ConfigError, Settings

logger = logging.getLogger("app")


def main(argv: list[str] | None = None) -> int:
    """Runs the command named in ``argv``; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="A self-hosted, OpenAI-compatible text generation service.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="Fetch the model if needed and serve the API (the default).")
    commands.add_parser(
        "check-config", help="Validate the configuration from the environment and .env, then exit."
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "check-config":
        print("configuration is valid")
        return 0
    return asyncio.run(serve(settings))


def configure_logging(level: str) -> None:
    """Readable log lines on stderr, uvicorn's included."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # huggingface_hub installs its own stderr handler; send its records through ours instead,
    # as its documentation advises, so each line appears once and in one format.
    hub_logger = logging.getLogger("huggingface_hub")
    hub_logger.handlers.clear()
    hub_logger.propagate = True


async def serve(settings: Settings) -> int:
    """Serves until interrupted; exits 1 if the model cannot be fetched or loaded."""
    app = create_app(settings)
    host: ModelHost = app.state.host
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, lifespan="on")
    )

    async def stop_if_model_fails() -> None:
        if await host.wait_settled() is ModelState.FAILED:
            logger.error("stopping: the model is not available")
            server.should_exit = True

    watcher = asyncio.create_task(stop_if_model_fails())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    return 1 if host.state is ModelState.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
