"""``python -m app model pull`` and ``model list``: model files ahead of time, and at a glance."""

from __future__ import annotations

import sys
from pathlib import Path

from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound

from app.errors import ModelUnavailable
from app.inference.catalog import Catalog
from app.inference.model_files import cached_file, resolve_model_file
from app.inference.progress import DownloadProgress


def pull(catalog: Catalog, names: list[str], *, token: str | None, log_every: float) -> int:
    """Downloads and checks the named models' files (all configured ones by default), with the
    Hub ``token``, logging progress every ``log_every`` seconds off a terminal."""
    specs = [catalog.find(name) for name in names] if names else list(catalog.models)
    for spec in specs:
        progress = DownloadProgress(spec.file or spec.id, log_every=log_every)
        try:
            path = resolve_model_file(spec, token=token, progress=progress)
        except ModelUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{spec.id}: {path} ({_size(path)})")
    return 0


def list_models(catalog: Catalog) -> int:
    """Prints the configured models and whether each file is here, then other cached GGUFs."""
    print("configured models (the first is the default):")
    for spec in catalog.models:
        path = cached_file(spec)
        aliases = f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        where = (
            f"{path} ({_size(path)})" if path else "not downloaded: run 'python -m app model pull'"
        )
        print(f"  {spec.id}{aliases}\n    source: {spec.source}\n    file:   {where}")
    others = _other_cached_ggufs(catalog)
    if others:
        print("other GGUF files in the Hugging Face cache:")
        for line in others:
            print(f"  {line}")
    return 0


def _other_cached_ggufs(catalog: Catalog) -> list[str]:
    try:
        cache = scan_cache_dir()
    except CacheNotFound:
        return []
    configured = {p.resolve() for p in map(cached_file, catalog.models) if p is not None}
    lines = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        for revision in repo.revisions:
            for file in revision.files:
                if file.file_name.lower().endswith(".gguf") and (
                    file.blob_path.resolve() not in configured
                ):
                    lines.append(
                        f"{file.file_name} from {repo.repo_id}@{revision.commit_hash} "
                        f"({_size(file.file_path)})"
                    )
    return lines


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"
