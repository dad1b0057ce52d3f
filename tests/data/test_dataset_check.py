"""`vlmprobe datasets check` and grouped splits on tiny fixtures with planted faults.

Each fixture plants what the check must find (an exact duplicate, a resized JPEG-recompressed
copy, a truncated file, a patient on both sides of a split) and the tests assert it is reported
with its path, at the right level, with the right exit code.
"""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from vlmprobe.cli import app
from vlmprobe.data.check import check_dataset, dataset_split, near_duplicate_clusters
from vlmprobe.data import load_dataset
from vlmprobe.data.splits import (Split, SplitSpec, crossing_groups, make_split, read_split, write_split)
from vlmprobe.validation import VlmprobeError

runner = CliRunner()


def _smooth(rng, side=64) -> Image.Image:
    """A smooth random image: distinct ones differ in >= 12 of 64 dHash bits."""
    a = ndimage.gaussian_filter(rng.normal(size=(side, side)), 4)
    return Image.fromarray(((a - a.min()) / np.ptp(a) * 255).astype(np.uint8))


def _ct(root, per_class=8, seed=0):
    rng = np.random.default_rng(seed)
    for c in ("COVID", "non-COVID"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            _smooth(rng).save(root / c / f"{i}.png")
    return root


def _jpeg_resized(src, dst, side=48, quality=60):
    buf = io.BytesIO()
    Image.open(src).resize((side, side)).save(buf, "JPEG", quality=quality)
    dst.write_bytes(buf.getvalue())


@pytest.fixture
def faulty(tmp_path):
    """8+8 clean CT slices plus an exact copy, a resized JPEG copy and a truncated PNG."""
    root = _ct(tmp_path / "ct")
    shutil.copy(root / "COVID" / "0.png", root / "non-COVID" / "copy_of_0.png")
    _jpeg_resized(root / "COVID" / "1.png", root / "COVID" / "1_small.jpg")
    png = (root / "COVID" / "2.png").read_bytes()
    (root / "COVID" / "broken.png").write_bytes(png[: len(png) // 2])
    return root


def test_check_reports_planted_faults_by_path(faulty):
    r = check_dataset("sarscov2ct", faulty)
    assert not r.ok and r.n_images == 19
    assert [f.paths for f in r.of("unreadable")] == [("COVID/broken.png",)]
    assert "COVID/broken.png" in r.of("unreadable")[0].message
    assert [f.paths for f in r.of("exact_duplicates")] == [("COVID/0.png", "non-COVID/copy_of_0.png")]
    assert "COVID/0.png (COVID), non-COVID/copy_of_0.png (non-COVID)" in r.of("label_conflict")[0].message
    assert [f.paths for f in r.of("near_duplicates")] == [("COVID/1.png", "COVID/1_small.jpg")]
    assert r.counts == {"COVID": (10, 1252), "non-COVID": (9, 1229)}
    assert [f.level for f in r.of("count")] == ["warning"]
    assert {f.level for f in r.errors} == {"error"} and len(r.errors) == 1  # only the unreadable


def test_clean_copy_passes_and_strict_turns_counts_into_errors(tmp_path):
    root = _ct(tmp_path / "ct")
    r = check_dataset("sarscov2ct", root)
    assert r.ok and not r.of("exact_duplicates") and not r.of("near_duplicates")
    assert not check_dataset("sarscov2ct", root, strict=True).ok


def test_missing_class_is_an_error_but_isic_unk_empty_is_fine(tmp_path):
    root = _ct(tmp_path / "ct")
    shutil.rmtree(root / "non-COVID")
    r = check_dataset("sarscov2ct", root)
    assert [f.kind for f in r.errors] == ["missing_class"] and "non-COVID" in r.errors[0].message
    isic = tmp_path / "isic"
    (isic / "ISIC_2019_Training_Input").mkdir(parents=True)
    cols = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    lines = ["image," + ",".join(cols)]
    rng = np.random.default_rng(1)
    for i in range(16):
        _smooth(rng).convert("RGB").save(isic / "ISIC_2019_Training_Input" / f"ISIC_{i}.jpg")
        lines.append(f"ISIC_{i}," + ",".join("1.0" if k == i % 8 else "0.0" for k in range(9)))
    (isic / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    r = check_dataset("isic2019", isic)
    assert r.ok and r.counts["UNK"] == (0, 0) and [f.kind for f in r.of("empty_class")] == ["empty_class"]


def test_near_duplicate_clusters_chain_and_collapse_identical_hashes():
    bits = np.zeros((5, 64), bool)
    bits[1, :3] = True  # 3 bits from 0
    bits[2, :6] = True  # 3 bits from 1, 6 from 0: same cluster by the chain
    bits[3, 30:60] = True  # far from all
    c = near_duplicate_clusters(bits, threshold=4)  # row 4 == row 0: identical hash
    assert c[0] == c[1] == c[2] == c[4] and c[3] != c[0]
    assert len(set(near_duplicate_clusters(bits, threshold=0))) == 4


def _breakhis(root, patients=12, per_patient=4, seed=0):
    """BreakHis layout, patient id in the file name; class alternates by patient."""
    rng = np.random.default_rng(seed)
    for p in range(patients):
        cls, code = ("benign", "B") if p % 2 == 0 else ("malignant", "M")
        pid = f"14-{1000 + p}AB"
        folder = root / cls / "SOB" / "adenosis" / f"SOB_{code}_A_{pid}" / "40X"
        folder.mkdir(parents=True)
        for k in range(per_patient):
            _smooth(rng).save(folder / f"SOB_{code}_A-{pid}-40-{k:03d}.png")
    return root


def test_breakhis_patient_ids_come_from_file_names(tmp_path):
    ds = load_dataset("breakhis", _breakhis(tmp_path / "bh"))
    assert len({s.metadata["group"] for s in ds.samples}) == 12
    assert ds.samples[0].metadata["group"] == "14-1000AB"
    bad = next(tmp_path.rglob("*.png"))
    bad.rename(bad.with_name("slide.png"))
    with pytest.raises(VlmprobeError, match="slide.png.*group_pattern"):
        load_dataset("breakhis", tmp_path / "bh")


def _split_for(ds, grouping, test_paths=None):
    rel = [s.relpath for s in ds.samples]
    y = np.array([s.label for s in ds.samples])
    if test_paths is None:
        groups = [s.metadata.get("group", "") for s in ds.samples]
        return make_split(rel, y, SplitSpec(grouping=grouping), groups=groups)
    test = np.array([r in test_paths for r in rel])
    return Split(rel, test, np.where(test, -1, 0), SplitSpec(grouping=grouping))


def test_patient_crossing_is_an_error_for_grouped_and_a_warning_for_paper(tmp_path):
    ds = load_dataset("breakhis", _breakhis(tmp_path / "bh"))
    one_image = [s.relpath for s in ds.samples if s.metadata["group"] == "14-1003AB"][:1]
    names = {s.relpath: ds.class_names[s.label] for s in ds.samples}
    for grouping, level in (("grouped", "error"), ("paper", "warning")):
        path = write_split(_split_for(ds, grouping, set(one_image)), names,
                           tmp_path / f"{grouping}.csv", {})
        r = check_dataset("breakhis", tmp_path / "bh", split=path)
        leak = r.of("group_leak")
        assert [f.level for f in leak] == [level] and "1 of 12 patients" in leak[0].message
        assert set(leak[0].paths) == {s.relpath for s in ds.samples
                                      if s.metadata["group"] == "14-1003AB"}
        result = runner.invoke(app, ["datasets", "check", "breakhis", "--root",
                                     str(tmp_path / "bh"), "--split", str(path)])
        assert result.exit_code == (1 if grouping == "grouped" else 0), result.output
        assert "group_leak" in result.output


def test_duplicate_crossing_the_split_is_reported(faulty):
    ds = load_dataset("sarscov2ct", faulty)
    r = check_dataset("sarscov2ct", faulty, split=_split_for(ds, "paper", {"non-COVID/copy_of_0.png"}))
    leak = r.of("duplicate_leak")
    assert leak[0].level == "warning" and set(leak[0].paths) == {"COVID/0.png", "non-COVID/copy_of_0.png"}


def test_grouped_split_never_splits_a_patient(tmp_path):
    ds = load_dataset("breakhis", _breakhis(tmp_path / "bh", patients=40, per_patient=5))
    rel = [s.relpath for s in ds.samples]
    groups = [s.metadata["group"] for s in ds.samples]
    for seed in range(3):
        y = np.array([s.label for s in ds.samples])
        s = make_split(rel, y, SplitSpec(grouping="grouped", seed=seed), groups=groups)
        assert crossing_groups(s, rel, groups) == (0, 40)
        test, fold = s.align(rel, "t")
        for g in set(groups):  # one fold per patient, too
            assert len({int(f) for f, gg in zip(fold, groups) if gg == g}) == 1
        assert 0.1 < test.mean() < 0.3 and set(y[test]) == {0, 1}
    paper = make_split(rel, y, SplitSpec(grouping="paper"), groups=groups)
    assert crossing_groups(paper, rel, groups)[0] > 10  # the paper's split leaks most patients


def test_dataset_split_writes_where_probe_looks_and_records_leakage(tmp_path):
    bh = _breakhis(tmp_path / "bh", patients=20)
    r, = dataset_split("breakhis", bh, tmp_path / "cache", grouping="grouped")
    assert r.split.path.parent == tmp_path / "cache" / "breakhis" / "splits"
    assert r.split.path.name.startswith("class-grouped-seed0-") and r.n_crossing == 0
    meta = __import__("json").loads(r.split.path.with_suffix(".json").read_text())
    assert meta["groups"]["n_crossing_train_test"] == 0 and meta["spec"]["grouping"] == "grouped"
    paper, = dataset_split("breakhis", bh, tmp_path / "cache")
    assert paper.n_crossing > 0 and paper.group_source.startswith("patient")
    assert read_split(paper.split.path).spec.grouping == "paper"
    out = runner.invoke(app, ["datasets", "split", "breakhis", "--root", str(bh), "--out",
                              str(tmp_path / "cache"), "--repeats", "2"]).output
    assert "warning" in out and f"{paper.n_crossing} of 20 groups" in out
    assert "(paper, seed 0)" in out and "(paper, seed 1)" in out  # one file per repeat
    assert len(list(r.split.path.parent.glob("class-paper-seed1-*.csv"))) == 1


def test_grouped_split_without_patient_ids_groups_near_duplicates(tmp_path):
    root = _ct(tmp_path / "ct", per_class=12)
    for i in range(4):  # each COVID slice i gets a recompressed twin
        _jpeg_resized(root / "COVID" / f"{i}.png", root / "COVID" / f"{i}_twin.jpg")
    r, = dataset_split("sarscov2ct", root, tmp_path / "cache", grouping="grouped")
    assert r.group_source.startswith("near-duplicate") and r.n_groups == 24 and r.n_crossing == 0
    check = check_dataset("sarscov2ct", root, split=r.split.path)
    assert not check.of("duplicate_leak") and len(check.of("near_duplicates")) == 4


def test_cli_check_exit_codes_and_paths(faulty, tmp_path):
    result = runner.invoke(app, ["datasets", "check", "sarscov2ct", "--root", str(faulty)])
    assert result.exit_code == 1
    assert "broken.png" in result.output and "copy_of_0.png" in result.output
    clean = _ct(tmp_path / "clean")
    assert runner.invoke(app, ["datasets", "check", "sarscov2ct", "--root", str(clean)]).exit_code == 0
    assert runner.invoke(app, ["datasets", "check", "sarscov2ct", "--root", str(clean),
                               "--strict"]).exit_code == 1


def test_busi_images_without_masks_are_reported(tiny_busi):
    (tiny_busi / "benign" / "benign (2)_mask.png").unlink()
    r = check_dataset("breastus", tiny_busi)
    assert [f.paths for f in r.of("missing_mask")] == [("benign/benign (2).png",)]
    assert r.ok  # a warning: the image is still usable for probing
