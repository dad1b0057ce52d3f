"""Hugging Face hub helpers shared by the hub-backed families, and where weights come from.

The families load through their library's own loaders, which read the HF cache
(``$HF_HUB_CACHE``) and download what is missing. Offline (``HF_HUB_OFFLINE=1``) a model loads
only if ``vlmprobe models fetch`` (or an online run) put its files in the cache, so every load
error says which repos to fetch (and, for gated ones, to accept the licence and log in). An
entry's ``weights`` (a local file or snapshot directory) replaces the hub for its own repo.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..provenance import sha256_file
from ..registry import ModelEntry
from ..validation import VlmprobeError
from .base import Encoder, state_dict_sha256


def local_weights(entry: ModelEntry) -> Path | None:
    """The entry's ``weights`` (a checkpoint file or a snapshot directory), or None."""
    if not entry.weights:
        return None
    path = Path(entry.weights).expanduser()
    if not path.exists():
        raise VlmprobeError(f"Model {entry.name!r}: weights {path} does not exist; point the "
                            "entry's weights at the checkpoint file or snapshot directory.")
    return path


def import_family_package(encoder: Encoder, module: str):
    """The family's library, or an error naming the pip package (``encoder.requires``)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise VlmprobeError(f"Model {encoder.entry.name!r} (family {encoder.family!r}) needs "
                            f"{module} ({e}): pip install {' '.join(encoder.requires)}") from None


def gated_hint(repo_id: str) -> str:
    """What to do for a gated repo: accept its licence, then log in (the current ``hf`` CLI)."""
    return (f"{repo_id} is gated: accept its licence at https://huggingface.co/{repo_id} (logged "
            "in on the website), then `hf auth login` here (or set HF_TOKEN).")


def hub_fix_hint(entry: ModelEntry, *repo_ids: str) -> str:
    """What to do when a hub model's files are not in the cache."""
    from huggingface_hub import constants

    downloads = "; ".join(f"`hf download {r}`" for r in repo_ids)
    hint = (f"Model {entry.name!r} needs these hub repos in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}): `vlmprobe models fetch {entry.name}` with internet "
            f"access (HF_HUB_OFFLINE unset), or {downloads}.")
    if entry.gated:
        hint += " " + gated_hint(repo_ids[0])
    return hint


def weights_sha256(location: str, filenames: tuple[str, ...], revision: str | None,
                   model) -> str:
    """sha256 of the first of ``filenames`` (the library's own order) in a local snapshot
    directory or in the HF cache of hub repo ``location``.

    A sharded checkpoint has no single file: then the loaded state dict is hashed instead.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        path = (Path(location) / name if Path(location).is_dir()
                else try_to_load_from_cache(location, name, revision=revision))
        if isinstance(path, Path) and path.is_file() or isinstance(path, str):
            return sha256_file(path)
    return state_dict_sha256(model)


def hub_file(entry: ModelEntry, source: str, filename: str, revision: str | None = None,
             required: bool = True) -> str | None:
    """Local path of ``filename`` from a hub repo (cache first, download when online) or from a
    local directory ``source``; ``None`` if absent and not ``required``."""
    from pathlib import Path

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    if Path(source).expanduser().is_dir():
        path = Path(source).expanduser() / filename
        if path.is_file():
            return str(path)
        if not required:
            return None
        raise VlmprobeError(f"Model {entry.name!r}: {path} is missing from the local checkpoint "
                            f"directory {source}.")
    try:
        return hf_hub_download(source, filename, revision=revision)
    except EntryNotFoundError:
        if not required:
            return None
        raise VlmprobeError(f"Model {entry.name!r}: {source} has no file {filename!r} (or it is "
                            f"not cached).\n{hub_fix_hint(entry, source)}") from None
    except (OSError, ValueError, HfHubHTTPError) as err:
        raise VlmprobeError(f"Model {entry.name!r}: cannot get {filename} from {source}: {err}\n"
                            f"{hub_fix_hint(entry, source)}") from None
