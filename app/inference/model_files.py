"""Finding a model's GGUF file: a local path, or a download into the Hugging Face cache.

Downloads go through ``huggingface_hub`` into its standard cache (``HF_HOME``/``HF_HUB_CACHE``), so
other tools share the file and later starts find it there. ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``
work as they do for every Hub client. ``huggingface_hub`` resumes a transfer after a dropped
connection and checks the size; on top of that a download that an earlier run left partway is
finished rather than started over, and every file from the Hub is checked against its sha256, which
the cache names its blobs by (the Hub's LFS ETag), so a truncated or damaged copy is fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from huggingface_hub import (
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # documented

from app.errors import ModelUnavailable
from app.inference.catalog import ModelSpec
from app.inference.progress import DownloadProgress

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_HOW_TO_AUTHENTICATE = (
    "set HUGGINGFACE_TOKEN (or HF_TOKEN) to a token from https://huggingface.co/settings/tokens"
)


def resolve_model_file(
    spec: ModelSpec, *, token: str | None, progress: DownloadProgress | None = None
) -> Path:
    """The local path of ``spec``'s GGUF, downloaded and checked first if needed (blocking).

    Raises ``ModelUnavailable`` with one sentence that says what to do.
    """
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise ModelUnavailable(
                f"{spec.setting('path')} points to {path}, which is not a file; fix the path, "
                "or have the model downloaded from the Hub instead."
            )
        check_gguf(path)
        return path

    path = _download(spec, token, progress, force=False)
    if not _intact(path):
        logger.warning(
            "the cached copy of %s is damaged (its sha256 does not match the Hub's); "
            "downloading it again",
            spec.source,
        )
        _discard(path)
        path = _download(spec, token, progress, force=True)
        if not _intact(path):
            raise ModelUnavailable(
                f"The Hub sent {spec.source} with a sha256 other than it announced; try again, "
                f"or download the file yourself and set {spec.setting('path')}."
            )
    check_gguf(path)
    logger.info("model file for %r ready at %s", spec.id, path)
    return path


def cached_file(spec: ModelSpec) -> Path | None:
    """Where ``spec``'s file is on this machine now, without any network; None if it is not."""
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        return path if path.is_file() else None
    repo, file = spec.hub_file
    found = try_to_load_from_cache(repo, file, revision=spec.revision)
    return Path(found) if isinstance(found, str) else None


def check_gguf(path: Path) -> None:
    """Raises ``ModelUnavailable`` unless ``path`` starts like a GGUF file."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelUnavailable(f"Cannot read the model file {path}: {exc.strerror}.") from None
    if magic != GGUF_MAGIC:
        raise ModelUnavailable(
            f"The model file {path} is not a GGUF file; llama.cpp serves only .gguf models "
            "(convert it, or pick a GGUF file)."
        )


def _download(
    spec: ModelSpec, token: str | None, progress: DownloadProgress | None, *, force: bool
) -> Path:
    repo, file = spec.hub_file
    if force and constants.HF_HUB_OFFLINE:
        raise _unreachable(spec)
    logger.info("fetching %s (the Hugging Face cache is used when it has the file)", spec.source)
    try:
        if not force:
            _resume_partial(repo, file, spec.revision, token, progress)
        return Path(
            hf_hub_download(
                repo_id=repo,
                filename=file,
                revision=spec.revision,
                token=token or None,
                force_download=force,
                tqdm_class=progress.bar_class() if progress is not None else None,
            )
        )
    except GatedRepoError:
        raise ModelUnavailable(
            f"{spec.repo} is gated: accept its terms on the Hub with your account and "
            f"{_HOW_TO_AUTHENTICATE}."
        ) from None
    except RevisionNotFoundError:
        raise ModelUnavailable(
            f"{spec.repo} has no revision {spec.revision!r}; check {spec.setting('revision')}."
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):  # before their base class, next
        raise _unreachable(spec) from None
    except EntryNotFoundError:
        raise ModelUnavailable(
            f"{spec.repo}@{spec.revision} has no file {spec.file!r}; check {spec.setting('file')}."
        ) from None
    except HfHubHTTPError as exc:
        raise ModelUnavailable(_http_failure(spec, exc, token)) from None
    except OSError as exc:
        raise ModelUnavailable(f"Cannot download {spec.source}: {exc}.") from None


def _resume_partial(
    repo: str, file: str, revision: str, token: str | None, progress: DownloadProgress | None
) -> None:
    """Finishes a download that an earlier run left partway, so that it is not started over.

    ``huggingface_hub`` resumes within one run after a dropped connection, but each run writes
    its own ``<etag>.<random>.incomplete`` file and starts from zero. A killed run's file is
    adopted here and completed with the library's own ranged ``http_get``, then moved to the
    blob name where ``hf_hub_download`` finds it (and only links it into the snapshot).
    """
    if constants.HF_HUB_OFFLINE:
        return
    repo_dir = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    blobs = repo_dir / "blobs"
    if not blobs.is_dir() or not any(blobs.glob("*.incomplete")):
        return  # nothing left over: no extra request to the Hub
    meta = get_hf_file_metadata(hf_hub_url(repo, file, revision=revision), token=token or None)
    if meta.etag is None or not _SHA256.match(meta.etag) or (blobs / meta.etag).exists():
        return
    partial = blobs / f"{meta.etag}.resume.incomplete"
    leftovers = [p for p in blobs.glob(f"{meta.etag}.*.incomplete") if p != partial]
    for leftover in sorted(leftovers, key=lambda p: p.stat().st_size):
        if not partial.exists() or leftover.stat().st_size > partial.stat().st_size:
            leftover.replace(partial)
        else:
            leftover.unlink()
    if not partial.exists():
        return
    with partial.open("ab") as f:
        http_get(
            meta.location,
            f,
            resume_size=f.tell(),
            headers=build_hf_headers(token=token or None),
            expected_size=meta.size,
            displayed_filename=file,
            tqdm_class=progress.bar_class() if progress is not None else None,
        )
    partial.replace(blobs / meta.etag)


def _unreachable(spec: ModelSpec) -> ModelUnavailable:
    return ModelUnavailable(
        f"Cannot download {spec.source}: the Hub is unreachable (or HF_HUB_OFFLINE is set) and "
        "the Hugging Face cache has no good copy; run 'python -m app model pull' where the Hub "
        f"is reachable and copy the cache (HF_HOME) over, or set {spec.setting('path')} to a "
        "local GGUF file."
    )


def _http_failure(spec: ModelSpec, exc: HfHubHTTPError, token: str | None) -> str:
    status = exc.response.status_code if exc.response is not None else None
    if status == 401 and not token:
        return (
            f"The Hub wants a token for {spec.repo} (401): it is private or gated, or does not "
            f"exist; {_HOW_TO_AUTHENTICATE}, and check {spec.setting('repo')}."
        )
    if status == 401:
        return (
            f"The Hub refused the token for {spec.repo} (401): the token is invalid or expired, "
            "or the repository does not exist; create a new token at "
            f"https://huggingface.co/settings/tokens and check {spec.setting('repo')}."
        )
    if status == 403:
        return (
            f"The token lacks access to {spec.repo} (403): accept the repository's terms on the "
            "Hub with the token's account, and give the token read access."
        )
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        return (
            f"The Hub has no repository {spec.repo} that this token can see; check "
            f"{spec.setting('repo')}, and set HUGGINGFACE_TOKEN if it is private."
        )
    return (
        f"The Hub answered with a {status or 'failed'} error while downloading {spec.source}; "
        "try again later."
    )


def _intact(path: Path) -> bool:
    """Whether a file from the Hub cache matches the sha256 its blob is named by.

    Files that are not in LFS have a git hash as their name, not a sha256; those (small text
    files, never a GGUF) pass unchecked.
    """
    expected = path.resolve().name
    if not _SHA256.match(expected):
        return True
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() == expected


def _discard(path: Path) -> None:
    """Removes a damaged cached file: the blob and the snapshot's link to it."""
    path.resolve().unlink(missing_ok=True)
    path.unlink(missing_ok=True)
