"""Where caches and stage outputs live: explicit options > environment variables > defaults."""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..validation import VlmprobeError
from .schema import Cache, read_cache

CACHE_ENV = "VLMPROBE_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/vlmprobe").expanduser()


def cache_dir(out: str | Path | None = None) -> Path:
    """``--out`` if given, else ``$VLMPROBE_CACHE``, else ``~/.cache/vlmprobe``."""
    if out is not None:
        return Path(out).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR


def cache_path(cache_root: Path, dataset: str, model: str, view: str = "") -> Path:
    """Caches are laid out ``<cache_root>/<dataset>/<model>.h5``, and a non-default view
    (``ImageDataset.cache_view``: label view and pixel choices, e.g. ``level1;classes=a+b`` or
    ``window=minmax;float``) as ``<model>@level1-classes=a+b.h5``, so caches of two views of one
    dataset sit side by side; stage outputs sit beside them."""
    view = re.sub(r"[^A-Za-z0-9.+=-]+", "_", view.replace(";", "-"))
    return Path(cache_root) / dataset / (f"{model}@{view}.h5" if view else f"{model}.h5")


def stage_dir(cache_file: Path, dataset: str, stage: str, out: str | Path | None = None) -> Path:
    """Where a stage writes for one cache: ``<out>/<dataset>/<stage>``, else beside the cache."""
    return (Path(out) / dataset if out else Path(cache_file).parent) / stage


def find_caches(paths: list[str | Path] | None, out: str | Path | None = None) -> list[Path]:
    """Explicit cache files/directories, or every cache under the cache directory."""
    roots = [Path(p).expanduser() for p in paths] if paths else [cache_dir(out)]
    found: list[Path] = []
    for r in roots:
        if r.is_file():
            found.append(r)
        elif r.is_dir():
            found.extend(sorted(p for p in r.rglob("*.h5") if not p.name.startswith(".")))
        else:
            raise VlmprobeError(f"No cache at {r}. Run `vlmprobe extract` first, or pass a cache path.")
    if not found:
        raise VlmprobeError(
            f"No caches (*.h5) under {', '.join(map(str, roots))}. Run `vlmprobe extract --model M "
            f"--dataset D` first, or set ${CACHE_ENV} / pass --out to where the caches are."
        )
    return found


def stage_inputs(caches=None, out: str | Path | None = None,
                 tap: str | None = None) -> tuple[list, Path | None]:
    """What a stage works on and where it writes, one rule for every stage.

    ``caches``: :class:`~vlmprobe.cache.Cache` objects, cache files or folders of them (one or a
    list); outputs go to ``out`` if given, else beside each cache. Without ``caches``: every cache
    under the cache directory ``out`` (default ``$VLMPROBE_CACHE``), outputs beside them.
    ``tap``: a further tap stored in the caches, or "all" (:meth:`Cache.tap_views`).
    """
    if caches is None or (isinstance(caches, (list, tuple)) and not caches):
        loaded, outputs = [read_cache(p) for p in find_caches(None, out)], None
    else:
        loaded = []
        for item in (caches if isinstance(caches, (list, tuple)) else [caches]):
            if isinstance(item, Cache):
                loaded.append(item)
            elif isinstance(item, (str, Path)):
                loaded += [read_cache(p) for p in find_caches([item])]
            else:
                raise VlmprobeError(f"A stage takes caches (vlmprobe.Cache objects, or cache files "
                                    f"and folders), not {type(item).__name__}: {item!r}. Read one "
                                    "with vlmprobe.read_cache(path).")
        outputs = Path(out) if out is not None else None
    return [view for cache in loaded for view in cache.tap_views(tap)], outputs
