"""Verify a user's copy of a dataset before any extraction (``vlmprobe datasets check``).

Every image is decoded once, as extraction would, and hashed twice: a content hash of the decoded
pixels (exact duplicates, whatever the file format) and a 64-bit difference hash (dHash: is each
pixel of a 9x8 grey thumbnail brighter than its right neighbour?) whose Hamming distance finds
near duplicates such as resized or JPEG-recompressed copies. Given a saved split, duplicates and
patients (groups) that cross train/test are reported: an error for a grouped split, which
promised none, and a loud warning for the paper's ungrouped split, which the paper used anyway.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..cache.paths import cache_dir
from ..validation import VlmprobeError
from .dataset import ImageDataset, load_dataset
from .decode import read_sample, sample_file, sample_kind
from .volumes import Volume, volume_geometry
from .splits import Split, SplitSpec, crossing_groups, load_or_create_split, read_split

HASH_SIZE = 8  # dHash of a 9x8 thumbnail: 64 bits
NEAR_THRESHOLD = 6  # Hamming distance (of 64 bits) at or below which two images are near duplicates


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning" | "info"
    kind: str  # unreadable, missing_class, count, exact_duplicates, near_duplicates, group_leak, duplicate_leak, exif_rotated
    message: str
    paths: tuple[str, ...] = ()


@dataclass
class CheckReport:
    dataset: str
    root: Path
    n_images: int
    counts: dict[str, tuple[int, int | None]]  # class -> (found, expected)
    findings: list[Finding] = field(default_factory=list)
    split: str = ""  # the split file checked, if any

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def dhash_bits(im: Image.Image, size: int = HASH_SIZE) -> np.ndarray:
    """Difference hash: ``size*size`` booleans, robust to resizing and recompression."""
    g = np.asarray(im.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), np.int16)
    return (g[:, 1:] > g[:, :-1]).ravel()


EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera or phone records its rotation in (1: upright)


def exif_orientation(root: Path, relpath: str) -> int:
    """The EXIF orientation of a raster file (1 where it has none). vlmprobe reads pixels as the
    official pipelines do, EXIF ignored, so an image shown rotated by a viewer is embedded
    unrotated: worth a warning, not a change."""
    if sample_kind(relpath) != "raster":
        return 1
    try:
        with Image.open(root / relpath) as im:
            return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 — an unreadable file is reported by the decode itself
        return 1


def _scan_one(args: tuple[Path, str, str]) -> tuple[str, np.ndarray | None, str, int]:
    """(pixel digest, dHash bits, error, EXIF orientation) of one sample; any decoder error
    means unreadable."""
    root, relpath, window = args
    try:
        im = read_sample(root, relpath, window)
    except Exception as e:  # noqa: BLE001 — reported by path, never silently dropped
        return "", None, f"{type(e).__name__}: {e}", 1
    if isinstance(im, Volume):  # a whole volume: all its values hashed, its middle slice dHashed
        a, im = im.array, im.middle_slice()
    else:
        a = np.asarray(im)
    digest = hashlib.blake2b(a.tobytes() + str(a.shape).encode(), digest_size=16).hexdigest()
    return digest, dhash_bits(im), "", exif_orientation(root, relpath)


def scan_images(ds: ImageDataset,
                workers: int = 1) -> tuple[list[str], np.ndarray, list[str], list[int]]:
    """Pixel digests, dHash bits [N, 64] (zeros where unreadable), errors ("" if readable) and
    EXIF orientations (1: none or upright)."""
    jobs = [(ds.root, s.relpath, ds.entry.dicom_window) for s in ds.samples]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_scan_one, jobs, chunksize=64))
    else:
        results = [_scan_one(j) for j in jobs]
    bits = np.zeros((len(jobs), HASH_SIZE * HASH_SIZE), bool)
    for i, (_, b, _, _) in enumerate(results):
        if b is not None:
            bits[i] = b
    return [r[0] for r in results], bits, [r[2] for r in results], [r[3] for r in results]


def near_duplicate_clusters(bits: np.ndarray, threshold: int = NEAR_THRESHOLD,
                            valid: np.ndarray | None = None, chunk: int = 4096) -> np.ndarray:
    """Cluster id per image: connected components of "Hamming distance <= threshold".

    Identical hashes are collapsed first, so thousands of blank slices cost one row; distances
    are ``|a| + |b| - 2 a.b`` as chunked matrix products, never an N x N array.
    """
    valid = np.ones(len(bits), bool) if valid is None else valid
    uniq, inverse = np.unique(bits[valid], axis=0, return_inverse=True)
    u = uniq.astype(np.float32)
    ones = u.sum(1)
    rows, cols = [], []
    for start in range(0, len(u), chunk):
        d = ones[start:start + chunk, None] + ones[None, :] - 2 * u[start:start + chunk] @ u.T
        i, j = np.nonzero(d <= threshold + 0.5)
        keep = i + start < j
        rows.append(i[keep] + start)
        cols.append(j[keep])
    r, c = (np.concatenate(x) if x else np.zeros(0, int) for x in (rows, cols))
    graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(len(u), len(u)))
    _, comp = connected_components(graph, directed=False)
    labels = np.arange(len(bits)) + len(u)  # unreadable images: singletons
    labels[np.flatnonzero(valid)] = comp[inverse.ravel()]
    return labels


def _groups_of(ids, relpaths: list[str]) -> list[list[str]]:
    """Relpaths sharing an id, for ids held by two or more images (largest first)."""
    by = defaultdict(list)
    for k, r in zip(ids, relpaths):
        by[k].append(r)
    return sorted((sorted(v) for v in by.values() if len(v) > 1), key=lambda g: (-len(g), g))


def _crossing(ids, relpaths: list[str], test: dict[str, bool]) -> list[list[str]]:
    """Groups (by id) with images on both sides of the split."""
    return [g for g in _groups_of(ids, relpaths) if len({test[r] for r in g if r in test}) == 2]


def _paths_line(groups: list[list[str]], n: int = 3) -> str:
    shown = "; ".join(" = ".join(g[:4]) + (" ..." if len(g) > 4 else "") for g in groups[:n])
    return shown + (f"; and {len(groups) - n} more" if len(groups) > n else "")


def check_dataset(dataset, root: str | Path | None = None,
                  split: str | Path | Split | None = None, strict: bool = False,
                  near_threshold: int = NEAR_THRESHOLD, workers: int = 1,
                  datasets: list[Path] | tuple = (), **options) -> CheckReport:
    """Check a dataset copy against its entry (and a saved split, if given).

    Errors: unreadable images, classes that should have images and have none, and leakage across
    a grouped split. Warnings: counts unlike the paper's (errors with ``strict``), duplicates,
    and leakage across the paper's ungrouped split. ``dataset``, ``datasets`` and ``options`` are
    :func:`load_dataset`'s (a key, ``imagefolder:DIR``, ``csv:FILE`` or an entry).
    """
    ds = load_dataset(dataset, root, datasets=datasets, **options)
    name = ds.entry.name
    relpaths = [s.relpath for s in ds.samples]
    labels = np.array([s.label for s in ds.samples])
    digests, bits, errors, orientations = scan_images(ds, workers)
    readable = np.array([not e for e in errors])
    entry = ds.entry
    found = Counter(labels.tolist())
    counts = {c: (found.get(k, 0), entry.expected_counts.get(c)) for k, c in enumerate(ds.class_names)}
    report = CheckReport(name, ds.root, len(ds), counts)
    add = report.findings.append

    bad = [(r, e) for r, e in zip(relpaths, errors) if e]
    for r, e in bad:
        add(Finding("error", "unreadable", f"{ds.root / r}: {e}", (r,)))
    rotated = [r for r, o in zip(relpaths, orientations) if o != 1]
    if rotated:
        add(Finding("warning", "exif_rotated", f"{len(rotated)} image(s) carry an EXIF rotation "
                    "that vlmprobe ignores, as the models' official pipelines do (a viewer shows "
                    f"them turned): {', '.join(rotated[:5])}" + (" ..." if len(rotated) > 5 else "")
                    + ". Rotate the pixels themselves if the model should see them upright.",
                    tuple(rotated)))
    for c, (n, expected) in counts.items():
        if n == 0 and expected != 0:
            add(Finding("error", "missing_class", f"class {c!r} has no images (expected "
                        f"{expected if expected is not None else 'some'}); check the layout: "
                        f"{entry.layout_help}"))
        elif n == 0:
            add(Finding("info", "empty_class", f"class {c!r} is empty, as expected"))
    if entry.layout == "busi":  # BUSI pairs every image with a lesion mask (all black if normal)
        maskless = [s.relpath for s in ds.samples if not s.metadata.get("mask_paths")]
        if maskless:
            add(Finding("warning", "missing_mask", f"{len(maskless)} image(s) without a "
                        f"<name>_mask.png beside them: {', '.join(maskless[:5])}"
                        + (" ..." if len(maskless) > 5 else ""), tuple(maskless)))
    count_level = "error" if strict else "warning"
    diff = {c: (n, e) for c, (n, e) in counts.items() if e is not None and n != e}
    if diff:
        add(Finding(count_level, "count", "counts differ from the paper's: " + ", ".join(
            f"{c} {n} (paper {e})" for c, (n, e) in diff.items())))
    if entry.expected_total and not entry.class_subset and len(ds) != entry.expected_total:
        add(Finding(count_level, "count", f"{len(ds)} images; the paper used "
                    f"{entry.expected_total} ({entry.subset})"))

    _check_volumes(report, ds, readable)
    ok_paths = [r for r, k in zip(relpaths, readable) if k]
    exact = _groups_of([d for d, k in zip(digests, readable) if k], ok_paths)
    label_of = {s.relpath: ds.class_names[s.label] for s in ds.samples}
    for g in exact:
        add(Finding("warning", "exact_duplicates", f"{len(g)} identical images: {' = '.join(g)}",
                    tuple(g)))
        if len({label_of[r] for r in g}) > 1:
            add(Finding("warning", "label_conflict", "identical images with different labels: "
                        + ", ".join(f"{r} ({label_of[r]})" for r in g), tuple(g)))
    clusters = near_duplicate_clusters(bits, near_threshold, readable)
    pixel = dict(zip(relpaths, digests))
    near = [g for g in _groups_of(clusters, relpaths) if len({pixel[r] for r in g}) > 1]
    for g in near:
        add(Finding("warning", "near_duplicates", f"{len(g)} near-identical images (dHash "
                    f"distance <= {near_threshold}): {' ~ '.join(g)}", tuple(g)))

    if split is not None:
        s = split if isinstance(split, Split) else read_split(Path(split))
        report.split = str(s.path or "")
        _check_split(report, s, relpaths, clusters, ds)
    return report


def _mm(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def _check_volumes(report: CheckReport, ds: ImageDataset, readable: np.ndarray) -> None:
    """One line per distinct voxel spacing and stored orientation, the slice gaps of DICOM series
    (uneven gaps: the volume is unreadable, reported above), and a warning when spacings differ:
    a 3-D encoder resamples them, a 2-D one sees slices of unlike thickness."""
    volumes = sorted({sample_file(s.relpath) for s, ok in zip(ds.samples, readable)
                      if ok and sample_kind(s.relpath) in ("volume", "volume3d")})
    if not volumes:
        return
    geometry = {v: volume_geometry(ds.root / v) for v in volumes}
    by_spacing = defaultdict(list)
    for v, g in geometry.items():
        by_spacing[(tuple(round(x, 3) for x in g["spacing"]), g["orientation"])].append(v)
    for (spacing, orientation), vs in sorted(by_spacing.items(), key=lambda kv: -len(kv[1])):
        add = f" ({len(vs)} volumes, e.g. {vs[0]})" if len(vs) > 1 else f" ({vs[0]})"
        report.findings.append(Finding("info", "volume_geometry", f"spacing {_mm(spacing)} mm, "
                                       f"stored orientation {orientation}{add}", tuple(vs)))
    gaps = [(v, g["slice_gaps"]) for v, g in geometry.items() if g["slice_gaps"]]
    if gaps:
        low, high = min(g[0] for _, g in gaps), max(g[1] for _, g in gaps)
        report.findings.append(Finding("info", "slice_gaps", f"{len(gaps)} DICOM series, slice "
                                       f"gaps {low:.3g}-{high:.3g} mm", tuple(v for v, _ in gaps)))
    spacings = {s for s, _ in by_spacing}
    if len(spacings) > 1:
        report.findings.append(Finding("warning", "mixed_spacing", f"{len(spacings)} different "
                                       "voxel spacings across volumes", tuple(volumes)))


def _check_split(report: CheckReport, split: Split, relpaths: list[str], clusters: np.ndarray,
                 ds: ImageDataset) -> None:
    """Duplicates and groups that cross the split's train/test boundary."""
    test = dict(zip(split.relpaths, split.test.tolist()))
    absent = [r for r in relpaths if r not in test]
    if absent:
        report.findings.append(Finding(
            "error", "split_mismatch", f"{len(absent)} image(s) are not in split {split.path} "
            f"(e.g. {absent[0]}): the split was made from other files.", tuple(absent[:20])))
    grouped = split.spec.grouping != "paper"
    level = "error" if grouped else "warning"
    how = (f"the {split.spec.grouping} split {split.path} promised none" if grouped else
           f"the paper's ungrouped split {split.path} leaks; consider --split grouped")
    groups = [s.metadata.get("group", "") for s in ds.samples]
    if any(groups):
        ids = [g or f"\0{r}" for g, r in zip(groups, relpaths)]  # no id: a group of its own
        cross = _crossing(ids, relpaths, test)
        n_groups = len(set(ids))
        if cross:
            report.findings.append(Finding(
                level, "group_leak", f"{len(cross)} of {n_groups} patients/groups "
                f"({ds.entry.group_key or 'group'}) have images in both train and test; {how}. "
                f"E.g. {_paths_line(cross)}", tuple(r for g in cross for r in g)))
    cross = _crossing(clusters, relpaths, test)
    if cross:
        report.findings.append(Finding(
            level, "duplicate_leak", f"{len(cross)} duplicate/near-duplicate cluster(s) have "
            f"images in both train and test; {how}. E.g. {_paths_line(cross)}",
            tuple(r for g in cross for r in g)))


@dataclass
class SplitResult:
    split: Split
    grouping: str
    group_source: str  # what the groups are: the patient key, or near-duplicate clusters
    n_groups: int
    n_crossing: int  # groups with images in both train and test


def dataset_split(dataset, root: str | Path | None = None, out: str | Path | None = None,
                  grouping: str = "paper", seed: int = 0, near_threshold: int = NEAR_THRESHOLD,
                  workers: int = 1, repeats: int = 1, datasets: list[Path] | tuple = (),
                  **options) -> list[SplitResult]:
    """Write (or reuse) the split files every model of ``name`` will share, one per seed
    ``seed .. seed + repeats - 1`` (what ``vlmprobe probe --repeats`` reads), and say what leaks.

    Groups are the dataset's patient ids where it has them, else clusters of near-duplicate
    images (SARS-CoV-2 CT ships no patient ids, but a patient's slices look alike), computed
    once for all seeds. The files land where ``vlmprobe probe`` looks: ``<cache dir>/<key>/splits/``
    (an own dataset's key too, so its caches find them).
    """
    if repeats < 1:
        raise VlmprobeError(f"repeats must be >= 1; got {repeats}.")
    ds = load_dataset(dataset, root, datasets=datasets, **options)
    name = ds.entry.name
    relpaths = [s.relpath for s in ds.samples]
    groups = [s.metadata.get("group", "") for s in ds.samples]
    if any(groups):
        source = ds.entry.group_key or ds.entry.group_column or "group"
    else:
        _, bits, errors, _ = scan_images(ds, workers)
        clusters = near_duplicate_clusters(bits, near_threshold, np.array([not e for e in errors]))
        groups = [f"cluster{c}" for c in clusters]
        source = f"near-duplicate clusters (dHash <= {near_threshold})"
    labels = np.array([s.label for s in ds.samples])
    results = []
    for s in range(seed, seed + repeats):
        split = load_or_create_split(Path(cache_dir(out)) / name / "splits", ds.fingerprint()[2],
                                     relpaths, labels, ds.class_names,
                                     SplitSpec(grouping=grouping, seed=s), name, groups, source)
        crossing, n_groups = crossing_groups(split, relpaths, groups)
        results.append(SplitResult(split, grouping, source, n_groups, crossing))
    return results
