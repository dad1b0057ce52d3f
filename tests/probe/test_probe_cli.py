"""`vlmprobe probe` with the statistics options, on two small caches written to disk."""
import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from vlmprobe.cache import Cache, write_cache
from vlmprobe.cli import app
from vlmprobe.validation import VlmprobeError


def _write(root, model, X, y):
    n = len(X)
    return write_cache(root / "breastus" / f"{model}.h5", Cache(
        embeddings=X, labels=y, relpaths=[f"img{i:04d}.png" for i in range(n)],
        class_names=["benign", "malignant", "normal"], model=model, dataset="breastus",
        dataset_fingerprint="f", cache_key=model, metadata={"site": [f"s{i % 2}" for i in range(n)]},
        files={"relpath": [f"img{i:04d}.png" for i in range(n)], "size": [1] * n, "digest": ["d"] * n}))


def test_probe_command_writes_tables_comparisons_and_paper_cells(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(150) % 3
    good = (rng.normal(size=(3, 16))[y] * 2 + rng.normal(size=(150, 16))).astype(np.float32)
    paths = [_write(tmp_path, "medsiglip", good, y),
             _write(tmp_path, "biomedclip", rng.normal(size=(150, 16)).astype(np.float32), y)]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["probe", *map(str, paths), "--out", str(out), "--solver",
                                      "fast", "--repeats", "2", "--compare-paper", "--subgroup",
                                      "site", "--t-grid", "1,10", "--bootstrap", "100"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    name = "probe_results.t-grid-1_10.n-bootstrap-100.repeats-2"  # every setting off the paper's
    assert f"Table: {out / name}.md" in result.stdout
    for suffix in ("md", "table.md", "table.tex", "comparisons.csv", "paper.csv", "subgroups.csv",
                   "json", "samples.npz"):
        assert (out / f"{name}.{suffix}").is_file(), suffix
    with open(out / f"{name}.paper.csv") as f:
        assert {r["model"] for r in csv.DictReader(f)} == {"medsiglip", "biomedclip"}
    assert "(2 splits)" in (out / f"{name}.table.md").read_text()


def test_bad_t_grid_is_refused():
    with pytest.raises(VlmprobeError, match="--t-grid '1,x'"):
        CliRunner().invoke(app, ["probe", "--t-grid", "1,x"], catch_exceptions=False)


def test_bootstrap_unit_group_without_groups_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path, "medsiglip", rng.normal(size=(60, 8)).astype(np.float32),
                  np.arange(60) % 3)
    with pytest.raises(VlmprobeError, match="--bootstrap-unit group .* no group column"):
        CliRunner().invoke(app, ["probe", str(path), "--bootstrap-unit", "group"],
                           catch_exceptions=False)
