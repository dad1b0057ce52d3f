"""Label views and recorded choices: --label-level, --classes, --size, --dicom-window.

What a cache and its split cover must be part of their identity: a level-1 cache of HiCervix
must never be served for a level-3 request, nor share its split.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlmprobe.data import dataset_options, load_dataset
from vlmprobe.validation import VlmprobeError

LEVELS = [("Normal", "Normal", "NILM"), ("Abnormal", "Squamous", "ASC-US"),
          ("Abnormal", "Squamous", "HSIL"), ("Microbe", "Microbe", "Candida"),
          ("Microbe", "Microbe", "Trichomonas")]


@pytest.fixture
def hicervix(tmp_path):
    root = tmp_path / "hicervix"
    (root / "train").mkdir(parents=True)
    lines = ["image_name,level_1,level_2,level_3"]
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            root / "train" / f"{i}.jpg")
        lines.append(f"{i}.jpg," + ",".join(LEVELS[i % 5]))
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def test_label_level_picks_the_hierarchy_column(hicervix):
    assert load_dataset("hicervix", hicervix).class_names == sorted({x[2] for x in LEVELS})
    l1 = load_dataset("hicervix", hicervix, label_level=1)
    assert l1.class_names == ["Abnormal", "Microbe", "Normal"] and l1.label_view == "level1"
    assert [l1.class_names[s.label] for s in l1.samples[:5]] == [x[0] for x in LEVELS]
    assert l1.samples[0].metadata["level_3"] == "NILM"  # the other levels stay metadata
    with pytest.raises(VlmprobeError, match="choose 1..3"):
        load_dataset("hicervix", hicervix, label_level=4)
    with pytest.raises(VlmprobeError, match="no label hierarchy"):
        load_dataset("sarscov2ct", hicervix, label_level=1)


def test_class_subset_relabels_and_filters(hicervix):
    ds = load_dataset("hicervix", hicervix, **dataset_options(classes="Trichomonas,Candida"))
    assert ds.class_names == ["Candida", "Trichomonas"] and len(ds) == 16
    assert {ds.class_names[s.label] for s in ds.samples} == {"Candida", "Trichomonas"}
    assert ds.label_view == "classes=Candida+Trichomonas"
    assert ds.entry.class_subset == ["Candida", "Trichomonas"]  # recorded in every cache
    with pytest.raises(VlmprobeError, match=r"\['Fungus'\] are not classes.*choose among"):
        load_dataset("hicervix", hicervix, class_subset=["Candida", "Fungus"])


def test_views_change_the_fingerprint_default_keeps_it(hicervix):
    from vlmprobe.data import fingerprint_files

    full = load_dataset("hicervix", hicervix)
    assert full.label_view == "" and full.fingerprint()[2] == fingerprint_files(
        full.root, [s.relpath for s in full.samples])[2]  # existing caches stay valid
    prints = {full.fingerprint()[2], load_dataset("hicervix", hicervix, label_level=1).fingerprint()[2],
              load_dataset("hicervix", hicervix, label_level=2).fingerprint()[2],
              load_dataset("hicervix", hicervix, class_subset=["NILM", "HSIL"]).fingerprint()[2]}
    assert len(prints) == 4


def test_dataset_options_drop_unset_values_and_medmnist_sizes_are_checked(tmp_path):
    assert dataset_options() == {}
    assert dataset_options(2, " a, b ", 64, "40,400") == {
        "label_level": 2, "class_subset": ["a", "b"], "size": 64, "dicom_window": "40,400"}
    np.savez(tmp_path / "pneumoniamnist_100.npz", train_images=np.zeros((2, 100, 100), np.uint8),
             train_labels=np.zeros((2, 1)))
    with pytest.raises(VlmprobeError, match="size 100 is not a MedMNIST size"):
        load_dataset("pneumoniamnist", tmp_path, size=100)
    with pytest.raises(VlmprobeError, match="dicom_window 'soft'"):
        load_dataset("pneumoniamnist", tmp_path, dicom_window="soft")


@pytest.mark.slow  # two extractions: ~25 s on a shared 2-core machine
def test_extract_records_the_view_and_keeps_views_apart(hicervix, tmp_path, lite0):
    from vlmprobe.cache import read_cache
    from vlmprobe.extraction import extract

    kw = dict(root=hicervix, num_workers=0, progress=False)
    r1 = extract("efficientnet_lite0", "hicervix", out=tmp_path / "a", **kw,
                 dataset_options={"label_level": 1})
    c1 = read_cache(r1.path)
    assert c1.class_names == ["Abnormal", "Microbe", "Normal"]
    assert c1.attrs["dataset_entry"]["label_level"] == 1
    assert r1.path == tmp_path / "a" / "hicervix" / "efficientnet_lite0@level1.h5"
    r3 = extract("efficientnet_lite0", "hicervix", out=tmp_path / "a", **kw)  # no --force needed
    assert r3.path == tmp_path / "a" / "hicervix" / "efficientnet_lite0.h5"
    assert read_cache(r3.path).dataset_fingerprint != c1.dataset_fingerprint
    r2 = extract("efficientnet_lite0", "hicervix", out=tmp_path / "a", **kw,
                 dataset_options={"label_level": 2, "class_subset": ["Squamous", "Microbe"]})
    assert r2.path.name.startswith("efficientnet_lite0@level2-classes=")
    from vlmprobe.cache import find_caches
    from vlmprobe.probe import ProbeConfig, run_probe
    found = find_caches([tmp_path / "a"])
    assert sorted(found) == sorted([r1.path, r2.path, r3.path])
    res = run_probe([read_cache(p) for p in (r1.path, r3.path)], out=tmp_path / "p",
                    config=ProbeConfig(n_bootstrap=20))
    assert [r.class_names for r in res] == [c1.class_names, read_cache(r3.path).class_names]
    assert [r.dataset for r in res] == ["hicervix@level1", "hicervix"]
    assert len({r.probe_file for r in res}) == 2
    from vlmprobe.maps import UmapConfig, run_umap

    pngs = run_umap([read_cache(p) for p in (r1.path, r3.path)], UmapConfig(n_neighbors=5),
                    out=tmp_path / "p").figures
    assert sorted(p.name.split(".")[0] for p in pngs) == sorted(
        p.name.split(".")[0] for p in (r1.path, r3.path))  # two views: no side-by-side figure


def test_cli_check_and_split_take_the_view_options(hicervix, tmp_path):
    from typer.testing import CliRunner

    from vlmprobe.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["datasets", "check", "hicervix", "--root", str(hicervix),
                              "--label-level", "1"])
    assert out.exit_code == 0, out.output
    assert "Microbe" in out.output and "ASC-US" not in out.output
    out = runner.invoke(app, ["datasets", "split", "hicervix", "--root", str(hicervix), "--out",
                              str(tmp_path), "--classes", "NILM,HSIL,Candida"])
    assert out.exit_code == 0, out.output
    (split,) = (tmp_path / "hicervix" / "splits").glob("*.csv")
    labels = {line.split(",")[1] for line in split.read_text().splitlines()[1:]}
    assert labels == {"NILM", "HSIL", "Candida"}
    bad = runner.invoke(app, ["datasets", "check", "hicervix", "--root", str(hicervix),
                              "--classes", "Fungus"])
    assert bad.exit_code != 0 and "Fungus" in str(bad.exception or bad.output)
