"""llm-service: a self-hosted, OpenAI-compatible text generation service on llama.cpp."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llm-service")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
