"""Looking at caches: what one holds (``info``), what a directory holds (``ls``), and how far two
caches of the same images differ (``compare``) — mixed precision or a faster decoder can move
embeddings, and with them probe predictions, without anything else changing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..validation import VlmprobeError
from .chunks import WorkDir
from .schema import Cache, read_cache


def cache_info(path: str | Path) -> dict:
    """Provenance, counts, failures and key of one cache (or shard) as a JSON-able dict."""
    c = read_cache(path)
    prov = c.provenance
    return {
        "path": str(c.path), "model": c.model, "dataset": c.dataset,
        "shard": c.shard or None, "n_embeddings": len(c.relpaths), "embed_dim": c.embed_dim,
        "tap": c.tap, "further_taps": {t: int(e.shape[1]) for t, e in c.taps.items()} or None,
        "n_files": len(c.files["relpath"]), "n_skipped": len(c.skipped["relpath"]),
        "skipped": [{"relpath": r, "error": e}
                    for r, e in zip(c.skipped["relpath"], c.skipped["error"])],
        "class_counts": {n: int((c.labels == i).sum()) for i, n in enumerate(c.class_names)},
        "precision": c.precision + (" (schema 1)" if c.schema_version == 1 else ""),
        "batch_size": c.batch_size, "baseline": c.baseline,
        "cache_key": c.cache_key, "dataset_fingerprint": c.dataset_fingerprint,
        "intensity_pipeline": c.intensity_pipeline or None,
        "weights_sha256": c.weights_sha256, "dataset_root": c.dataset_root,
        "merged_from": c.merged_from, "imported": c.imported,
        "provenance": {k: prov.get(k) for k in ("vlmprobe_version", "git_commit", "time_utc",
                                                 "command_line", "device", "channels_last",
                                                 "fast_decode") if k in prov},
    }


def _work_status(work: WorkDir) -> str:
    manifest = work.read_manifest() or {}
    i, n = manifest.get("shard", (0, 1))
    bs, total = manifest.get("batch_size"), manifest.get("n")
    mine = (len([k for k in range(-(-total // bs)) if k % n == i])
            if isinstance(bs, int) and isinstance(total, int) else "?")
    return f"interrupted: {len(work.done())} of {mine} chunks done (re-run extract to continue)"


def list_caches(directory: str | Path) -> list[dict]:
    """Every cache, shard and interrupted extraction under ``directory``, one row each."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise VlmprobeError(f"{root} is not a directory; pass the cache directory (--out of "
                            "`vlmprobe extract`).")
    rows = []
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and (p.suffix == ".h5" or ".h5.shard-" in p.name))
    for p in files:
        try:
            c = read_cache(p)
            rows.append({"path": str(p.relative_to(root)), "model": c.model, "dataset": c.dataset,
                         "n": len(c.relpaths), "skipped": len(c.skipped["relpath"]),
                         "dim": c.embed_dim, "precision": c.precision,
                         "status": f"shard {c.shard}" if c.shard else "ok"})
        except VlmprobeError as e:
            rows.append({"path": str(p.relative_to(root)), "status": f"unreadable: {e}"})
    for w in sorted(root.rglob(".*.work")):
        target = w.with_name(w.name[1:-len(".work")])
        rows.append({"path": str(target.relative_to(root)),
                     "status": _work_status(WorkDir(target))})
    return rows


def _saved_probe(cache: Cache):
    """The class probe `vlmprobe probe` saved beside ``cache``, or None."""
    from ..probe import LinearProbe, probe_path

    stem = probe_path(cache, "class")
    try:
        return LinearProbe.load(stem), stem
    except VlmprobeError:
        return None, stem


def compare_caches(a: str | Path | Cache, b: str | Path | Cache) -> dict:
    """Per-image cosine similarity of two caches of the same images, and what it does to a probe.

    Images are matched by relative path. If ``vlmprobe probe`` saved a class probe beside ``a``,
    it is applied to both caches and the number of changed predictions is reported.
    """
    ca = a if isinstance(a, Cache) else read_cache(a)
    cb = b if isinstance(b, Cache) else read_cache(b)
    if ca.embed_dim != cb.embed_dim:
        raise VlmprobeError(f"{ca.path} ({ca.model}, d={ca.embed_dim}) and {cb.path} ({cb.model}, "
                            f"d={cb.embed_dim}) hold embeddings of different sizes; compare caches "
                            "of one model (e.g. fp32 vs bf16, exact vs --fast-decode).")
    ib = {r: j for j, r in enumerate(cb.relpaths)}
    common = [(i, ib[r]) for i, r in enumerate(ca.relpaths) if r in ib]
    if not common:
        raise VlmprobeError(f"{ca.path} and {cb.path} share no images (matched by relative path).")
    ia, jb = (np.array(x) for x in zip(*common))
    xa, xb = ca.embeddings[ia].astype(np.float64), cb.embeddings[jb].astype(np.float64)
    norms = np.linalg.norm(xa, axis=1) * np.linalg.norm(xb, axis=1)
    cos = np.where(norms > 0, (xa * xb).sum(1) / np.where(norms > 0, norms, 1), 1.0)
    worst = np.argsort(cos)[:5]
    out = {
        "a": str(ca.path), "b": str(cb.path), "n_common": len(common),
        "only_in_a": len(ca.relpaths) - len(common), "only_in_b": len(cb.relpaths) - len(common),
        "precision": [ca.precision, cb.precision],
        "cosine": {"min": float(cos.min()), "p01": float(np.quantile(cos, 0.01)),
                   "median": float(np.median(cos)), "mean": float(cos.mean())},
        "n_below_0.999": int((cos < 0.999).sum()),
        "max_abs_diff": float(np.abs(xa - xb).max()),
        "bitwise_identical": bool(ca.embeddings[ia].tobytes() == cb.embeddings[jb].tobytes()),
        "least_similar": [{"relpath": ca.relpaths[ia[k]], "cosine": float(cos[k])} for k in worst],
    }
    probe, stem = _saved_probe(ca)
    if probe is None:
        out["probe"] = None
        out["probe_note"] = (f"no saved probe at {stem}.npz; run `vlmprobe probe {ca.path}` to "
                             "count how many predictions would change")
    else:
        pa, pb = probe.predict(ca.embeddings[ia]), probe.predict(cb.embeddings[jb])
        changed = np.flatnonzero(pa != pb)
        out["probe"] = str(stem) + ".npz"
        out["predictions_changed"] = int(len(changed))
        out["changed"] = [{"relpath": ca.relpaths[ia[k]], "a": probe.class_names[pa[k]],
                           "b": probe.class_names[pb[k]]} for k in changed[:20]]
    return out


def format_compare(r: dict) -> str:
    c = r["cosine"]
    lines = [f"A: {r['a']} ({r['precision'][0]})", f"B: {r['b']} ({r['precision'][1]})",
             f"{r['n_common']} images in both ({r['only_in_a']} only in A, "
             f"{r['only_in_b']} only in B)",
             f"cosine similarity per image: min {c['min']:.6f}  p1 {c['p01']:.6f}  "
             f"median {c['median']:.6f}  mean {c['mean']:.6f}",
             f"images with cosine < 0.999: {r['n_below_0.999']};  "
             f"max |a-b| {r['max_abs_diff']:.3g};"
             f"  bitwise identical: {'yes' if r['bitwise_identical'] else 'no'}"]
    if r["probe"] is None:
        lines.append(r["probe_note"])
    else:
        lines.append(f"saved probe {r['probe']}: {r['predictions_changed']} of {r['n_common']} "
                     "predictions change from A to B")
        lines += [f"  {x['relpath']}: {x['a']} -> {x['b']}" for x in r["changed"]]
    return "\n".join(lines)


def format_info(info: dict) -> str:
    """``key: value`` lines (nested values as compact JSON), then the unreadable files."""
    lines = [f"{k}: {v if isinstance(v, (str, int, float)) or v is None else json.dumps(v)}"
             for k, v in info.items() if k not in ("skipped", "provenance")]
    lines += [f"provenance.{k}: {v}" for k, v in info["provenance"].items()]
    lines += [f"skipped: {s['relpath']}: {s['error']}" for s in info["skipped"]]
    return "\n".join(lines)
