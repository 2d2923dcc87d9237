"""``/docs`` (Swagger UI), ``/redoc`` and ``/openapi.json``, rendered by Litestar's own plugins.

Litestar mounts its documentation router, with a catch-all HTML 404, under ``OpenAPIConfig.path``
(``/schema`` here). Mounting it at ``/`` would answer every unknown path with HTML instead of
OpenAI's JSON error, so the three well-known URLs are served here instead.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, get
from litestar.enums import OpenAPIMediaType
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.response import Redirect

from app.accounts.security import PUBLIC

SCHEMA_PATH = "/schema"
_PUBLIC = {PUBLIC: True}
RENDER_PLUGINS = (SwaggerRenderPlugin(), RedocRenderPlugin())
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


@get("/", include_in_schema=False, sync_to_thread=False, opt=_PUBLIC)
def index() -> Redirect:
    """The root sends people to the API documentation."""
    return Redirect("/docs")


docs_handlers = [openapi_json, swagger_ui, redoc, index]
