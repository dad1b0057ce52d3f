import shutil

import numpy as np
import pytest
from PIL import Image

from vlmprobe.data import fingerprint_files, load_dataset, read_image
from vlmprobe.registry import get_dataset_entry, load_datasets_file
from vlmprobe.validation import VlmprobeError

STUDY = {"brainmr", "sarscov2ct", "pneumoniamnist", "breastus", "breakhis", "hicervix",
         "deepdrid", "isic2019"}


def test_registry_declares_the_eight_study_datasets_and_the_phantom():
    entries = load_datasets_file()
    assert STUDY | {"breastus_phantom"} <= set(entries)
    assert sum(entries["breastus"].expected_counts.values()) == 780
    assert entries["isic2019"].expected_counts["UNK"] == 0
    assert all(entries[k].source and entries[k].layout_help for k in STUDY)


def test_unknown_dataset_lists_valid_keys():
    with pytest.raises(VlmprobeError, match="Valid datasets: .*breastus"):
        get_dataset_entry("busi")


def test_busi_loader_pairs_masks(tiny_busi):
    ds = load_dataset("breastus", tiny_busi)
    assert len(ds) == 30 and ds.class_names == ["normal", "benign", "malignant"]
    s = next(x for x in ds.samples if x.relpath == "benign/benign (1).png")
    assert s.label == 1 and s.metadata["mask_paths"] == "benign/benign (1)_mask.png"
    assert not any("_mask" in x.relpath for x in ds.samples)
    # "benign (1)" must not claim "benign (10)_mask.png"
    assert all(";" not in x.metadata["mask_paths"] for x in ds.samples)


def test_imagefolder_loader(tmp_path):
    for c in ("COVID", "non-COVID"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("L", (8, 8), i).save(tmp_path / c / f"{i}.png")
    ds = load_dataset("sarscov2ct", tmp_path)
    assert [s.label for s in ds.samples] == [0, 0, 0, 1, 1, 1]


def test_missing_empty_or_wrong_layout_root_names_path_and_layout(tmp_path):
    with pytest.raises(VlmprobeError, match="does not exist. Expected layout"):
        load_dataset("breastus", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VlmprobeError, match="is empty"):
        load_dataset("breastus", tmp_path / "empty")
    (tmp_path / "wrong" / "cats").mkdir(parents=True)
    with pytest.raises(VlmprobeError, match="none of the class folders"):
        load_dataset("breastus", tmp_path / "wrong")


def test_data_root_from_environment(tiny_busi, monkeypatch):
    monkeypatch.setenv("VLMPROBE_DATA", str(tiny_busi.parent))
    shutil.move(tiny_busi, tiny_busi.parent / "breastus")
    assert len(load_dataset("breastus")) == 30


def test_fingerprint_is_content_based_not_mtime(tiny_busi, tmp_path):
    ds = load_dataset("breastus", tiny_busi)
    rel = [s.relpath for s in ds.samples]
    _, _, fp = fingerprint_files(ds.root, rel)
    copy = shutil.copytree(tiny_busi, tmp_path / "copy")  # new mtimes
    assert fingerprint_files(copy, rel)[2] == fp
    assert fingerprint_files(copy, list(reversed(rel)))[2] == fp
    Image.new("L", (90, 120), 7).save(copy / rel[0])
    assert fingerprint_files(copy, rel)[2] != fp


def test_read_image_converts_16bit_palette_and_rgba(tmp_path):
    a16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "a.png")
    rgb = np.asarray(read_image(tmp_path / "a.png"))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8 and rgb.max() > 200
    Image.new("RGBA", (5, 5), (10, 20, 30, 0)).save(tmp_path / "b.png")
    Image.new("P", (5, 5)).save(tmp_path / "c.png")
    for name in ("b.png", "c.png"):
        assert read_image(tmp_path / name).mode == "RGB"


def test_malformed_datasets_yaml_names_file_and_fields(tmp_path):
    bad = tmp_path / "datasets.yaml"
    bad.write_text("datasets: [oops")
    with pytest.raises(VlmprobeError, match="datasets.yaml is not valid YAML"):
        load_datasets_file(bad)
    bad.write_text("datasets:\n  x: {paper_name: X, colour: red}\n")
    with pytest.raises(VlmprobeError, match="entry 'x'.*Known fields: paper_name"):
        load_datasets_file(bad)
