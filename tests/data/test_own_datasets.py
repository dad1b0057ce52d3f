"""Own datasets without a YAML edit: imagefolder:DIR, csv:MANIFEST.csv, user dataset files
($VLMPROBE_DATASETS / --datasets, replaces: builtin) and `datasets info`; from Python and from
every CLI command that takes a dataset. Caches and splits of one folder share its key."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import MODEL
from typer.testing import CliRunner

import vlmprobe
from vlmprobe.cli import app
from vlmprobe.data import load_dataset
from vlmprobe.registry import load_datasets
from vlmprobe.validation import VlmprobeError

runner = CliRunner()
CLASSES = ("cyst", "mass", "normal")


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _images(folder: Path, n: int, level: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        a = (rng.random((40, 48)) * 60 + level * 70).astype(np.uint8)
        Image.fromarray(a).save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    return names


@pytest.fixture
def folder(tmp_path) -> Path:
    """An image folder of three classes (one nested a level deeper) and a stray file."""
    root = tmp_path / "scans"
    for k, c in enumerate(CLASSES):
        _images(root / c / ("sub" if c == "mass" else ""), 7, k, k)
    (root / "README.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


@pytest.fixture
def manifest(tmp_path) -> Path:
    """A CSV manifest: file, dx (label), patient (two images each), site (metadata)."""
    root = tmp_path / "study"
    rows = ["file,dx,patient,site,note"]
    for k, c in enumerate(CLASSES):
        for i, name in enumerate(_images(root / "images" / c, 8, k, 10 + k)):
            rows.append(f"images/{c}/{name},{c},p{k}-{i // 2},site{i % 2},x")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def _key(path: Path) -> str:
    resolved = path.resolve()
    stem = resolved.stem if resolved.is_file() else resolved.name
    return f"{stem}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def test_imagefolder_lists_class_folders_with_a_path_key(folder):
    ds = load_dataset(f"imagefolder:{folder}")
    assert ds.entry.name == _key(folder) and ds.entry.name.startswith("scans-")
    assert ds.class_names == list(CLASSES) and len(ds) == 21
    assert "mass/sub/img0.png" in [s.relpath for s in ds.samples]
    assert ds.root == folder.resolve()
    assert load_dataset(f"imagefolder:{folder}", name="my_scans").entry.name == "my_scans"
    with pytest.raises(VlmprobeError, match="names its folder already"):
        load_dataset(f"imagefolder:{folder}", root=folder / "cyst")
    with pytest.raises(VlmprobeError, match="no class folder holding images"):
        load_dataset(f"imagefolder:{folder / 'cyst'}")
    with pytest.raises(VlmprobeError, match="renames an own dataset"):
        load_dataset("breastus", folder, name="x")


def test_csv_manifest_columns_groups_and_metadata(manifest):
    ds = load_dataset(f"csv:{manifest}", path_column="file", label_column="dx",
                      group_column="patient", metadata_columns=["site"])
    assert ds.entry.name == _key(manifest) and ds.entry.name.startswith("labels-")
    assert ds.class_names == list(CLASSES) and len(ds) == 24
    s = ds.samples[9]
    assert s.relpath == "images/mass/img1.png" and ds.class_names[s.label] == "mass"
    assert s.metadata == {"site": "site1", "group": "p1-0"}
    with pytest.raises(VlmprobeError, match=r"columns \['path'\] not found \(it has \['file'"):
        load_dataset(f"csv:{manifest}", label_column="dx")


def test_manifest_bad_rows_name_file_and_row_and_write_nothing(manifest, tmp_path, tiny_model):
    lines = manifest.read_text().splitlines()
    broken = manifest.with_name("broken.csv")
    broken.write_text("\n".join(lines[:3] + ["images/cyst/gone.png,cyst,p9,site0,x",
                                             "images/mass/img9.png,mass,p9,site1,x"] + lines[3:]))
    out = tmp_path / "caches"
    with pytest.raises(VlmprobeError, match=r"broken.csv: 2 row\(s\) name files that do not "
                                            r"exist .*row 4: images/cyst/gone.png; row 5"):
        vlmprobe.extract(MODEL, f"csv:{broken}", out=out,
                         dataset_options={"path_column": "file", "label_column": "dx"})
    assert not out.exists()
    outside = manifest.with_name("outside.csv")
    outside.write_text("\n".join(lines[:2] + ["../elsewhere.png,cyst,p9,site0,x"]))
    with pytest.raises(VlmprobeError, match=r"outside.csv row 3: path '../elsewhere.png' points "
                                            "outside the dataset root"):
        vlmprobe.extract(MODEL, f"csv:{outside}", out=out,
                         dataset_options={"path_column": "file", "label_column": "dx"})
    assert not out.exists()
    user = tmp_path / "user.yaml"  # classes fixed by an entry: another label is an error
    user.write_text(f"datasets:\n  fixed:\n    paper_name: Fixed\n    modality: US\n"
                    f"    classes: [cyst, mass]\n    layout: csv\n    layout_help: labels.csv\n"
                    f"    manifest: labels.csv\n    path_column: file\n    label_column: dx\n"
                    f"    root: {manifest.parent}\n")
    with pytest.raises(VlmprobeError, match=r"labels.csv row 18: unknown label 'normal' in "
                                            r"column 'dx'; known classes: \['cyst', 'mass'\]"):
        vlmprobe.extract(MODEL, "fixed", out=out, datasets=[user])
    assert not out.exists()


def test_extract_split_and_probe_find_each_other_by_the_key(folder, tmp_path, tiny_model):
    out = tmp_path / "caches"
    key = _key(folder)
    r = vlmprobe.extract(MODEL, f"imagefolder:{folder}", out=out, device="cpu", num_workers=0,
                         progress=False)
    assert r.path == out / key / f"{MODEL}.h5" and r.n_images == 21
    cache = r.read()
    assert cache.dataset == key and cache.dataset_root == str(folder.resolve())
    assert cache.dataset_entry["layout"] == "imagefolder"
    text = cli("datasets", "split", f"imagefolder:{folder}", "--out", out, "--split", "grouped")
    splits = list((out / key / "splits").glob("*.csv"))
    assert len(splits) == 1 and str(splits[0]) in text
    run = vlmprobe.run_probe([cache], split="grouped", n_bootstrap=50)
    assert run[0].dataset == key and run[0].split.startswith("grouped")
    # the CLI names the same cache: up to date, not a second one
    assert "up to date" in cli("extract", "--model", MODEL, "--dataset", f"imagefolder:{folder}",
                               "--out", out, "--workers", "0")
    named = cli("extract", "--model", MODEL, "--dataset", f"imagefolder:{folder}", "--name",
                "scans_v1", "--out", out, "--workers", "0")
    assert f"{out / 'scans_v1' / MODEL}.h5" in named


def test_csv_options_reach_every_command(manifest, tmp_path, tiny_model):
    out = tmp_path / "caches"
    opts = ["--path-column", "file", "--label-column", "dx", "--group-column", "patient",
            "--meta-columns", "site"]
    spec = f"csv:{manifest}"
    checked = cli("datasets", "check", spec, *opts)
    assert "24 images listed" in checked and "0 error(s)" in checked
    assert "0 of 12 groups (patient) cross train/test" in cli(
        "datasets", "split", spec, "--out", out, "--split", "grouped", *opts)
    cli("extract", "--model", MODEL, "--dataset", spec, "--out", out, "--workers", "0", *opts)
    cache = vlmprobe.read_cache(out / _key(manifest) / f"{MODEL}.h5")
    assert set(cache.metadata) == {"site", "group"} and cache.metadata["group"][0] == "p0-0"
    info = cli("datasets", "info", spec, *opts)
    assert f"source (where to get it): your own files ({manifest.resolve()})" in info
    assert "path column 'file', label column 'dx', group column 'patient'" in info


def test_user_dataset_files_add_and_refuse_duplicates(tmp_path, monkeypatch, folder):
    entry = ("    paper_name: Mine\n    modality: US\n    classes: [cyst, mass, normal]\n"
             "    layout: imagefolder\n    layout_help: one folder per class\n"
             f"    source: https://example.org/mine\n    licence: CC0\n    root: {folder}\n")
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text("datasets:\n  mine:\n" + entry)
    monkeypatch.setenv("VLMPROBE_DATASETS", str(one))
    assert len(load_dataset("mine")) == 21  # the entry's root, no --root
    assert "mine" in load_datasets() and "mine" in cli("datasets")
    two.write_text("datasets:\n  mine:\n" + entry)
    with pytest.raises(VlmprobeError, match=r"Dataset 'mine' is defined in .*one.yaml and again "
                                            r"in .*two.yaml; rename one\.$"):
        load_datasets([two])
    with pytest.raises(VlmprobeError, match="defined in"):
        cli("datasets", "info", "mine", "--datasets", two)
    two.write_text("datasets:\n  breastus:\n" + entry)
    with pytest.raises(VlmprobeError, match=r"'breastus' is defined in .*registry/datasets.yaml "
                                            r"and again in .*two.yaml; rename one, or add "
                                            "`replaces: builtin`"):
        load_datasets([two])
    two.write_text("datasets:\n  breastus:\n" + entry + "    replaces: builtin\n")
    replaced = load_datasets([two])["breastus"]
    assert replaced.paper_name == "Mine" and replaced.defined_in == str(two)
    assert len(load_dataset("breastus", datasets=[two])) == 21
    two.write_text("datasets:\n  nothing_shipped:\n" + entry + "    replaces: builtin\n")
    with pytest.raises(VlmprobeError, match="no shipped dataset is called 'nothing_shipped'"):
        load_datasets([two])


def test_datasets_info_and_the_missing_root_error_say_the_same(tmp_path):
    info = cli("datasets", "info", "breakhis")
    for line in ("source (where to get it): https://web.inf.ufpr.br/vri/databases/breast-cancer-"
                 "histopathological-database-breakhis/", "licence: research use (see source)",
                 "    benign/   image files", "    malignant/   image files"):
        assert line in info
    with pytest.raises(VlmprobeError) as err:
        load_dataset("breakhis", tmp_path / "nowhere")
    message = str(err.value)
    assert f"{tmp_path / 'nowhere'} does not exist" in message
    structure = info[info.index("expected folder structure"):info.index("\nroot:")]
    assert structure in message
    isic = cli("datasets", "info", "isic2019")
    assert "ISIC_2019_Training_GroundTruth.csv   path column 'image', one-hot columns MEL" in isic
    assert "root: --root DIR, else" in isic
    with pytest.raises(VlmprobeError, match="Unknown dataset 'breakhiss'"):
        cli("datasets", "info", "breakhiss")


def test_python_api_takes_an_entry_object(folder, tmp_path, tiny_model):
    from vlmprobe.data.dataset import resolve_dataset

    entry = resolve_dataset(f"imagefolder:{folder}", name="scans_entry")
    r = vlmprobe.extract(MODEL, entry, out=tmp_path / "c", device="cpu", num_workers=0,
                         progress=False)
    assert r.path.parent.name == "scans_entry" and json.loads(
        json.dumps(r.read().dataset_entry))["name"] == "scans_entry"
