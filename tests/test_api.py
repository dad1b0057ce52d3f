"""The public Python API: curated exports, typed results, configs that refuse unknown settings,
one rule for caches and outputs, tables that accumulate rows, and the README's notebook example
giving the numbers the command line gives."""
from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vlmprobe
from vlmprobe.cache import Cache, write_cache
from vlmprobe.validation import VlmprobeError

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = {m.name for m in pkgutil.iter_modules(vlmprobe.__path__)}  # and modules


def _cache(root: Path, model: str, X: np.ndarray, y: np.ndarray, dataset: str = "breastus",
           fingerprint: str = "f") -> Cache:
    n = len(X)
    relpaths = [f"img{i:04d}.png" for i in range(n)]
    path = write_cache(root / dataset / f"{model}.h5", Cache(
        embeddings=X.astype(np.float32), labels=y, relpaths=relpaths,
        class_names=["benign", "malignant", "normal"], model=model, dataset=dataset,
        dataset_fingerprint=fingerprint, cache_key=model + dataset + fingerprint,
        files={"relpath": relpaths, "size": [1] * n, "digest": ["d"] * n}))
    return vlmprobe.read_cache(path)


def _separable(seed: int, n: int = 90, d: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return rng.normal(size=(3, d))[y] * 2 + rng.normal(size=(n, d)), y


def test_every_export_resolves_after_every_submodule_is_imported():
    for module in pkgutil.walk_packages(vlmprobe.__path__, "vlmprobe."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    assert not set(vlmprobe.__all__) & SUBPACKAGES  # vlmprobe.probe stays the subpackage
    for name in vlmprobe.__all__:
        value = getattr(vlmprobe, name)
        assert callable(value), name
        assert not isinstance(value, type(vlmprobe)), f"vlmprobe.{name} is a module"
    assert "efficientnet_lite0" in vlmprobe.list_models("efficientnet*")
    assert "breastus" in vlmprobe.list_datasets()
    assert isinstance(vlmprobe.probe, type(vlmprobe)) and vlmprobe.run_probe.__module__ == \
        "vlmprobe.probe.run"
    with pytest.raises(AttributeError, match="no attribute 'probe_caches'"):
        vlmprobe.probe_caches  # noqa: B018


@pytest.mark.parametrize("make", [
    lambda: vlmprobe.ProbeConfig(sovler="sklearn"),
    lambda: vlmprobe.RiseConfig(n_mask=10),
    lambda: vlmprobe.UmapGrid(neighbors=(5,)),
    lambda: vlmprobe.ExtractConfig(batchsize=8),
    lambda: vlmprobe.ReportConfig(rbf_image=100),
])
def test_a_config_with_an_unknown_setting_names_it_and_the_close_one(make):
    with pytest.raises(VlmprobeError, match=r"has no setting '\w+'\. Did you mean '\w+'\? Its "
                                            r"settings: "):
        make()


def test_stage_options_are_checked_like_config_fields(tmp_path):
    cache = _cache(tmp_path, "m", *_separable(0))
    with pytest.raises(VlmprobeError, match="ProbeConfig has no setting 't_grd'"):
        vlmprobe.run_probe([cache], t_grd=(1.0,))
    with pytest.raises(VlmprobeError, match="UmapGrid has no setting 'neighbours'"):
        vlmprobe.run_umap([cache], neighbours=(5,))
    with pytest.raises(VlmprobeError, match="ExtractConfig has no setting 'worker'"):
        vlmprobe.extract("efficientnet_lite0", "breastus", root=tmp_path, worker=0)
    with pytest.raises(VlmprobeError, match="ReportConfig has no setting 'rbf_image'"):
        vlmprobe.run_report(tmp_path, rbf_image=100)


def test_a_stage_given_something_that_is_not_a_cache_says_what_it_takes(tmp_path):
    cache = _cache(tmp_path, "m", *_separable(0))
    run = vlmprobe.run_probe([cache], t_grid=(1.0,), n_bootstrap=20)
    with pytest.raises(VlmprobeError, match="not ProbeRun: .* vlmprobe.read_cache"):
        vlmprobe.run_umap([run])
    with pytest.raises(VlmprobeError, match=r"No cache at .*nowhere"):
        vlmprobe.run_probe(tmp_path / "nowhere")


def test_probe_results_are_typed_and_tables_accumulate_rows_by_key(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vlmprobe")
    a = _cache(tmp_path, "model_a", *_separable(0))
    b = _cache(tmp_path, "model_b", *_separable(1))
    other = _cache(tmp_path, "model_a", *_separable(2), dataset="deepdrid")
    first = vlmprobe.run_probe([a], t_grid=(1.0, 10.0), n_bootstrap=50)
    assert isinstance(first, vlmprobe.ProbeRun) and isinstance(first[0], vlmprobe.ProbeResult)
    assert "model_a / breastus [class]" in caplog.text  # a message, through logging
    frame = first.to_frame()
    assert frame.loc[0, "macro_f1"] == pytest.approx(first[0].test["macro_f1"])
    assert frame.loc[0, "macro_f1_ci_low"] <= frame.loc[0, "macro_f1"] <= \
        frame.loc[0, "macro_f1_ci_high"]
    md, _ = first.save()
    assert md == tmp_path / "probe_results.t-grid-1_10.n-bootstrap-50.md"
    # the next model and the next dataset join the same table; a rerun replaces its own row
    vlmprobe.run_probe([b], t_grid=(1.0, 10.0), n_bootstrap=50).save()
    vlmprobe.run_probe([other], t_grid=(1.0, 10.0), n_bootstrap=50).save()
    again = vlmprobe.run_probe([a], t_grid=(1.0, 10.0), n_bootstrap=50)
    again.save()
    rows = json.loads(md.with_suffix(".json").read_text())["results"]
    assert [(r["model"], r["dataset"]) for r in rows] == [
        ("model_b", "breastus"), ("model_a", "deepdrid"), ("model_a", "breastus")]
    comparisons = json.loads(md.with_suffix(".json").read_text())["comparisons"]
    assert {(c["model_a"], c["model_b"]) for c in comparisons} == {("model_b", "model_a")}
    # other settings, other table: nothing overwritten
    assert vlmprobe.run_probe([a], t_grid=(1.0,), n_bootstrap=50).save()[0].name == \
        "probe_results.t-grid-1.n-bootstrap-50.md"
    assert md.is_file()


def test_results_of_another_split_cannot_join_a_table(tmp_path):
    X, y = _separable(0)
    vlmprobe.run_probe([_cache(tmp_path, "m", X, y)], n_bootstrap=20).save()
    changed = _cache(tmp_path / "copy", "m2", X, y, fingerprint="other files")
    with pytest.raises(VlmprobeError, match=r"probe_results.n-bootstrap-20.json: m2 on breastus "
                                            r"\[class\] was scored on split .*copy.*, but m on "
                                            r"split .* one table holds one split per dataset"):
        vlmprobe.run_probe([changed], n_bootstrap=20).save(tmp_path)


def test_typed_cache_attributes_have_one_default_each(tmp_path):
    cache = _cache(tmp_path, "m", *_separable(0))
    assert (cache.precision, cache.intensity, cache.dicom_window, cache.group_source) == \
        ("fp32", "8bit", "tags", "group")
    assert cache.schema_version == 3 and cache.batch_size is None and cache.registry_key == "m"


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # the README's example: phantom, extraction, probe, UMAP, RISE (~1 min)
def test_the_readme_notebook_example_runs_and_gives_the_cli_numbers(tmp_path, monkeypatch):
    from vlmprobe.cli import app

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)
    probes, maps, saliency = scope["probes"], scope["maps"], scope["saliency"]
    assert isinstance(maps, vlmprobe.UmapRun) and maps[0].coords[0].shape == (60, 2)
    assert isinstance(saliency, vlmprobe.RiseRun) and len(saliency.to_frame()) >= 3
    cache_file = scope["cache"].path
    result = CliRunner().invoke(app, ["probe", str(cache_file), "--out", str(tmp_path / "cli")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [row] = json.loads((tmp_path / "cli" / "probe_results.json").read_text())["results"]
    assert row["test"] == probes[0].test and row["selected_t"] == probes[0].selected_t
    assert row["test_ci95"]["macro_f1"] == list(probes[0].test_ci95["macro_f1"])
