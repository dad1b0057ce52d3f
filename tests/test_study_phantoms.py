"""Every study dataset through every stage, by the commands a user types: make-phantom ->
extract -> probe -> umap -> rise on the phantoms of all eight datasets, and ISIC 2019 (whose UNK
class its ground truth leaves empty) compared with the paper under its own name."""
import csv
import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from vlmprobe.cache import read_cache
from vlmprobe.cli import app

#: phantom -> images; with --min-per-class 7 every class has the 7 a 20% test split plus 5
#: folds needs (ISIC's AK, DF, VASC and SCC are 1-3% of the real set)
STUDY = {"breastus": 40, "brainmr": 40, "sarscov2ct": 40, "pneumoniamnist": 40, "breakhis": 40,
         "hicervix": 70, "deepdrid": 40, "isic2019": 120}


def make_phantom(name, root):
    run("datasets", "make-phantom", name, "--out", root, "--n", STUDY[name], "--min-per-class", 7)
KEY = {"breastus": "breastus_phantom"}  # the other phantoms load as their real dataset


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def isic_phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic") / "isic2019"
    make_phantom("isic2019", root)
    return root


@pytest.mark.slow
def test_every_study_phantom_goes_through_every_stage(tiny_model, isic_phantom, tmp_path):
    caches = tmp_path / "caches"
    for name in STUDY:
        root = isic_phantom if name == "isic2019" else tmp_path / "data" / name
        if name != "isic2019":
            make_phantom(name, root)
        dataset = KEY.get(name, name)
        run("extract", "--model", tiny_model, "--dataset", dataset, "--root", root, "--out",
            caches, "--device", "cpu", "--workers", "0")
        path = caches / dataset / f"{tiny_model}.h5"
        cache = read_cache(path)
        y, names, _ = cache.label_view(None)
        assert min(Counter(y.tolist()).values()) >= 7 and len(y) == STUDY[name], name
        said = run("probe", path, "--bootstrap", "200")
        if name == "isic2019":
            assert "['UNK']" in said and names == cache.class_names[:-1]
        unit = "group" if "group" in cache.metadata else "image"
        assert f"test {unit}s" in said, (name, said)
        run("umap", path, "--n-neighbors", "5", "--min-dist", "0.1", "--jobs", "1")
        run("rise", path, "--n-masks", "128", "--images", "1", "--causal-steps", "0",
            "--device", "cpu", "--include-baselines")
        out = caches / dataset
        assert list((out / "umap").glob("*.png")), name
        rows = list(csv.DictReader(open(out / "rise" / f"{tiny_model}.csv")))
        assert len(rows) == 1 and all(r["true"] in names for r in rows), name
    results = json.loads((caches / "probe_results.n-bootstrap-200.json").read_text())["results"]
    assert results[-1]["dataset"] == "isic2019" and results[-1]["dropped_classes"] == ["UNK"]


@pytest.mark.slow
def test_isic_phantom_is_compared_with_the_paper_under_its_own_name(isic_phantom, tmp_path,
                                                                     monkeypatch):
    """A paper model (resnet50: its real architecture, seeded random weights where torch.hub
    keeps the file) on the ISIC phantom: the probe drops the empty UNK class, keeps the name
    isic2019, and --compare-paper gives the paper's Table 4 ISIC rows."""
    import torch
    import torchvision.models as tvm

    from vlmprobe.encoders.torchvision_family import checkpoint_path, weights_enum
    from vlmprobe.registry import get_model_entry

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.manual_seed(0)
    path = checkpoint_path(weights_enum(get_model_entry("resnet50")))
    path.parent.mkdir(parents=True)
    torch.save(tvm.resnet50().state_dict(), path)
    caches = tmp_path / "caches"
    run("extract", "--model", "resnet50", "--dataset", "isic2019", "--root", isic_phantom,
        "--out", caches, "--device", "cpu", "--workers", "1")
    run("probe", caches / "isic2019" / "resnet50.h5", "--compare-paper", "--bootstrap", "200",
        "--out", tmp_path / "tables")
    with open(tmp_path / "tables" / "probe_results.n-bootstrap-200.paper.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["dataset"], r["paper table"], r["paper metric"]) for r in rows} == {
        ("isic2019", "Table 4", "accuracy"), ("isic2019", "Table 4", "f1")}
    assert all(r["model"] == "resnet50" and r["solver"].startswith("fast")
               and r["bootstrap unit"] == "group" for r in rows)
    notes = (tmp_path / "tables" / "probe_results.n-bootstrap-200.paper.md").read_text()
    assert "SVM solver 'fast'" in notes
