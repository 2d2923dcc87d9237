"""``GET /health``: whether the service can generate, and if not, why."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import SkipValidation

from app.accounts.auth import PUBLIC
from app.inference.host import ModelHost, ModelState


class ModelHealth(msgspec.Struct, kw_only=True):
    """One configured model's state."""

    id: str
    state: Annotated[
        str,
        msgspec.Meta(
            description="`starting`, `downloading`, `unloaded` (on disk; loads on the next "
            "request), `loading`, `ready` or `failed`."
        ),
    ]
    download_percent: float | None = None
    error: str | None = None


class Health(msgspec.Struct, kw_only=True):
    """The service's state."""

    status: Annotated[
        str,
        msgspec.Meta(
            description="`ok` when ready; else `starting`, `downloading`, `loading`, `failed` "
            "or `stopping`."
        ),
    ]
    model: Annotated[str, msgspec.Meta(description="The default model's id.")]
    error: str | None = None
    download_percent: Annotated[
        float | None,
        msgspec.Meta(description="While `downloading`: percent of the current file on disk."),
    ] = None
    slots: Annotated[int | None, msgspec.Meta(description="Sequences generated at once.")] = None
    slots_busy: int | None = None
    queue: Annotated[int | None, msgspec.Meta(description="Requests waiting for a slot.")] = None
    models: list[ModelHealth] = msgspec.field(default_factory=list)


@get(
    "/health",
    summary="Health and readiness",
    description="200 with `status: ok` once the default model is loaded; 503 with the state "
    "until then (with the download's percent while downloading).",
    tags=["System"],
    opt={PUBLIC: True},
    responses={503: ResponseSpec(data_container=Health, description="Not ready yet.")},
)
async def health(host: NamedDependency[SkipValidation[ModelHost]]) -> Response[Health]:
    ready = host.state is ModelState.READY and not host.stopping
    stats = host.stats()
    status = "stopping" if host.stopping else "ok" if ready else host.state.value
    return Response(
        Health(
            status=status,
            model=host.model_id,
            error=host.error,
            download_percent=host.download_percent(),
            slots=stats.slots if stats else None,
            slots_busy=stats.busy if stats else None,
            queue=stats.waiting if stats else None,
            models=[
                ModelHealth(
                    id=m.id,
                    state=m.state.value,
                    download_percent=m.download_percent,
                    error=m.error,
                )
                for m in host.models.values()
            ],
        ),
        status_code=200 if ready else 503,
    )
