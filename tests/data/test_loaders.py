"""Loaders beyond ImageFolder (CSV manifests, MedMNIST npz, DICOM) and the bad input they refuse.

Fixtures are tiny files written into tmp_path; DICOMs are pydicom's own test files.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from vlmprobe.data import LOADERS, fingerprint_files, load_dataset, read_image, read_sample
from vlmprobe.data.decode import FLOAT_PIPELINE, INTENSITY_PIPELINE, NPZ_PIPELINE
from vlmprobe.registry import DatasetEntry
from vlmprobe.extraction.batches import _DecodedImages
from vlmprobe.validation import VlmprobeError

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


def _npz(path, n_train=6, n_val=3, size=28, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


def _csv_entry(**kw) -> DatasetEntry:
    return DatasetEntry(**{"name": "x", "paper_name": "X", "modality": "-", "classes": ["a", "b"],
                           "layout": "csv", "layout_help": "<root>/m.csv", "manifest": "m.csv",
                           "label_column": "label", **kw})


def _dicom(tmp_path, name, **tags):
    """A copy of one of pydicom's test files, with ``tags`` changed."""
    ds = pydicom.dcmread(get_testdata_file(name))
    for k, v in tags.items():
        setattr(ds, k, v)
    out = tmp_path / f"{name}-{len(tags)}.dcm"
    ds.save_as(out)
    return out


# -- MedMNIST ------------------------------------------------------------------------------
def test_medmnist_reads_only_the_recorded_split_and_size(tmp_path):
    arrays = _npz(tmp_path / "pneumoniamnist.npz")
    ds = load_dataset("pneumoniamnist", tmp_path)
    assert len(ds) == 6 and ds.entry.splits == ["train"] and ds.entry.size == 28
    assert ds.samples[1].relpath == "pneumoniamnist.npz#train_images/1"
    assert [s.label for s in ds.samples] == [0, 1, 0, 1, 0, 1]
    im = ds.load_image(4)
    assert im.mode == "RGB" and im.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(im)[..., 0], arrays["train_images"][4])
    assert ds.intensity_pipeline == NPZ_PIPELINE
    assert len(load_dataset("pneumoniamnist", tmp_path, splits=["train", "val"])) == 9
    with pytest.raises(VlmprobeError, match="pneumoniamnist_64.npz.*size 64"):
        load_dataset("pneumoniamnist", tmp_path, size=64)
    _npz(tmp_path / "pneumoniamnist_64.npz", size=64)
    assert load_dataset("pneumoniamnist", tmp_path, size=64).load_image(0).size == (64, 64)
    with pytest.raises(VlmprobeError, match="Unknown dataset option"):
        load_dataset("pneumoniamnist", tmp_path, resolution=64)


def test_medmnist_fingerprint_reads_the_file_once_and_covers_which_slots(tmp_path):
    _npz(tmp_path / "pneumoniamnist.npz")
    rel = [s.relpath for s in load_dataset("pneumoniamnist", tmp_path).samples]
    sizes, digests, fp = fingerprint_files(tmp_path, rel)
    assert len(set(digests)) == 1 and sizes[0] == (tmp_path / "pneumoniamnist.npz").stat().st_size
    assert fingerprint_files(tmp_path, rel[:-1])[2] != fp  # a slot fewer: another dataset
    _npz(tmp_path / "pneumoniamnist.npz", seed=1)
    assert fingerprint_files(tmp_path, rel)[2] != fp


def test_medmnist_labels_outside_the_classes_are_refused(tmp_path):
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=np.zeros((2, 28, 28), np.uint8),
             train_labels=np.array([[0], [5]]))
    with pytest.raises(VlmprobeError, match="outside 0..1"):
        load_dataset("pneumoniamnist", tmp_path)


def test_npz_samples_go_through_extract(tmp_path, lite0):
    from vlmprobe.cache import read_cache
    from vlmprobe.data import file_digest, sample_file
    from vlmprobe.extraction import extract

    (tmp_path / "data").mkdir()
    _npz(tmp_path / "data" / "pneumoniamnist.npz", n_train=4)
    r = extract("efficientnet_lite0", "pneumoniamnist", root=tmp_path / "data",
                out=tmp_path / "cache", num_workers=0, progress=False)
    c = read_cache(r.path)
    assert r.n_images == 4 and c.attrs["intensity_pipeline"] == NPZ_PIPELINE
    assert c.files["relpath"] == c.relpaths
    # What explain_cache does (end to end it takes ~25 s): check the file's digest, decode the slot.
    rel = c.relpaths[2]
    assert file_digest(tmp_path / "data" / sample_file(rel)) == c.files["digest"][2]
    x = lite0.transform_(read_sample(tmp_path / "data", rel))[None]
    np.testing.assert_allclose(c.embeddings[2], lite0.encode_images(x)[0].numpy(), atol=1e-4)


# -- CSV manifests ------------------------------------------------------------------------
def test_csv_manifest_with_named_labels_groups_and_metadata(tmp_path):
    (tmp_path / "train").mkdir()
    rows = ["image_name\tlevel_1\tlevel_3\tpatient\tsite"]
    for i, c in enumerate(["ASC-US", "NILM", "ASC-US", "HSIL"]):
        Image.new("L", (8, 8), i * 40).save(tmp_path / "train" / f"{i}.jpg")
        rows.append(f"{i}.jpg\tL1\t{c}\tp{i // 2}\tsite{i}")
    (tmp_path / "m.tsv").write_text("\n".join(rows) + "\n")
    entry = _csv_entry(manifest="m.tsv", path_column="image_name", path_format="train/{}",
                       label_column="level_3", classes=["ASC-US", "HSIL", "NILM"],
                       group_column="patient", metadata_columns=["site"])
    samples = LOADERS["csv"](entry, tmp_path)
    assert [s.relpath for s in samples] == [f"train/{i}.jpg" for i in range(4)]
    assert [s.label for s in samples] == [0, 2, 0, 1]
    assert samples[3].metadata == {"site": "site3", "group": "p1"}


def test_hicervix_classes_come_from_the_manifest(tmp_path):
    (tmp_path / "train").mkdir()
    lines = ["image_name,level_1,level_2,level_3"]
    for i, c in enumerate(["NILM", "HSIL", "NILM"]):
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / f"{i}.jpg")
        lines.append(f"{i}.jpg,a,b,{c}")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset("hicervix", tmp_path)
    assert ds.class_names == ["HSIL", "NILM"] and [s.label for s in ds.samples] == [1, 0, 1]
    assert ds.samples[0].metadata == {"level_1": "a", "level_2": "b"}


def test_isic_one_hot_columns_and_rows_with_no_or_two_labels(tmp_path):
    cols = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    (tmp_path / "ISIC_2019_Training_Input").mkdir()
    gt = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    lines = ["image," + ",".join(cols)]
    for i, hot in enumerate([1, 0, 7]):
        Image.new("RGB", (8, 8)).save(tmp_path / "ISIC_2019_Training_Input" / f"ISIC_{i}.jpg")
        lines.append(f"ISIC_{i}," + ",".join("1.0" if k == hot else "0.0" for k in range(9)))
    gt.write_text("\n".join(lines) + "\n")
    ds = load_dataset("isic2019", tmp_path)
    assert [s.label for s in ds.samples] == [1, 0, 7]
    assert ds.samples[2].relpath == "ISIC_2019_Training_Input/ISIC_2.jpg"
    gt.write_text("\n".join(lines + ["ISIC_9," + ",".join(["1.0"] * 2 + ["0.0"] * 7)]) + "\n")
    with pytest.raises(VlmprobeError, match=r"GroundTruth.csv row 5: expected exactly one 1"):
        load_dataset("isic2019", tmp_path)


def test_csv_unknown_label_is_an_error_naming_the_row(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.png,a\nb.png,c\n")
    with pytest.raises(VlmprobeError, match=r"m.csv row 3: unknown label 'c'.*known classes"):
        LOADERS["csv"](_csv_entry(), tmp_path)
    (tmp_path / "m.csv").write_text("path,label\na.png,a,extra\n")
    with pytest.raises(VlmprobeError, match="row 2 does not have the header's 2 fields"):
        LOADERS["csv"](_csv_entry(), tmp_path)
    (tmp_path / "m.csv").write_text("path,label\na.png,a\n")
    with pytest.raises(VlmprobeError, match="names a column 'patient'"):
        LOADERS["csv"](_csv_entry(path_format="{patient}/{}"), tmp_path)
    (tmp_path / "m.csv").write_text("path,y\na.png,a\n")
    with pytest.raises(VlmprobeError, match=r"m.csv: columns \['label'\] not found"):
        LOADERS["csv"](_csv_entry(), tmp_path)


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "sub/../../x.png", "..\\x.png"])
def test_csv_paths_escaping_the_root_are_refused(tmp_path, bad):
    (tmp_path / "m.csv").write_text(f"path,label\nok.png,a\n{bad},b\n")
    with pytest.raises(VlmprobeError, match="row 3: path .* outside the dataset root"):
        LOADERS["csv"](_csv_entry(), tmp_path)


# -- DICOM and high bit depth ---------------------------------------------------------------
def test_dicom_window_from_tags_and_min_max_fallback(tmp_path):
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # WindowCenter 600, Width 1600
    got = np.asarray(read_image(get_testdata_file("MR_small.dcm")))[..., 0].astype(float)
    want = np.clip((mr.pixel_array - 599.5) / 1599 + 0.5, 0, 1) * 255
    np.testing.assert_allclose(got, want, atol=0.51)
    minmax = np.asarray(read_image(get_testdata_file("MR_small.dcm"), "minmax"))
    assert minmax.min() == 0 and minmax.max() == 255 and not np.array_equal(minmax[..., 0], got)
    ct = np.asarray(read_image(get_testdata_file("CT_small.dcm")))  # no window tags: min-max
    assert ct.dtype == np.uint8 and ct.shape == (128, 128, 3) and (ct.min(), ct.max()) == (0, 255)
    fixed = np.asarray(read_image(get_testdata_file("CT_small.dcm"), "40,400"))
    assert not np.array_equal(fixed, ct)
    with pytest.raises(VlmprobeError, match="'tags', 'minmax' or 'CENTER,WIDTH'"):
        read_image(get_testdata_file("CT_small.dcm"), "soft tissue")
    (tmp_path / "COVID").mkdir()
    with pytest.raises(VlmprobeError, match="'soft' is not 'tags'"):
        load_dataset("sarscov2ct", tmp_path, dicom_window="soft")


def test_dicom_rescale_slope_intercept_is_applied(tmp_path):
    plain = _dicom(tmp_path, "MR_small.dcm")
    scaled = _dicom(tmp_path, "MR_small.dcm", RescaleSlope=2, RescaleIntercept=-100,
                    WindowCenter=1100, WindowWidth=3200)  # the same window in rescaled units
    a, b = (np.asarray(read_image(p)).astype(int) for p in (plain, scaled))
    assert np.abs(a - b).max() <= 1


def test_dicom_monochrome1_is_inverted(tmp_path):
    m2 = np.asarray(read_image(_dicom(tmp_path, "CT_small.dcm")))
    m1 = _dicom(tmp_path, "CT_small.dcm", PhotometricInterpretation="MONOCHROME1")
    m1 = np.asarray(read_image(m1))
    np.testing.assert_array_equal(m1, 255 - m2)


def test_dicom_rgb_is_kept(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    path = _dicom(tmp_path, "CT_small.dcm", PhotometricInterpretation="RGB", SamplesPerPixel=3,
                  PlanarConfiguration=0, BitsAllocated=8, BitsStored=8, HighBit=7,
                  PixelRepresentation=0, PixelData=rgb.tobytes())
    np.testing.assert_array_equal(np.asarray(read_image(path)), rgb)


def test_dicom_multiframe_is_refused(tmp_path):
    with pytest.raises(VlmprobeError, match="has 2 frames.*separate files"):
        read_image(_dicom(tmp_path, "CT_small.dcm", NumberOfFrames=2))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm", "JPEG2000.dcm"])
def test_compressed_dicom_decodes_with_the_dicom_extra(name):
    """RLE needs pydicom alone; JPEG-LS and JPEG 2000 the decoders the ``dicom`` extra installs."""
    path = get_testdata_file(name)
    im = read_image(path)
    assert im.mode == "RGB" and np.asarray(im).max() > 0
    if name.startswith("MR_small"):  # lossless encodings of MR_small.dcm: the same pixels
        reference = read_image(get_testdata_file("MR_small.dcm"), "minmax")
        assert np.array_equal(np.asarray(read_image(path, "minmax")), np.asarray(reference))


def test_dicom_and_16bit_png_in_an_imagefolder_record_both_pipelines(tmp_path):
    (tmp_path / "COVID").mkdir()
    (tmp_path / "non-COVID").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "COVID" / "a.dcm")
    Image.fromarray((np.arange(16 * 16).reshape(16, 16) * 200).astype(np.uint16)).save(
        tmp_path / "non-COVID" / "b.png")
    ds = load_dataset("sarscov2ct", tmp_path, dicom_window="minmax")
    assert [s.relpath for s in ds.samples] == ["COVID/a.dcm", "non-COVID/b.png"]
    assert ds.intensity_pipeline.startswith(INTENSITY_PIPELINE + " + dicom:")
    assert "window minmax" in ds.intensity_pipeline
    assert "window tags" in load_dataset("sarscov2ct", tmp_path).intensity_pipeline
    png = np.asarray(ds.load_image(1))
    assert png.shape == (16, 16, 3) and png[15, 15, 0] == round(255 * 200 / 257)
    assert ds.load_image(0).size == (128, 128)


def test_dicom_without_pydicom_stops_the_run_naming_the_extra(tmp_path, monkeypatch):
    """Not one "unreadable file" skip per image: the first DICOM file and the install command."""
    (tmp_path / "COVID").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "COVID" / "a.dcm")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # what an environment without it imports
    with pytest.raises(VlmprobeError, match=r"COVID/a.dcm needs pydicom to read DICOM, and "
                                            r"pydicom is not installed here: pip install "
                                            r"'vlmprobe\[dicom\]'"):
        load_dataset("sarscov2ct", tmp_path)


# -- bad image files --------------------------------------------------------------------------
def _folder_with(tmp_path, files: dict[str, bytes]):
    for cls in ("COVID", "non-COVID"):
        (tmp_path / cls).mkdir(exist_ok=True)
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    return load_dataset("sarscov2ct", tmp_path)


def _encoded(fmt: str, mode="RGB") -> bytes:
    import io

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).convert(mode).save(buf, fmt)
    return buf.getvalue()


def test_truncated_png_and_jpeg_are_reported_skips(tmp_path):
    png, jpg = _encoded("PNG"), _encoded("JPEG")
    ds = _folder_with(tmp_path, {"COVID/ok.png": png, "COVID/t.png": png[: len(png) // 2],
                                 "non-COVID/t.jpg": jpg[: len(jpg) // 2]})
    items = [_DecodedImages(ds, np.asarray)[i] for i in range(len(ds))]
    errors = {ds.samples[i].relpath: err for i, x, err in items}
    assert errors["COVID/ok.png"] == ""
    assert errors["COVID/t.png"] and errors["non-COVID/t.jpg"]  # recorded, the run goes on


@pytest.mark.parametrize("side", [12, 40])  # over PIL's limit (warning) and over twice it (error)
def test_decompression_bomb_is_a_reported_skip_with_a_clear_message(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("L", (side, side)).save(tmp_path / "bomb.png")
    with pytest.raises(VlmprobeError, match="bomb.png.*decompression bomb.*MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "bomb.png")
    ds = _folder_with(tmp_path, {"COVID/bomb.png": (tmp_path / "bomb.png").read_bytes()})
    assert "decompression bomb" in _DecodedImages(ds, np.asarray)[0][2]


@pytest.mark.parametrize("fmt,mode", [("JPEG", "CMYK"), ("PNG", "P"), ("PNG", "RGBA"),
                                      ("PNG", "LA"), ("TIFF", "I;16")])
def test_cmyk_palette_rgba_and_16bit_become_rgb(tmp_path, fmt, mode):
    path = tmp_path / f"x.{fmt.lower()}"
    if mode == "I;16":
        Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(path)
    else:
        path.write_bytes(_encoded(fmt, mode))
    im = read_image(path)
    assert im.mode == "RGB" and (mode != "I;16" or np.asarray(im).min() == 255)


def test_isic_metadata_joined_on_image_with_lesion_groups(tmp_path):
    from vlmprobe.data.splits import group_ids

    cols = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    (tmp_path / "ISIC_2019_Training_Input").mkdir()
    gt = ["image," + ",".join(cols)]
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "ISIC_2019_Training_Input" / f"ISIC_{i}.jpg")
        gt.append(f"ISIC_{i}," + ",".join("1.0" if k == i % 2 else "0.0" for k in range(9)))
    (tmp_path / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(gt) + "\n")
    meta = tmp_path / "ISIC_2019_Training_Metadata.csv"
    meta.write_text("image,age_approx,anatom_site_general,lesion_id,sex\n"
                    "ISIC_0,55.0,head/neck,IL_1,male\nISIC_1,30.0,,IL_1,female\n"
                    "ISIC_2,70.0,lower extremity,,male\n")  # ISIC_3 has no metadata row
    ds = load_dataset("isic2019", tmp_path)
    m = [s.metadata for s in ds.samples]
    assert m[0]["age_approx"] == "55.0" and m[0]["anatom_site_general"] == "head/neck"
    assert [x.get("group") for x in m] == ["IL_1", "IL_1", "", ""]
    assert "age_approx" not in m[3]
    g = group_ids([x["group"] for x in m], [s.relpath for s in ds.samples])
    assert g[0] == g[1] and len({g[1], g[2], g[3]}) == 3  # no lesion id: a group of its own
    meta.write_text("isic_id,age_approx\nISIC_0,55\n")
    with pytest.raises(VlmprobeError, match="Metadata.csv is unreadable or has no 'image' column"):
        load_dataset("isic2019", tmp_path)
    meta.unlink()  # the metadata file is optional: no groups then
    assert all("group" not in s.metadata for s in load_dataset("isic2019", tmp_path).samples)


def test_float_intensity_pipeline_view_and_decoders(tmp_path):
    """intensity="float": its own pipeline string and cache view; DICOM monochrome (either
    polarity), DICOM RGB, 16-bit PNG and npz decode to float32 RGB in [0, 1], unrounded."""
    from vlmprobe.data.decode import dicom_pipeline

    for cls in ("COVID", "non-COVID"):
        (tmp_path / cls).mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "COVID" / "a.dcm")
    Image.fromarray((np.arange(16 * 16).reshape(16, 16) * 200).astype(np.uint16)).save(
        tmp_path / "non-COVID" / "b.png")
    flt = load_dataset("sarscov2ct", tmp_path, intensity="float")
    assert flt.intensity_pipeline == f"{FLOAT_PIPELINE} + {dicom_pipeline('tags', 'float')}"
    assert "no 8-bit rounding" in flt.intensity_pipeline
    assert (load_dataset("sarscov2ct", tmp_path).cache_view, flt.cache_view) == ("", "float")
    assert load_dataset("sarscov2ct", tmp_path, dicom_window="40,400",
                        intensity="float").cache_view == "window=40,400;float"
    png = flt.load_image(1)
    assert png.dtype == np.float32 and png.shape == (16, 16, 3)
    assert png[15, 15, 0] == np.float32(255 * 200 / 65535)
    m2 = flt.load_image(0)
    m1 = read_image(_dicom(tmp_path, "CT_small.dcm", PhotometricInterpretation="MONOCHROME1"),
                    intensity="float")
    np.testing.assert_allclose(m1, 1 - m2, atol=1e-6)
    rgb = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    path = _dicom(tmp_path, "CT_small.dcm", PhotometricInterpretation="RGB", SamplesPerPixel=3,
                  PlanarConfiguration=0, BitsAllocated=8, BitsStored=8, HighBit=7,
                  PixelRepresentation=0, PixelData=rgb.tobytes())
    np.testing.assert_allclose(read_image(path, intensity="float"), rgb / 255, atol=1e-6)
    _npz(tmp_path / "pneumoniamnist.npz")
    npz = load_dataset("pneumoniamnist", tmp_path, intensity="float", dicom_window="minmax")
    assert npz.cache_view == "float"  # no DICOM here: the window changes nothing, names nothing
    assert npz.intensity_pipeline == "medmnist npz uint8 -> RGB -> float32 /255"
    np.testing.assert_array_equal(npz.load_image(0) * 255, np.asarray(
        load_dataset("pneumoniamnist", tmp_path).load_image(0), np.float32))
