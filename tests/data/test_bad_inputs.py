"""The bad-input corpus (bad_inputs.py) through ``datasets check`` and ``extract``, as a user runs
them (the console entry point, in process): every case ends as its expected outcome, embedded,
skipped naming the file, or refused with a message, never a traceback; and a refused run leaves
the cache an earlier run wrote byte for byte as it was."""
from __future__ import annotations

import re

import numpy as np
import pytest

from vlmprobe.cache import read_cache
from vlmprobe.data import load_dataset, read_image
from vlmprobe.data.check import check_dataset
from vlmprobe.registry.datasets import load_datasets_file

import bad_inputs as bad
from cli_helpers import cli

pydicom = pytest.importorskip("pydicom")


def test_corpus_has_at_least_30_cases():
    n = (len(bad.EMBEDDED) + len(bad.SKIPPED) + len(bad.CSV_CASES) + len(bad.NPZ_CASES)
         + len(bad.YAML_CASES))
    assert n >= 30, n


@pytest.fixture
def corpus(tmp_path):
    return bad.write_image_corpus(tmp_path / "corpus")


def test_datasets_check_names_every_unreadable_file_and_the_exif_rotation(corpus, capsys):
    code, text = cli(capsys, "datasets", "check", bad.IMAGE_DATASET, "--root", str(corpus))
    assert code == 1  # unreadable files are errors
    report = check_dataset(bad.IMAGE_DATASET, corpus)
    unreadable = {f.paths[0]: f.message for f in report.of("unreadable")}
    assert set(unreadable) == {c.relpath for c in bad.SKIPPED}
    for case in bad.SKIPPED:
        assert re.search(case.match, unreadable[case.relpath]), (case.relpath, unreadable)
        assert f"unreadable: {corpus / case.relpath}: " in text
    assert report.n_images == len(bad.EMBEDDED) + len(bad.SKIPPED) + 6  # + 3 plain per class
    [rotated] = report.of("exif_rotated")
    assert rotated.level == "warning" and rotated.paths == ("COVID/exif_rotated.jpg",)
    assert "warning exif_rotated: 1 image(s) carry an EXIF rotation" in text


def test_extract_embeds_the_unusual_skips_the_broken_by_name_and_a_refusal_loses_nothing(
        corpus, tiny_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "caches"
    code, text = cli(capsys, "extract", "--model", tiny_model, "--dataset", bad.IMAGE_DATASET,
                     "--root", str(corpus), "--out", str(out), "--workers", "0")
    assert code == 0, text
    cache = read_cache(out / bad.IMAGE_DATASET / f"{tiny_model}.h5")
    for case in bad.EMBEDDED:
        assert case.relpath in cache.relpaths
    assert np.isfinite(cache.embeddings).all() and len(cache.relpaths) == len(bad.EMBEDDED) + 6
    skipped = dict(zip(cache.skipped["relpath"], cache.skipped["error"]))
    assert set(skipped) == {c.relpath for c in bad.SKIPPED}
    for case in bad.SKIPPED:
        assert re.search(case.match, skipped[case.relpath]), (case.relpath, skipped)
    assert f"{len(bad.SKIPPED)}" in text and "skipped" in text
    before = (out / bad.IMAGE_DATASET / f"{tiny_model}.h5").read_bytes()

    # refused runs (bad registry, bad manifest) into the same --out change nothing there
    registry = tmp_path / "bad_registry.yaml"
    registry.write_text(bad.YAML_CASES[0][1])
    monkeypatch.setenv("VLMPROBE_REGISTRY", str(registry))
    code, text = cli(capsys, "extract", "--model", "tiny_bad", "--dataset", bad.IMAGE_DATASET,
                     "--root", str(corpus), "--out", str(out), "--workers", "0")
    assert code == 2 and "must be int" in text
    assert (out / bad.IMAGE_DATASET / f"{tiny_model}.h5").read_bytes() == before


@pytest.mark.parametrize("name,manifest,encoding,refusal", bad.CSV_CASES,
                         ids=[c[0] for c in bad.CSV_CASES])
def test_csv_manifests(name, manifest, encoding, refusal, tmp_path, capsys):
    root = bad.write_csv_dataset(tmp_path / name, manifest, encoding=encoding)
    code, text = cli(capsys, "datasets", "check", bad.CSV_DATASET, "--root", str(root))
    if refusal is None:
        ds = load_dataset(bad.CSV_DATASET, root)
        assert [s.relpath for s in ds.samples] == ["train/a.png", "train/b.png"]
        assert code in (0, 1) and "error unreadable" not in text  # counts differ: a warning
        if name == "latin1":
            assert "Atypie é" in ds.class_names
        return
    assert code == 2 and re.search(refusal, text), text
    assert str(root / "train.csv") in text


@pytest.mark.parametrize("name,write,refusal", bad.NPZ_CASES, ids=[c[0] for c in bad.NPZ_CASES])
def test_medmnist_npz_files(name, write, refusal, tmp_path, capsys):
    tmp_path.joinpath(name).mkdir()
    path = tmp_path / name / f"{bad.NPZ_DATASET}.npz"
    write(path)
    code, text = cli(capsys, "datasets", "check", bad.NPZ_DATASET, "--root", str(path.parent))
    if refusal is None:
        assert code in (0, 1) and "error unreadable" not in text and "4 images listed" in text
        return
    assert code == 2 and re.search(refusal, text) and str(path) in text, text


@pytest.mark.parametrize("name,text_,refusal", bad.YAML_CASES, ids=[c[0] for c in bad.YAML_CASES])
def test_registry_yaml_files(name, text_, refusal, tmp_path, capsys, monkeypatch):
    registry = tmp_path / "registry.yaml"
    registry.write_text(text_)
    monkeypatch.setenv("VLMPROBE_REGISTRY", str(registry))
    code, text = cli(capsys, "models")
    assert code == 2 and re.search(refusal, text) and str(registry) in text, text
    assert "owned" not in text  # the unsafe tag was never run


def test_datasets_yaml_wrong_type_and_duplicate_key_name_file_entry_and_field(tmp_path):
    from vlmprobe.validation import VlmprobeError

    entry = ("datasets:\n  mine:\n    paper_name: M\n    modality: x\n    classes: {classes}\n"
             "    layout: imagefolder\n    layout_help: <root>/<class>/*.png\n")
    path = tmp_path / "datasets.yaml"
    path.write_text(entry.format(classes="[a, b]"))
    assert load_datasets_file(path)["mine"].classes == ["a", "b"]
    path.write_text(entry.format(classes="a, b"))
    with pytest.raises(VlmprobeError, match="entry 'mine': field 'classes' must be list"):
        load_datasets_file(path)
    path.write_text(entry.format(classes="[a, b]") + "    modality: y\n")
    with pytest.raises(VlmprobeError, match="key 'modality' is given twice"):
        load_datasets_file(path)


def test_voi_lut_sequence_is_applied_with_pydicom(tmp_path):
    """A DICOM whose window is a VOI LUT Sequence (no WindowCenter/Width) reads through it,
    not min-max."""
    from pydicom.pixels import apply_rescale, apply_voi_lut

    path = tmp_path / "voi.dcm"
    bad._dicom(bad.add_voi_lut)(path)
    ds = pydicom.dcmread(path)
    want = apply_voi_lut(np.rint(apply_rescale(ds.pixel_array, ds)).astype(np.int64), ds) / 255
    got = np.asarray(read_image(path))[..., 0]
    np.testing.assert_allclose(got, np.round(want * 255), atol=0.51)
    minmax = np.asarray(read_image(path, "minmax"))[..., 0]
    assert np.abs(minmax.astype(int) - got).max() > 50


def test_dicom_without_suffix_is_listed_and_a_plain_file_without_one_is_not(tmp_path):
    bad.write_image_corpus(tmp_path / "c", fillers=1)
    (tmp_path / "c" / "COVID" / "README").write_text("not an image")
    listed = [s.relpath for s in load_dataset(bad.IMAGE_DATASET, tmp_path / "c").samples]
    assert "non-COVID/IM000001" in listed and "COVID/README" not in listed
