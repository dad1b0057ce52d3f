from pathlib import Path

import numpy as np
import pytest

from vlmprobe.data.splits import SplitSpec, load_or_create_split, make_split
from vlmprobe.validation import VlmprobeError


def _data(n_per=(40, 25, 15)):
    paths = [f"c{c}/img{i:03d}.png" for c, n in enumerate(n_per) for i in range(n)]
    labels = np.repeat(np.arange(len(n_per)), n_per)
    return paths, labels


def test_split_is_stratified_disjoint_and_covers_everything():
    paths, y = _data()
    s = make_split(paths, y, SplitSpec(seed=0))
    assert len(s.relpaths) == len(paths) and set(s.relpaths) == set(paths)
    assert abs(s.test.mean() - 0.2) < 0.02
    assert (s.fold[s.test] == -1).all() and set(s.fold[~s.test]) == set(range(5))
    test, fold = s.align(paths, "t")
    for c in range(3):  # every class in the test set and in every fold, in proportion
        frac = test[y == c].mean()
        assert abs(frac - 0.2) < 0.06
        for k in range(5):
            assert ((fold == k) & (y == c)).sum() >= 1


def test_split_is_seeded_and_order_independent():
    paths, y = _data()
    a = make_split(paths, y, SplitSpec(seed=3))
    perm = np.random.default_rng(1).permutation(len(paths))
    b = make_split([paths[i] for i in perm], y[perm], SplitSpec(seed=3))
    assert a.relpaths == b.relpaths and np.array_equal(a.test, b.test) and np.array_equal(a.fold, b.fold)
    c = make_split(paths, y, SplitSpec(seed=4))
    assert not np.array_equal(a.test, c.test)


def test_split_file_written_once_and_reused(tmp_path):
    paths, y = _data()
    names = ["a", "b", "c"]
    s1 = load_or_create_split(tmp_path, "fp", paths, y, names, SplitSpec())
    mtime = s1.path.stat().st_mtime_ns
    s2 = load_or_create_split(tmp_path, "fp", paths, y, names, SplitSpec())
    assert s2.path == s1.path and s2.path.stat().st_mtime_ns == mtime
    assert np.array_equal(s1.test, s2.test) and np.array_equal(s1.fold, s2.fold)
    header = s1.path.read_text().splitlines()[0]
    assert header == "relpath,label,test,fold"
    assert s1.path.with_suffix(".json").is_file()
    other = load_or_create_split(tmp_path, "other-fingerprint", paths, y, names, SplitSpec())
    assert other.path != s1.path


def test_split_refuses_too_few_samples_and_single_class():
    with pytest.raises(VlmprobeError, match="fewer than"):
        make_split([f"x{i}" for i in range(10)], np.array([0] * 7 + [1] * 3), SplitSpec())
    with pytest.raises(VlmprobeError, match="at least 2"):
        make_split([f"x{i}" for i in range(30)], np.zeros(30, int), SplitSpec())


def test_align_detects_images_missing_from_split():
    paths, y = _data()
    s = make_split(paths, y, SplitSpec())
    with pytest.raises(VlmprobeError, match="not in split file"):
        s.align(paths + ["new.png"], "cache.h5")


def test_grouped_split_needs_enough_groups():
    paths, y = _data()
    with pytest.raises(VlmprobeError, match="datasets split NAME --split grouped"):
        make_split(paths, y, SplitSpec(grouping="grouped"))
    with pytest.raises(VlmprobeError, match="only 3 groups"):
        make_split(paths, y, SplitSpec(grouping="grouped"), groups=[p[:2] for p in paths])
    with pytest.raises(VlmprobeError, match="not available"):
        make_split(paths, y, SplitSpec(grouping="patients"))
    one_each = [p if p.startswith("c0") else p[:2] for p in paths]  # classes 1 and 2: one group
    with pytest.raises(VlmprobeError, match="no grouped test set holds every class"):
        make_split(paths, y, SplitSpec(grouping="grouped"), groups=one_each)


def test_grouped_split_sidecar_records_groups(tmp_path):
    import json

    paths, y = _data()
    groups = [f"g{i // 4}" for i in range(len(paths))]  # 20 groups of 4, never mixing classes
    s = load_or_create_split(tmp_path, "fp", paths, y, ["a", "b", "c"],
                             SplitSpec(grouping="grouped"), groups=groups, group_source="patient")
    assert s.path.name.startswith("class-grouped-seed0-")
    side = json.loads(s.path.with_suffix(".json").read_text())
    assert side["groups"] == {"source": "patient", "n_groups": 20, "n_crossing_train_test": 0}
    paper = load_or_create_split(tmp_path, "fp", paths, y, ["a", "b", "c"], SplitSpec(),
                                 groups=groups, group_source="patient")
    assert json.loads(paper.path.with_suffix(".json").read_text())["groups"]["n_crossing_train_test"] > 0


def _grouped_cache(tmp_path, with_groups=True):
    from vlmprobe.cache import Cache
    paths, y = _data((60, 60, 60))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(len(y), 8)) + 2.0 * np.eye(8)[y]
    meta = {"group": [f"p{i // 4}" for i in range(len(y))]} if with_groups else {}
    return Cache(embeddings=X, labels=y, relpaths=paths, class_names=["a", "b", "c"],
                 model="m", dataset="toy", dataset_fingerprint="f", cache_key="m",
                 metadata=meta, path=tmp_path / "toy" / "m.h5")


def test_probe_grouped_split_keeps_patients_apart_and_paper_is_unchanged(tmp_path):
    """--split grouped: no patient crosses train/test and every output says so; the paper
    split stays the file it was (groups only add the leak count to its sidecar)."""
    import json

    from vlmprobe.probe import ProbeConfig, run_probe
    from vlmprobe.data.splits import read_split
    cache = _grouped_cache(tmp_path)
    paper_ref = make_split(cache.relpaths, cache.labels, SplitSpec(seed=0))
    cfg = dict(n_bootstrap=50)
    quiet = dict(out=tmp_path / "out")
    (paper,) = run_probe([cache], config=ProbeConfig(**cfg), **quiet)
    (grouped,) = run_probe([cache], config=ProbeConfig(split="grouped", **cfg), **quiet)
    paper_file, grouped_file = (Path(r.repeats[0]["split_file"]) for r in (paper, grouped))
    assert paper_file.name.startswith("class-paper-") and grouped_file.name.startswith("class-grouped-")
    ps = read_split(paper_file)
    assert ps.relpaths == paper_ref.relpaths and (ps.test == paper_ref.test).all() \
        and (ps.fold == paper_ref.fold).all()
    g = dict(zip(cache.relpaths, cache.metadata["group"]))
    gs = read_split(grouped_file)
    assert not {g[r] for r, t in zip(gs.relpaths, gs.test) if t} & \
        {g[r] for r, t in zip(gs.relpaths, gs.test) if not t}
    assert json.loads(grouped_file.with_suffix(".json").read_text())["groups"][
        "n_crossing_train_test"] == 0
    assert json.loads(paper_file.with_suffix(".json").read_text())["groups"][
        "n_crossing_train_test"] > 0
    assert (paper.split, grouped.split) == ("paper", "grouped")
    assert grouped.repeats[0]["groups"]["n_crossing_train_test"] == 0
    assert paper.repeats[0]["groups"]["n_crossing_train_test"] > 0
    assert grouped.row()["split"] == "grouped" and grouped.probe_file != paper.probe_file
    from vlmprobe.probe import LinearProbe
    from vlmprobe.rise.explain import _test_relpaths
    probe = LinearProbe.load(Path(grouped.probe_file[:-len(".npz")]))
    assert probe.info["protocol"]["split"] == "grouped"
    assert _test_relpaths(probe) == {r for r, t in zip(gs.relpaths, gs.test) if t}


def test_probe_grouped_split_without_groups_says_what_to_do(tmp_path):
    from vlmprobe.probe import ProbeConfig, run_probe
    with pytest.raises(VlmprobeError, match="'toy' has no group.*datasets split toy --split grouped"):
        run_probe([_grouped_cache(tmp_path, with_groups=False)],
                     config=ProbeConfig(split="grouped"))


def test_probe_grouped_repeats_need_one_written_split_per_seed(tmp_path):
    """Without a group column, `probe --split grouped --repeats R` reads the R files `datasets
    split --repeats R` writes; a missing seed is named, not silently replaced by an ungrouped split."""
    from vlmprobe.probe import ProbeConfig, run_probe
    from vlmprobe.data.splits import load_or_create_split
    cache = _grouped_cache(tmp_path, with_groups=False)
    patients = _grouped_cache(tmp_path).metadata["group"]
    split_dir = tmp_path / "toy" / "splits"

    def write(seed):
        return load_or_create_split(split_dir, "f", cache.relpaths, cache.labels, cache.class_names,
                                    SplitSpec(grouping="grouped", seed=seed), groups=patients,
                                    group_source="clusters")
    write(0)
    cfg = ProbeConfig(split="grouped", repeats=3, n_bootstrap=20)
    with pytest.raises(VlmprobeError, match=r"seed\(s\) \[1, 2\].*--seed 0 --repeats 3"):
        run_probe([cache], config=cfg)
    written = {write(s).path for s in (1, 2)} | {write(0).path}
    (result,) = run_probe([cache], config=cfg)
    assert {Path(r["split_file"]) for r in result.repeats} == written
    assert all(r["groups"]["n_crossing_train_test"] == 0 for r in result.repeats)
