"""``GET /health``: whether the service can generate, and if not, why."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import SkipValidation

from app.accounts.security import PUBLIC
from app.inference.host import ModelHost, ModelState


class Health(msgspec.Struct, kw_only=True):
    """The service's state."""

    status: Annotated[
        str,
        msgspec.Meta(
            description="`ok` when ready; else `starting`, `downloading`, `loading` or `failed`."
        ),
    ]
    model: str
    error: str | None = None


@get(
    "/health",
    summary="Health and readiness",
    description="200 with `status: ok` once the model is loaded; 503 with the state until then.",
    tags=["System"],
    opt={PUBLIC: True},
    responses={503: ResponseSpec(data_container=Health, description="Not ready yet.")},
)
async def health(host: NamedDependency[SkipValidation[ModelHost]]) -> Response[Health]:
    ready = host.state is ModelState.READY
    return Response(
        Health(
            status="ok" if ready else host.state.value,
            model=host.model_id,
            error=host.error,
        ),
        status_code=200 if ready else 503,
    )
