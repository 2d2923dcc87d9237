"""Finding the GGUF file to serve: a local path, or a download into the Hugging Face cache.

Downloads go through ``huggingface_hub`` into its standard cache (``HF_HOME``/``HF_HUB_CACHE``), so
other tools share the file and later starts find it there. ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``
work as they do for every Hub client.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from app.errors import ModelUnavailable
from app.settings import Settings

logger = logging.getLogger(__name__)


def resolve_model_file(settings: Settings) -> Path:
    """The local path of the configured GGUF, downloading it first if needed (blocking).

    Raises ``ModelUnavailable`` with one sentence that says what to do.
    """
    if settings.model_path is not None:
        path = Path(settings.model_path).expanduser()
        if not path.is_file():
            raise ModelUnavailable(
                f"APP_MODEL_PATH points to {path}, which is not a file; fix the path or unset "
                "it to download APP_MODEL_FILE from APP_MODEL_REPO."
            )
        return path

    where = f"{settings.model_file} from {settings.model_repo}@{settings.model_revision}"
    logger.info("fetching %s (the Hugging Face cache is used when it has the file)", where)
    try:
        path = Path(
            hf_hub_download(
                repo_id=settings.model_repo,
                filename=settings.model_file,
                revision=settings.model_revision,
                token=settings.huggingface_token or None,
            )
        )
    except GatedRepoError:
        raise ModelUnavailable(
            f"{settings.model_repo} is gated: accept its terms on the Hub and set "
            "HUGGINGFACE_TOKEN (or HF_TOKEN) to a token of an account with access."
        ) from None
    except RepositoryNotFoundError:
        raise ModelUnavailable(
            f"The Hub has no repository {settings.model_repo} that this token can see; check "
            "APP_MODEL_REPO, and set HUGGINGFACE_TOKEN if the repository is private."
        ) from None
    except RevisionNotFoundError:
        raise ModelUnavailable(
            f"{settings.model_repo} has no revision {settings.model_revision!r}; check "
            "APP_MODEL_REVISION."
        ) from None
    except LocalEntryNotFoundError:
        raise ModelUnavailable(
            f"Cannot download {where}: the Hub is unreachable (or HF_HUB_OFFLINE is set) and the "
            "file is not in the Hugging Face cache; connect once, or set APP_MODEL_PATH to a "
            "local GGUF file."
        ) from None
    except EntryNotFoundError:
        raise ModelUnavailable(
            f"{settings.model_repo} has no file {settings.model_file!r}; check APP_MODEL_FILE."
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an"
        raise ModelUnavailable(
            f"The Hub answered with {status} error while downloading {where}; try again later."
        ) from None
    except OSError as exc:
        raise ModelUnavailable(f"Cannot download {where}: {exc}.") from None
    logger.info("model file ready at %s", path)
    return path
