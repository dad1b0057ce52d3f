"""`vlmprobe cache import`: embeddings from other tools (.npy/.npz + labels CSV, TRIDENT .h5,
eva .pt) as caches that probe and umap read and rise refuses; bad input is refused naming the
file and row, with nothing written."""
from __future__ import annotations

import csv
import hashlib
import pickle

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vlmprobe
from vlmprobe.cache import read_cache
from vlmprobe.cli import app
from vlmprobe.validation import VlmprobeError

CLASSES = ("benign", "malignant", "normal")


def _separable(n=90, d=16, seed=0):
    """Three classes of ``n`` rows, each around its own direction (a probe should find them)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(0, 0.3, (n, d)) + 3 * np.eye(d)[y]
    return X.astype(np.float32), [CLASSES[i] for i in y]


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_npy_import_is_a_cache_that_probe_and_umap_read_and_rise_refuses(tmp_path):
    X, names = _separable()
    np.save(tmp_path / "uni.npy", X)
    labels = _csv(tmp_path / "labels.csv", ["id", "label", "patient", "site"],
                  [[f"img{i}", n, f"p{i // 2}", "a" if i % 2 else "b"]
                   for i, n in enumerate(names)])
    path = vlmprobe.import_features(tmp_path / "uni.npy", labels, model="uni", dataset="crc",
                                    out=tmp_path / "caches", group_column="patient")
    assert path == tmp_path / "caches" / "crc" / "uni.h5"
    cache = read_cache(path)
    np.testing.assert_array_equal(cache.embeddings, X)
    assert cache.class_names == sorted(CLASSES) and cache.relpaths[:2] == ["img0", "img1"]
    assert [cache.class_names[i] for i in cache.labels] == names
    assert cache.metadata["group"][:3] == ["p0", "p0", "p1"] and cache.metadata["site"][0] == "b"
    assert cache.imported["format"] == "npy" and cache.imported["files"] == {
        str(tmp_path / "uni.npy"): _sha(tmp_path / "uni.npy")}
    assert cache.imported["labels"]["sha256"] == _sha(labels)
    assert cache.provenance["stage"] == "cache import" and cache.family == "imported"
    run = vlmprobe.run_probe([cache], t_grid=(1.0,), n_bootstrap=20)
    assert run[0].test["macro_f1"] > 0.95 and run[0].n_test > 0  # grouped by patient
    with pytest.raises(VlmprobeError, match=r"imported from .*uni\.npy \(vlmprobe cache "
                                            r"import\): RISE runs images through the encoder"):
        vlmprobe.run_rise([cache], n_masks=8)


@pytest.mark.slow  # UMAP's first fit compiles (~30 s on the shared machine)
def test_umap_maps_an_imported_cache_without_images(tmp_path, recwarn):
    X, names = _separable()
    np.save(tmp_path / "uni.npy", X)
    labels = _csv(tmp_path / "labels.csv", ["label"], [[n] for n in names])
    cache = read_cache(vlmprobe.import_features(tmp_path / "uni.npy", labels, model="uni",
                                                dataset="crc", out=tmp_path))
    maps = vlmprobe.run_umap([cache], vlmprobe.UmapConfig(n_neighbors=5), thumbnails=3)
    assert maps[0].coords[0].shape == (90, 2) and maps[0].scores[0]["silhouette_orig"] > 0.5
    assert maps[0].figures[0].is_file() and maps[0].pages[0].is_file()
    assert not [w for w in recwarn if "could not be read" in str(w.message)]  # no images: none


def test_the_same_samples_from_two_tools_share_one_fingerprint(tmp_path):
    """Split files are keyed by the sample ids and labels, so two tools' probes pair."""
    X, names = _separable()
    labels = _csv(tmp_path / "labels.csv", ["id", "label"],
                  [[f"img{i}", n] for i, n in enumerate(names)])
    np.savez(tmp_path / "a.npz", features=X)
    np.savez(tmp_path / "b.npz", other=X[:, :8] * 2)  # its only 2-D array
    a = read_cache(vlmprobe.import_features(tmp_path / "a.npz", labels, model="a", dataset="d",
                                            out=tmp_path))
    b = read_cache(vlmprobe.import_features(tmp_path / "b.npz", labels, model="b", dataset="d",
                                            out=tmp_path))
    assert a.dataset_fingerprint == b.dataset_fingerprint and a.cache_key != b.cache_key
    assert b.embed_dim == 8


def _slide(path, feats, coords):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=coords)


@pytest.fixture
def trident(tmp_path):
    """Four slides of 3-6 patches (12-d) and a labels CSV; one extra slide without a label."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "features_uni"
    folder.mkdir()
    slides = {}
    for k, n in enumerate((3, 5, 4, 6)):
        feats = rng.normal(size=(n, 12)).astype(np.float32)
        coords = np.stack([np.arange(n) * 256, np.full(n, 512 * k)], axis=1)
        _slide(folder / f"slide{k}.h5", feats, coords)
        slides[f"slide{k}"] = (feats, coords)
    _slide(folder / "unlabelled.h5", np.zeros((2, 12), np.float32), np.zeros((2, 2)))
    labels = _csv(tmp_path / "slides.csv", ["slide_id", "label", "patient"],
                  [[f"slide{k}", CLASSES[k % 2], f"p{k // 2}"] for k in range(4)])
    return folder, labels, slides


def test_trident_one_sample_per_slide_pooled_by_the_stated_rule(tmp_path, trident):
    folder, labels, slides = trident
    mean = read_cache(vlmprobe.import_features(folder, labels, model="uni", dataset="tcga",
                                               out=tmp_path / "c", id_column="slide_id",
                                               group_column="patient"))
    assert mean.relpaths == ["slide0", "slide1", "slide2", "slide3"]
    np.testing.assert_allclose(mean.embeddings, [slides[s][0].mean(0) for s in mean.relpaths],
                               rtol=1e-6)
    assert mean.metadata["group"] == ["p0", "p0", "p1", "p1"]
    assert mean.imported["pool_rule"].startswith("the mean over a sample's patch rows")
    assert sorted(mean.imported["files"]) == [str(folder / f"slide{k}.h5") for k in range(4)]
    top = read_cache(vlmprobe.import_features(folder, labels, model="uni_max", dataset="tcga",
                                              out=tmp_path / "c", id_column="slide_id",
                                              pool="max"))
    np.testing.assert_array_equal(top.embeddings[1], slides["slide1"][0].max(0))


def test_trident_one_sample_per_patch_grouped_by_slide(tmp_path, trident):
    folder, labels, slides = trident
    cache = read_cache(vlmprobe.import_features(folder, labels, model="uni", dataset="tcga",
                                                out=tmp_path, id_column="slide_id",
                                                per="patch"))
    assert len(cache.relpaths) == 18 and cache.relpaths[3] == "slide1#0_512"
    np.testing.assert_array_equal(cache.embeddings[3:8], slides["slide1"][0])
    assert cache.metadata["group"][3:8] == ["slide1"] * 5 and cache.group_source == "slide"
    assert cache.metadata["x"][4] == "256" and cache.metadata["y"][4] == "512"
    assert [cache.class_names[i] for i in cache.labels[:4]] == ["benign"] * 3 + ["malignant"]
    assert cache.imported["per"] == "patch" and cache.imported["pool"] is None


def test_eva_manifest_and_pt_read_with_weights_only(tmp_path):
    X, names = _separable(n=12, d=6)
    emb = tmp_path / "embeddings"
    emb.mkdir()
    rows = []
    for i, (x, n) in enumerate(zip(X, names)):
        # eva writes a tensor per image; a whole-slide row holds several patch rows
        torch.save(torch.from_numpy(np.stack([x, x + 1]) if i == 0 else x), emb / f"{i}.pt")
        rows.append([f"images/{i}.png", f"{i}.pt", n, "train" if i < 8 else "test"])
    manifest = _csv(emb / "manifest.csv", ["origin", "embeddings", "target", "split"], rows)
    cache = read_cache(vlmprobe.import_features(manifest, model="dino", dataset="bach",
                                                out=tmp_path / "c"))
    np.testing.assert_allclose(cache.embeddings[0], X[0] + 0.5)  # mean of its two rows
    np.testing.assert_array_equal(cache.embeddings[1:], X[1:])
    assert cache.relpaths[0] == "images/0.png" and cache.metadata["split"][-1] == "test"
    assert cache.imported["format"] == "eva" and len(cache.imported["files"]) == 13
    # a single .pt [N, d] beside a labels CSV
    torch.save({"embeddings": torch.from_numpy(X)}, tmp_path / "all.pt")
    labels = _csv(tmp_path / "l.csv", ["label"], [[n] for n in names])
    one = read_cache(vlmprobe.import_features(tmp_path / "all.pt", labels, model="dino",
                                              dataset="bach2", out=tmp_path / "c"))
    np.testing.assert_array_equal(one.embeddings, X)
    assert one.relpaths[0] == "row000001"


class Payload:
    """Not a tensor: torch.load(weights_only=True) refuses to unpickle it."""

    def __reduce__(self):
        return (print, ("this code must not run",))


def _nothing_written(tmp_path):
    return not list((tmp_path / "out").rglob("*.h5"))


@pytest.mark.parametrize("case, match", [
    ("rows", r"Features file .*f\.npy has 5 rows but labels file .*l\.csv has 6"),
    ("nan", r"Features file .*f\.npy: row 2 \(0-based\) holds NaN"),
    ("label", r"Labels file .*l\.csv, row 4: empty 'label'"),
    ("duplicate", r"Labels file .*l\.csv, row 5: id 'a' repeats row 2"),
    ("column", r"Labels file .*l\.csv: columns \['diagnosis'\] not found"),
    ("pickle", r"Features file .*f\.pt is not a tensor file torch.load reads with weights_only"),
    ("3d", r"Features file .*f\.npy: expected a numeric array \[samples, dim\], got shape "
           r"\(6, 2, 2\)"),
])
def test_bad_features_or_labels_name_file_and_row_and_write_nothing(tmp_path, case, match):
    rows = [[i, "xy"[k % 2]] for k, i in enumerate("abcdef")]
    if case == "label":
        rows[2][1] = ""
    if case == "duplicate":
        rows[3][0] = "a"
    labels = _csv(tmp_path / "l.csv", ["id", "label"], rows)
    X = np.ones((5 if case == "rows" else 6, 4), np.float32)
    if case == "nan":
        X[2, 1] = np.nan
    features = tmp_path / ("f.pt" if case == "pickle" else "f.npy")
    if case == "pickle":
        features.write_bytes(pickle.dumps(Payload()))
    else:
        np.save(features, X.reshape(6, 2, 2) if case == "3d" else X)
    with pytest.raises(VlmprobeError, match=match):
        vlmprobe.import_features(features, labels, model="m", dataset="d", out=tmp_path / "out",
                                 label_column="diagnosis" if case == "column" else "label")
    assert _nothing_written(tmp_path)


def test_bad_trident_slides_name_the_file_and_write_nothing(tmp_path, trident):
    folder, labels, _ = trident
    _slide(folder / "slide2.h5", np.zeros((4, 10), np.float32), np.zeros((4, 2)))
    with pytest.raises(VlmprobeError, match=r"slide2\.h5: features are 10-d but .*slide0\.h5 "
                                            r"holds 12-d"):
        vlmprobe.import_features(folder, labels, model="m", dataset="d", out=tmp_path / "out",
                                 id_column="slide_id")
    (folder / "slide3.h5").unlink()
    with pytest.raises(VlmprobeError, match=r"slides\.csv, row 5: slide 'slide3' has no features "
                                            r"file slide3\.h5"):
        vlmprobe.import_features(folder, labels, model="m", dataset="d", out=tmp_path / "out",
                                 id_column="slide_id")
    assert _nothing_written(tmp_path)


def test_cli_cache_import_then_an_existing_cache_needs_force(tmp_path):
    X, names = _separable(n=30)
    np.save(tmp_path / "f.npy", X)
    labels = _csv(tmp_path / "l.csv", ["label"], [[n] for n in names])
    args = ["cache", "import", str(tmp_path / "f.npy"), "--labels", str(labels), "--model",
            "uni", "--dataset", "crc", "--out", str(tmp_path / "c")]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert f"into {tmp_path / 'c' / 'crc' / 'uni.h5'}" in " ".join(first.output.split())
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "exists; pass --force" in str(again.exception)
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    info = runner.invoke(app, ["cache", "info", str(tmp_path / "c" / "crc" / "uni.h5")])
    assert '"format": "npy"' in info.output
