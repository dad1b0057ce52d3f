"""Phantoms of the seven other study datasets, read by their datasets' real loaders.

Each is written in its real layout and formats (ImageFolder trees, CSV manifests with one-hot
ISIC columns and metadata, MedMNIST npz, BreakHis patient ids in file names), every class the
real set has gets images even at n=60, and the per-image truth (site nuisance, patients) comes
back through the loader. The slow test recovers both the label and the nuisance with a linear
probe on the real encoder's features.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from vlmprobe.data.check import check_dataset, dataset_split
from vlmprobe.data import load_dataset
from vlmprobe.registry import get_dataset_entry
from vlmprobe.data.phantoms import make_phantom
from vlmprobe.data.phantoms.common import proportional_counts
from vlmprobe.data.phantoms.study import HICERVIX_TREE
from vlmprobe.data.splits import crossing_groups
from vlmprobe.validation import VlmprobeError

SEVEN = ["brainmr", "sarscov2ct", "pneumoniamnist", "breakhis", "hicervix", "deepdrid", "isic2019"]
N = 60


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    base = tmp_path_factory.mktemp("phantoms")
    return {name: make_phantom(name, base / name, n=N, seed=2, progress=False) for name in SEVEN}


def _expected_classes(name):
    entry = get_dataset_entry(name)
    if name == "hicervix":
        return sorted(t[2] for t in HICERVIX_TREE)
    return [c for c in entry.classes if entry.expected_counts.get(c) != 0]


@pytest.mark.parametrize("name", SEVEN)
def test_real_loader_reads_every_class_and_the_truth(phantoms, name):
    ds = load_dataset(name, phantoms[name])
    found = Counter(ds.class_names[s.label] for s in ds.samples)
    assert len(ds) == N and sorted(found) == sorted(_expected_classes(name))
    assert min(found.values()) >= 3
    assert {s.metadata["site"] for s in ds.samples} == {"A", "B"}  # manifest.csv joined
    meta = json.loads((phantoms[name] / "phantom.json").read_text())
    assert meta["parameters"]["n"] == N and sum(meta["class_counts"].values()) == N
    report = check_dataset(name, phantoms[name])
    assert not report.of("unreadable") and not report.of("missing_class")


def test_files_are_in_the_real_formats(phantoms):
    p = phantoms
    assert len(list((p["brainmr"] / "no_tumor").glob("image(*).jpg"))) >= 3
    assert (p["sarscov2ct"] / "COVID" / "Covid (1).png").is_file()
    with np.load(p["pneumoniamnist"] / "pneumoniamnist.npz") as npz:
        assert set(npz.files) == {f"{s}_{k}" for s in ("train", "val", "test")
                                  for k in ("images", "labels")}
        assert npz["train_images"].shape == (N, 28, 28) and npz["train_labels"].shape == (N, 1)
    gt = (p["isic2019"] / "ISIC_2019_Training_GroundTruth.csv").read_text().splitlines()
    assert gt[0] == "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK" and gt[1].endswith(",0.0")
    assert (p["hicervix"] / "train.csv").read_text().startswith("image_name,level_1,level_2,level_3")
    assert any(p["breakhis"].glob("malignant/SOB/*/SOB_M_*/*X/SOB_M_*-14-*-*-001.png"))


def test_groups_where_the_real_dataset_has_patients(phantoms):
    bh = load_dataset("breakhis", phantoms["breakhis"])
    assert all(s.metadata["group"] == s.metadata["patient"] for s in bh.samples)
    dd = load_dataset("deepdrid", phantoms["deepdrid"])
    assert max(Counter(s.metadata["group"] for s in dd.samples).values()) == 4  # 2 per eye
    isic = load_dataset("isic2019", phantoms["isic2019"])  # lesion_id from the metadata CSV
    by_lesion = Counter(s.metadata["lesion_id"] for s in isic.samples)
    assert isic.samples[0].metadata["age_approx"] and max(by_lesion.values()) == 2
    second = [s for s in isic.samples if s.metadata["second_view_of"]]
    near = {p for f in check_dataset("isic2019", phantoms["isic2019"]).findings
            if f.kind in ("near_duplicates", "exact_duplicates") for p in f.paths}
    assert second and all(s.relpath in near for s in second)  # mirrored views: found as near dups?


def test_sarscov2ct_grouped_split_by_near_duplicates_keeps_patients_whole(phantoms, tmp_path):
    root = phantoms["sarscov2ct"]
    ds = load_dataset("sarscov2ct", root)
    rel = [s.relpath for s in ds.samples]
    patients = [s.metadata["patient"] for s in ds.samples]  # truth, unknown to the split
    grouped, = dataset_split("sarscov2ct", root, tmp_path, grouping="grouped")
    assert grouped.group_source.startswith("near-duplicate")
    assert crossing_groups(grouped.split, rel, patients)[0] == 0
    paper, = dataset_split("sarscov2ct", root, tmp_path)
    assert crossing_groups(paper.split, rel, patients)[0] > 0  # the paper's split leaks them


def test_medmnist_size_and_bad_arguments(tmp_path):
    root = make_phantom("pneumoniamnist", tmp_path / "p64", n=24, size=64, progress=False)
    ds = load_dataset("pneumoniamnist", root, size=64)
    assert ds.load_image(0).size == (64, 64) and len(ds) == 24
    with pytest.raises(VlmprobeError, match="not a MedMNIST size"):
        make_phantom("pneumoniamnist", tmp_path / "bad", n=24, size=50, progress=False)
    with pytest.raises(VlmprobeError, match="n >= 24"):
        make_phantom("isic2019", tmp_path / "small", n=10, progress=False)


def test_proportional_counts_keep_empty_classes_empty():
    c = proportional_counts({"a": 100, "b": 10, "UNK": 0}, 30)
    assert c == {"a": 27, "b": 3, "UNK": 0}


def test_same_seed_same_files(tmp_path):
    a = make_phantom("deepdrid", tmp_path / "a", n=20, seed=5, progress=False)
    b = make_phantom("deepdrid", tmp_path / "b", n=20, seed=5, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.mark.slow
@pytest.mark.science
@pytest.mark.parametrize("name", SEVEN)
def test_probe_recovers_label_and_site(phantoms, name, lite0):
    """Known signal and known nuisance: both beat chance on the real encoder's features."""
    import torch
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    ds = load_dataset(name, phantoms[name])
    x = torch.stack([lite0.transform_(ds.load_image(i)) for i in range(len(ds))])
    with torch.no_grad():
        feats = lite0.encode_images(x).numpy()
    for target in ("label", "site"):
        y = np.array([s.label if target == "label" else s.metadata["site"] for s in ds.samples])
        counts = Counter(y.tolist())
        cv = StratifiedKFold(min(3, min(counts.values())), shuffle=True, random_state=0)
        clf = make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=5000))
        acc = cross_val_score(clf, feats, y, cv=cv, scoring="balanced_accuracy").mean()
        chance = 1 / len(counts)
        assert acc > chance + 0.15, (name, target, acc, chance)


# -- ctdicom ---------------------------------------------------------------------------------
pydicom = pytest.importorskip("pydicom")


def test_ctdicom_variants_decode_to_the_same_window(tmp_path):
    from pydicom.pixels import apply_rescale

    from vlmprobe.data.phantoms.ctdicom import CT_VARIANTS, CT_WINDOW

    root = make_phantom("ctdicom", tmp_path / "ct", n=8, progress=False)
    ds = load_dataset("ctdicom", root)
    assert ds.class_names == ["no_lesion", "lesion"] and len(ds) == 8
    assert "window tags" in ds.intensity_pipeline
    assert {s.metadata["variant"] for s in ds.samples} == set(CT_VARIANTS)
    centre, width = CT_WINDOW
    for i, s in enumerate(ds.samples):
        dcm = pydicom.dcmread(ds.path(i))
        hu = apply_rescale(dcm.pixel_array, dcm).astype(float)
        if dcm.PhotometricInterpretation == "MONOCHROME1":
            assert dcm.BitsStored == 12
            hu = 2047 - hu  # stored inverted: the display must still be the HU window
        else:
            assert (dcm.BitsStored == 16) == (dcm.PixelRepresentation == 1)
        want = np.clip((hu - (centre - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
        np.testing.assert_allclose(np.asarray(ds.load_image(i))[..., 0], want, atol=1)
    rle = [s for s in ds.samples if "RLE" in s.metadata["variant"]][0]
    assert pydicom.dcmread(root / rle.relpath).file_meta.TransferSyntaxUID.name == "RLE Lossless"
    assert "window minmax" in load_dataset("ctdicom", root, dicom_window="minmax").intensity_pipeline


@pytest.mark.slow
@pytest.mark.science
def test_ctdicom_lesion_is_seen_in_the_tag_window_not_in_min_max(tmp_path, lite0):
    """The paper's open DICOM question, measured: same files, two intensity pipelines."""
    import torch
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    root = make_phantom("ctdicom", tmp_path / "ct", n=80, progress=False)
    acc = {}
    for window in ("tags", "minmax"):
        ds = load_dataset("ctdicom", root, dicom_window=window)
        x = torch.stack([lite0.transform_(ds.load_image(i)) for i in range(len(ds))])
        with torch.no_grad():
            feats = lite0.encode_images(x).numpy()
        y = np.array([s.label for s in ds.samples])
        clf = make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=5000))
        acc[window] = cross_val_score(clf, feats, y, scoring="balanced_accuracy",
                                      cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    assert acc["tags"] > 0.85 and acc["tags"] > acc["minmax"] + 0.15, acc
