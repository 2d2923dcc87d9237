"""``GET /``: the console's page, and its static files under ``/console/static``.

The page holds no data and needs no credentials; everything it shows comes from the API, which
the module calls with the access token it keeps in memory. Its Content-Security-Policy allows
scripts, styles and connections from this origin only, no inline script or style, no plugin, no
framing: an injected ``<script>`` or ``onerror=`` attribute does not run, and nothing on the page
can send data to another origin.
"""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from app.accounts.auth import PUBLIC

_STATIC = Path(__file__).parent / "static"
_PUBLIC = {PUBLIC: True}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# Outside static/: the page is served only here, with its headers, never as a plain file.
_PAGE = (Path(__file__).parent / "page.html").read_bytes()


@get("/", include_in_schema=False, sync_to_thread=False, opt=_PUBLIC, media_type=MediaType.HTML)
def console_page() -> Response[bytes]:
    """The console (sign in, chat, account, admin)."""
    return Response(_PAGE, headers=PAGE_HEADERS, media_type=MediaType.HTML)


console_assets = create_static_files_router(
    path="/console/static",
    directories=[_STATIC],
    name="console-static",
    opt=_PUBLIC,
    # Revalidated on each load: an upgrade's new module is picked up at once.
    cache_control=CacheControlHeader(no_cache=True),
)

console_handlers: list[ControllerRouterHandler] = [console_page, console_assets]
