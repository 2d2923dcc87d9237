"""``/docs`` (Swagger UI), ``/redoc`` and ``/openapi.json``, rendered by Litestar's own plugins.

Litestar mounts its documentation router, with a catch-all HTML 404, under ``OpenAPIConfig.path``
(``/schema`` here). Mounting it at ``/`` would answer every unknown path with HTML instead of
OpenAI's JSON error, so the three well-known URLs are served here instead.

The pages' JavaScript and CSS come from the service itself (``/docs-assets``, vendored by
``scripts/vendor-docs-assets``), not from a CDN, so the docs work on a host without internet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import MediaType, Request, get
from litestar.datastructures import CacheControlHeader
from litestar.enums import OpenAPIMediaType
from litestar.openapi import spec
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from app.accounts.auth import PUBLIC

SCHEMA_PATH = "/schema"
ASSETS_PATH = "/docs-assets"
_ASSETS_DIR = Path(__file__).parent / "static" / "docs"
_PUBLIC = {PUBLIC: True}
_FAVICON = f'<link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">'
RENDER_PLUGINS = (
    SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=_FAVICON,
    ),
    RedocRenderPlugin(
        js_url=f"{ASSETS_PATH}/redoc.standalone.js", google_fonts=False, favicon=_FAVICON
    ),
)
_SWAGGER, _REDOC = RENDER_PLUGINS


def _schema(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return request.app.openapi_schema.to_schema()


@get(
    "/openapi.json",
    media_type=OpenAPIMediaType.OPENAPI_JSON,
    include_in_schema=False,
    sync_to_thread=False,
    opt=_PUBLIC,
)
def openapi_json(request: Request[Any, Any, Any]) -> bytes:
    """The OpenAPI schema."""
    return _SWAGGER.render_json(request, _schema(request))


@get("/docs", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False, opt=_PUBLIC)
def swagger_ui(request: Request[Any, Any, Any]) -> bytes:
    """Swagger UI."""
    return _SWAGGER.render(request, _schema(request))


@get(
    "/redoc", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False, opt=_PUBLIC
)
def redoc(request: Request[Any, Any, Any]) -> bytes:
    """ReDoc."""
    return _REDOC.render(request, _schema(request))


docs_assets = create_static_files_router(
    path=ASSETS_PATH,
    directories=[_ASSETS_DIR],
    name="docs-assets",
    opt=_PUBLIC,
    # The file names carry no version: a day's caching, revalidated after an upgrade.
    cache_control=CacheControlHeader(max_age=86_400),
)

docs_handlers: list[ControllerRouterHandler] = [openapi_json, swagger_ui, redoc, docs_assets]


STREAMING_PATHS = {
    "/v1/completions": "`data: {chunk}` events, then `data: [DONE]`",
    "/v1/chat/completions": "`data: {chunk}` events, then `data: [DONE]`",
    "/v1/responses": "`event: response.*` events, each with its `sequence_number`",
    "/v1/messages": "Anthropic's `event: message_start` ... `message_stop` events",
}


def document_streaming(schema: spec.OpenAPI) -> None:
    """With ``stream: true`` the generation routes answer ``text/event-stream``; Litestar
    documents only the JSON answer of a handler, so the other one is added here."""
    for path, events in STREAMING_PATHS.items():
        item = schema.paths.get(path) if schema.paths else None
        operation = item.post if item is not None else None
        response = operation.responses.get("200") if operation and operation.responses else None
        if isinstance(response, spec.OpenAPIResponse) and response.content is not None:
            response.content["text/event-stream"] = spec.OpenAPIMediaType(
                schema=spec.Schema(
                    description=f"With `stream: true`: {events}.",
                )
            )
