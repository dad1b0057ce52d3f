"""Crash-safe extraction state: a writer lock and a work directory of checksummed chunk files.

A ``kill -9`` during an HDF5 metadata write can leave the whole file unreadable, so extraction
never writes HDF5 incrementally. Each batch of embeddings becomes one small file (temp name,
fsync, rename), and the cache is assembled from them only when every chunk exists. A killed run
loses at most the batches in flight (:class:`ChunkWriter` lets a few wait); re-running the same
command continues from the chunks on disk.

Work directory ``.<cache name>.work/`` beside the target cache::

    manifest.json         what the chunks are of: cache key, sample count, batch size, shard
    chunk-000012.bin      chunk 12 = samples [12*B, 13*B): MAGIC + npz(idx, embeddings,
                          failed_idx, failed_error, tap/<name> per extra tap,
                          cpu_decoded_idx/_why where GPU decoding fell back) + sha256 of
                          the npz bytes

Chunk boundaries are fixed by the batch size in the manifest, so a resumed run encodes exactly
the batches an uninterrupted one would, and the cache is bitwise identical.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..validation import VlmprobeError

MAGIC = b"VLMPCHK1"
_DIGEST = 32


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def io_error(path: Path, e: Exception, what: str) -> VlmprobeError:
    """An OS error while writing, as a message that says what to do."""
    hint = {errno.ENOSPC: "the disk is full; free space", errno.EDQUOT: "the disk quota is "
            "exceeded; free space", errno.EACCES: "permission denied; fix the directory's "
            "permissions or pass --out to a writable directory",
            errno.EPERM: "operation not permitted; is the directory protected or immutable?",
            errno.EROFS: "the file system is read-only; pass --out to a writable directory",
            errno.EFBIG: "the file exceeds the file system's or the process's file-size limit"}
    code = getattr(e, "errno", None) or next(  # h5py wraps errno in its message
        (c for c in hint if f"errno = {c}," in str(e)), None)
    return VlmprobeError(f"Could not {what} {path}: {getattr(e, 'strerror', None) or e} "
                         f"({hint.get(code, 'see the system error')}). What was written before "
                         "is kept; re-run the same command to continue.")


@contextmanager
def written_beside(path: Path, what: str = "write") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to (``.<name>.tmp-<pid>``: a writer that takes
    the format from the suffix must be given it), fsynced and renamed onto ``path`` when the block ends
    without error, removed otherwise: a reader, or a run killed at any point, finds ``path``
    either absent, as it was, or whole (every output file of every stage is written so)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # h5py reports some failed writes as RuntimeError
        raise io_error(path, e, what) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` so that ``path`` is either absent or whole."""
    with written_beside(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@dataclass
class Chunk:
    """One batch's outcome: embeddings of the readable samples, errors of the others."""

    idx: np.ndarray  # int64 [b] sample indices, ascending
    embeddings: np.ndarray  # float32 [b, d]
    failed_idx: np.ndarray  # int64 [k]
    failed_error: list[str]
    taps: dict[str, np.ndarray] = field(default_factory=dict)  # extra taps, float32 [b, d_tap]
    #: GPU fast decode: samples decoded by PIL instead of nvJPEG, and why
    cpu_decoded: list[tuple[int, str]] = field(default_factory=list)


def encode_chunk(chunk: Chunk) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, idx=np.asarray(chunk.idx, np.int64),
             embeddings=np.asarray(chunk.embeddings, np.float32),
             failed_idx=np.asarray(chunk.failed_idx, np.int64),
             failed_error=np.asarray(chunk.failed_error, dtype=str),
             **{f"tap/{t}": np.asarray(e, np.float32) for t, e in chunk.taps.items()},
             **({"cpu_decoded_idx": np.array([i for i, _ in chunk.cpu_decoded], np.int64),
                 "cpu_decoded_why": np.array([w for _, w in chunk.cpu_decoded], dtype=str)}
                if chunk.cpu_decoded else {}))
    payload = buf.getvalue()
    return MAGIC + payload + hashlib.sha256(payload).digest()


def decode_chunk(path: Path) -> Chunk:
    """Read a chunk file, verifying its checksum; a damaged file is named in the error."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise VlmprobeError(f"Could not read chunk {path}: {e}.") from None
    payload = raw[len(MAGIC):-_DIGEST]
    if (not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + _DIGEST
            or hashlib.sha256(payload).digest() != raw[-_DIGEST:]):
        raise VlmprobeError(f"Chunk {path} is corrupt (checksum mismatch). Delete it and re-run "
                            "the same command to recompute that chunk.")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            return Chunk(z["idx"], z["embeddings"], z["failed_idx"],
                         [str(s) for s in z["failed_error"]],
                         {k.removeprefix("tap/"): z[k] for k in z.files if k.startswith("tap/")},
                         [(int(i), str(w))
                          for i, w in zip(z["cpu_decoded_idx"], z["cpu_decoded_why"])]
                         if "cpu_decoded_idx" in z.files else [])
    except (ValueError, KeyError) as e:  # object arrays (a pickle) are never read
        raise VlmprobeError(f"Chunk {path} holds data vlmprobe does not write ({e}). Delete it "
                            "and re-run the same command to recompute that chunk.") from None


class WorkDir:
    """The chunk files of one extraction target, bound to one manifest."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.path = self.target.with_name(f".{self.target.name}.work")

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def chunk_path(self, k: int) -> Path:
        return self.path / f"chunk-{k:06d}.bin"

    def read_manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None

    def resumable(self, want: dict) -> dict | None:
        """The manifest on disk if its chunks were made for the same request as ``want``."""
        old = self.read_manifest()
        if old is not None and all(old.get(k) == v for k, v in want.items()):
            return old
        return None

    def start(self, manifest: dict) -> None:
        """Keep the chunks on disk if they belong to ``manifest``; else start afresh."""
        if self.read_manifest() == manifest:
            return
        self.clear()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(self.path, e, "create") from None
        write_atomic(self.manifest_path, json.dumps(manifest, indent=1).encode())

    def done(self) -> set[int]:
        """Chunk numbers whose files exist (complete by construction: they were renamed in)."""
        if not self.path.is_dir():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.path.glob("chunk-*.bin")}

    def done_verified(self, warn) -> set[int]:
        """Done chunks whose checksums hold; a damaged one is reported, removed and redone."""
        good = set()
        for k in sorted(self.done()):
            try:
                self.read(k)
                good.add(k)
            except VlmprobeError:
                warn(f"Chunk {self.chunk_path(k)} is corrupt (checksum mismatch); "
                     "recomputing it.")
                self.chunk_path(k).unlink(missing_ok=True)
        return good

    def write(self, k: int, chunk: Chunk) -> None:
        write_atomic(self.chunk_path(k), encode_chunk(chunk))

    def read(self, k: int) -> Chunk:
        return decode_chunk(self.chunk_path(k))

    def clear(self) -> None:
        if self.path.is_dir():
            for p in self.path.iterdir():
                p.unlink()
            self.path.rmdir()


class ChunkWriter:
    """:meth:`WorkDir.write` on a thread, so the next batch's forward goes on while a chunk is
    written and fsynced; at most ``depth`` chunks wait (a killed run loses those, and the
    rerun computes them again). A failed write is raised here, at the next :meth:`write` or
    at :meth:`close`; the chunks written before it stay."""

    def __init__(self, work: WorkDir, depth: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.work, self.depth = work, depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vlmprobe-chunks")
        self.pending: list = []

    def write(self, k: int, chunk: Chunk) -> None:
        self.pending.append(self.pool.submit(self.work.write, k, chunk))
        while self.pending and (self.pending[0].done() or len(self.pending) > self.depth):
            self.pending.pop(0).result()

    def close(self) -> None:
        """Wait for every chunk; the first failure is raised."""
        try:
            while self.pending:
                self.pending.pop(0).result()
        finally:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # already failing: let the writes in flight finish, keep the first error
            self.pool.shutdown(wait=True)


def chunk_batches(n: int, batch_size: int, chunks: list[int]) -> list[list[int]]:
    """Sample indices of each chunk in ``chunks``: chunk k is ``[k*B, min(n, (k+1)*B))``."""
    return [list(range(k * batch_size, min(n, (k + 1) * batch_size))) for k in chunks]


class WriterLock:
    """An exclusive lock file naming its holder (pid, host); a dead holder's lock is taken over."""

    def __init__(self, target: Path):
        self.path = Path(target).with_name(f".{Path(target).name}.lock")
        self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # cannot see another machine's processes
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def try_acquire(self) -> bool:
        """Take the lock if it is free or its holder died; False if a live process holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(self.path.parent, e, "create") from None
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale(self._holder()):
                    return False
                self.path.unlink(missing_ok=True)  # the holder died: take the lock over
                continue
            except OSError as e:
                raise io_error(self.path, e, "create lock file") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return True
        return False

    def acquire(self) -> "WriterLock":
        if not self.try_acquire():
            holder = self._holder()
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
            raise VlmprobeError(
                f"Another vlmprobe process (pid {holder.get('pid')} on {holder.get('host')}, "
                f"since {since}) is writing {self.path.parent}: lock file {self.path}. Wait for "
                "it to finish; if no such process is running, delete the lock file.")
        return self

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
