"""Scale-out: ``shard=(i, n)`` (or ``RANK``/``WORLD_SIZE`` from torchrun) embeds the batches
``k`` with ``k % n == i`` into a shard cache; :func:`merge_shards` joins the shards into the cache a
single process would have written, byte for byte, and runs by itself when the last shard of a set
is written.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from ..cache import Cache, read_cache, write_cache
from ..cache.chunks import WriterLock
from ..validation import VlmprobeError


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (or ``(i, n)``), else torchrun's ``RANK``/``WORLD_SIZE``, else None."""
    if shard is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None or int(world) <= 1:
            return None
        shard = (int(rank), int(world))
    if isinstance(shard, str):
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError:
            raise VlmprobeError(f"--shard {shard!r}: expected i/n, e.g. 0/4.") from None
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise VlmprobeError(f"--shard {i}/{n}: need n >= 1 and 0 <= i < n.")
    return (i, n) if n > 1 else None


def shard_path(target: Path, i: int, n: int) -> Path:
    """Shard files do not end in .h5: stages that scan a directory never take one for a cache."""
    return target.with_name(f"{target.name}.shard-{i}-of-{n}")


def _merge_if_complete(final: Path, n: int) -> Path | None:
    """Whichever shard finishes last merges; a concurrent finisher holding the lock does it."""
    shards = [shard_path(final, j, n) for j in range(n)]
    lock = WriterLock(final)
    if not lock.try_acquire():
        return None
    try:
        if not all(p.exists() for p in shards):
            return None
        return merge_shards(shards, final, locked=True)
    finally:
        lock.release()


def _merged_gpu_decode(shards: list[Cache], position: dict[str, int]) -> dict:
    """The shards' records of GPU decoding (:mod:`.gpu_decode`) as one, in sample order."""
    records = [c.attrs["gpu_decode"] for c in shards if "gpu_decode" in c.attrs]
    if not records:
        return {}
    pil = sorted((position[r], r, w) for g in records
                 for r, w in zip(g["pil"]["relpath"], g["pil"]["why"]))
    return {"gpu_decode": {"nvjpeg": sum(g["nvjpeg"] for g in records),
                           "pil": {"relpath": [r for _, r, _ in pil],
                                   "why": [w for _, _, w in pil]}}}


def merge_shards(shard_files: list[str | Path], target: str | Path | None = None,
                 remove: bool = True, locked: bool = False) -> Path:
    """Join the shard caches of one extraction into the cache one process would have written.

    Refuses shards of different requests (cache keys, batch sizes) and incomplete sets, naming
    the missing shard or samples. The shard files are removed after the merge unless ``remove``
    is False.
    """
    files = [Path(p) for p in shard_files]
    if not files:
        raise VlmprobeError("No shard files given to merge.")
    shards = [read_cache(p) for p in files]
    for p, c in zip(files, shards):
        if not c.shard:
            raise VlmprobeError(f"{p} is a whole cache, not a shard (empty shard attribute).")
    first = shards[0]
    n = int(first.shard.split("/")[1])
    for p, c in zip(files, shards):
        if c.cache_key != first.cache_key:
            raise VlmprobeError(f"{p} was made from other inputs than {files[0]} (cache keys "
                                f"{c.cache_key[:12]} vs {first.cache_key[:12]}); shards of one "
                                "merge must come from the same extract command.")
        same_bs = c.batch_size == first.batch_size
        if not same_bs or not c.shard.endswith(f"/{n}"):
            raise VlmprobeError(f"{p} (shard {c.shard}, batch size {c.batch_size}) "
                                f"does not belong with {files[0]} (shard {first.shard}, batch size "
                                f"{first.batch_size}).")
    have = sorted(int(c.shard.split("/")[0]) for c in shards)
    if have != list(range(n)):
        missing = sorted(set(range(n)) - set(have))
        dup = sorted({s for s in have if have.count(s) > 1})
        raise VlmprobeError(f"Shards to merge must be 0..{n - 1} once each; missing {missing}"
                            f"{f', duplicated {dup}' if dup else ''}. Run `vlmprobe extract "
                            f"--shard i/{n}` for the missing ones.")
    position = {r: j for j, r in enumerate(first.files["relpath"])}
    rows = sorted((position[r], s, j) for s, c in enumerate(shards)
                  for j, r in enumerate(c.relpaths))
    skipped = sorted((position[r], e) for c in shards
                     for r, e in zip(c.skipped["relpath"], c.skipped["error"]))
    covered = [p for p, _, _ in rows] + [p for p, _ in skipped]
    if sorted(covered) != list(range(len(position))):
        raise VlmprobeError(f"Shards {', '.join(map(str, files))} do not cover every sample "
                            f"exactly once ({len(covered)} rows for {len(position)} samples); re-run the "
                            "shards' extract commands.")
    merged = Cache(
        embeddings=np.stack([shards[s].embeddings[j] for _, s, j in rows]).astype(np.float32),
        labels=np.array([shards[s].labels[j] for _, s, j in rows], dtype=np.int64),
        relpaths=[shards[s].relpaths[j] for _, s, j in rows],
        metadata={col: [shards[s].metadata[col][j] for _, s, j in rows] for col in first.metadata},
        skipped={"relpath": [first.files["relpath"][p] for p, _ in skipped],
                 "error": [e for _, e in skipped]},
        class_names=first.class_names, model=first.model, dataset=first.dataset,
        dataset_fingerprint=first.dataset_fingerprint, cache_key=first.cache_key,
        files=first.files,
        attrs=dict(first.attrs, shard="", merged_from=[p.name for p in files],
                   **_merged_gpu_decode(shards, position)),
        taps={t: np.stack([shards[s].taps[t][j] for _, s, j in rows]).astype(np.float32)
              for t in first.taps},
    )
    target = Path(target) if target else files[0].with_name(files[0].name.split(".shard-")[0])
    with contextlib.nullcontext() if locked else WriterLock(target):
        write_cache(target, merged)
    if remove:
        for p in files:
            p.unlink(missing_ok=True)
    return target
