"""End-to-end through the CLI on a tiny phantom: the four commands of the design card."""
import json

import pytest
from typer.testing import CliRunner

from vlmprobe.cli import app

runner = CliRunner()


def run(*args, ok=True):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_every_command_has_help():
    for cmd in ([], ["models"], ["datasets"], ["datasets", "make-phantom"], ["extract"], ["probe"],
                ["umap"], ["rise"], ["study"], ["demo"]):
        assert "Usage" in run(*cmd, "--help").output


def test_models_json_lists_entries():
    entries = json.loads(run("models", "--json").output)
    by_name = {e["name"]: e for e in entries}
    assert by_name["efficientnet_lite0"]["embed_dim"] == 1280
    assert by_name["efficientnet_lite0_random"]["baseline"] is True
    assert "plip_random" not in by_name and "--twins" in run("models").output
    with_twins = [e["name"] for e in json.loads(run("models", "--twins", "--json").output)]
    # every non-baseline model once more as its derived twin; the YAML's own lite0 twin not twice
    assert "plip_random" in with_twins and with_twins.count("efficientnet_lite0_random") == 1
    assert len(with_twins) == 2 * len(entries) - sum(e["baseline"] for e in entries) - 1


@pytest.mark.slow
def test_design_card_commands_end_to_end(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    monkeypatch.setenv("VLMPROBE_DATA", str(data))
    monkeypatch.setenv("VLMPROBE_CACHE", str(cache))
    run("datasets", "make-phantom", "breastus", "--out", str(data / "breastus"), "--n", "60",
        "--seed", "1")
    for model in ("efficientnet_lite0", "efficientnet_lite0_random"):
        out = run("extract", "--model", model, "--dataset", "breastus", "--workers", "0").output
        assert "Cache written" in out
    assert "up to date" in run("extract", "--model", "efficientnet_lite0", "--dataset", "breastus",
                               "--workers", "0").output
    out = run("probe").output
    assert (cache / "probe_results.md").is_file() and (cache / "probe_results.csv").is_file()
    assert "efficientnet_lite0_random (baseline)" in (cache / "probe_results.md").read_text()
    assert (cache / "breastus" / "probe" / "efficientnet_lite0.npz").is_file()
    assert len(list((cache / "breastus" / "splits").glob("*.csv"))) == 1  # one split, both models
    run("probe", "--label", "word")
    probes = cache / "breastus" / "probe"
    assert (probes / "efficientnet_lite0.label-word.npz").is_file()
    # The nuisance probe sits beside the class probe, never over it.
    assert json.loads((probes / "efficientnet_lite0.json").read_text())["label_view"] == "class"
    assert len(list((cache / "breastus" / "splits").glob("word-*.csv"))) == 1
    elsewhere = tmp_path / "elsewhere"  # named caches + --out: outputs go to --out
    run("probe", str(cache / "breastus" / "efficientnet_lite0.h5"), "--out", str(elsewhere))
    assert (elsewhere / "probe_results.md").is_file()
    assert (elsewhere / "breastus" / "probe" / "efficientnet_lite0.npz").is_file()
    assert len(list((cache / "breastus" / "splits").glob("class-*.csv"))) == 1  # split reused
    run("umap", "--metric", "cosine", "--n-neighbors", "5")
    maps = cache / "breastus" / "umap"  # 1x3 grid: 3 maps + grid per model, 3 side-by-side figures
    assert len(list(maps.glob("*.png"))) == 2 * 4 + 3 and len(list(maps.glob("compare.*.png"))) == 3
    assert len(list(maps.glob("*.html"))) == 2 * 3
    out = run("rise", "--images", "1", "--n-masks", "64", "--batch-size", "32").output
    pngs = list((cache / "breastus" / "rise").glob("*.png"))
    assert [p.name for p in pngs] == ["efficientnet_lite0.png"]  # baselines skipped by default
    report = json.loads((cache / "breastus" / "rise" / "efficientnet_lite0.json").read_text())
    assert report["config"]["n_masks"] == 64 and len(report["images"]) == 1


def test_bad_input_exits_with_a_clear_message(tmp_path):
    res = runner.invoke(app, ["extract", "--model", "nope", "--dataset", "breastus"])
    assert res.exit_code != 0
    from vlmprobe.cli import main  # the console script maps VlmprobeError to exit code 2
    import sys

    argv = sys.argv
    sys.argv = ["vlmprobe", "extract", "--model", "efficientnet_lite0", "--dataset", "breastus",
                "--root", str(tmp_path / "missing")]
    try:
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == 2
    finally:
        sys.argv = argv
    with pytest.raises(SystemExit):
        sys.argv = ["vlmprobe", "probe", str(tmp_path / "none.h5")]
        try:
            main()
        finally:
            sys.argv = argv
