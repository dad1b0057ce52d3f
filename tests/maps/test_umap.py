"""UMAP grid: one shared kNN graph, saved coordinates, chunked metrics, figures, bad input."""
import json
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.manifold import trustworthiness

from vlmprobe.cache import Cache
from vlmprobe.maps import (UmapConfig, UmapGrid, check_input, fit_map, knn_graph,
                           neighbourhood_scores, run_umap)
from vlmprobe.validation import VlmprobeError

GRID = UmapGrid(n_neighbors=(5, 15), min_dist=(0.0, 0.5), seed=0)  # 4 fits: numba is slow


def clustered(n_per=50, d=16, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 6
    labels = np.repeat(np.arange(3), n_per)
    return (centres[labels] + rng.normal(size=(len(labels), d))).astype(np.float32), labels


def make_cache(tmp_path, X, labels, key="k1") -> Cache:
    n = len(X)
    return Cache(embeddings=X, labels=labels, relpaths=[f"img{i}.png" for i in range(n)],
                 class_names=["a", "b", "c"], model="toy", dataset="toyset",
                 dataset_fingerprint="f", cache_key=key,
                 metadata={"site": [f"s{i % 2}" for i in range(n)]}, path=tmp_path / "toy.h5")


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """One grid over a clustered cache, shared by the tests that read its outputs."""
    tmp = tmp_path_factory.mktemp("grid")
    cache = make_cache(tmp, *clustered())
    pngs = run_umap([cache], GRID, color_by=["site"]).figures
    return cache, tmp / "umap", pngs


@pytest.mark.slow  # 11 s; the kNN module's own tests stay in the fast tier
def test_sliced_knn_graph_and_map_equal_a_fresh_fit():
    import umap

    X, _ = clustered()
    wide, narrow = knn_graph(X, 15, "cosine", 0), knn_graph(X, 5, "cosine", 0)
    np.testing.assert_array_equal(wide[0][:, :5], narrow[0])
    np.testing.assert_array_equal(wide[1][:, :5], narrow[1])
    fresh = umap.UMAP(n_neighbors=5, min_dist=0.1, metric="cosine", random_state=0,
                      n_jobs=1).fit_transform(X)
    np.testing.assert_array_equal(fit_map(X, UmapConfig(n_neighbors=5), wide), fresh)
    for a in narrow:  # as joblib hands a large graph to a worker; umap-learn writes into its input
        a.flags.writeable = False
    np.testing.assert_array_equal(fit_map(X, UmapConfig(n_neighbors=5), narrow), fresh)


def test_same_seed_same_coordinates(grid_run, tmp_path):
    cache, folder, _ = grid_run
    again = run_umap([make_cache(tmp_path, cache.embeddings, cache.labels)],
                     UmapConfig(n_neighbors=5, min_dist=0.5)).figures
    assert len(again) == 1  # one configuration (as the demo asks): one map, no grid figure
    first = np.load(folder / "toy.cosine-nn5-md0.5-seed0.npz")["coords"]
    second = np.load(tmp_path / "umap" / "toy.cosine-nn5-md0.5-seed0.npz")["coords"]
    np.testing.assert_array_equal(first, second)


def test_saved_coordinates_are_reused_not_recomputed(grid_run, monkeypatch):
    import umap

    cache, _, pngs = grid_run

    def refuse(*args, **kwargs):
        raise AssertionError("UMAP refitted an unchanged configuration")

    monkeypatch.setattr(umap, "UMAP", refuse)  # in this process: jobs=1 fits here
    assert run_umap([cache], GRID, color_by=["site"], jobs=1).figures == pngs
    changed = make_cache(cache.path.parent, cache.embeddings, cache.labels, key="other")
    with pytest.raises(AssertionError, match="refitted"):  # another cache_key is another input
        run_umap([changed], GRID, jobs=1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_chunked_trustworthiness_equals_sklearn(metric):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 20))
    maps = [X[:, :2] + rng.normal(scale=s, size=(300, 2)) for s in (0.1, 1.0)]
    got = neighbourhood_scores(X, maps, 10, metric, block=300 * 7)  # 43 chunks of 7 rows
    for Y, scores in zip(maps, got):
        assert abs(scores["trustworthiness"] - trustworthiness(X, Y, n_neighbors=10,
                                                               metric=metric)) < 1e-9
        d = np.linalg.norm(X[:, None] - X[None], axis=2) if metric == "euclidean" else None
        if d is not None:  # kNN preservation by brute force
            np.fill_diagonal(d, np.inf)
            e = np.linalg.norm(Y[:, None] - Y[None], axis=2)
            np.fill_diagonal(e, np.inf)
            near, near2d = np.argsort(d)[:, :10], np.argsort(e)[:, :10]
            kept = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(near, near2d)])
            assert scores["knn_preservation"] == pytest.approx(kept)


def test_neighbourhood_scores_memory_is_bounded_by_the_block():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 8)).astype(np.float32)
    tracemalloc.start()
    neighbourhood_scores(X, [X[:, :2]], 10, "cosine", block=1 << 16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3000 * 3000 * 8 / 8, f"peak {peak / 1e6:.1f} MB: an N x N matrix was built"


def test_metrics_are_sane_on_separated_clusters(grid_run):
    _, folder, _ = grid_run
    rows = json.loads((folder / f"toy.{GRID.tag()}.metrics.json").read_text())["rows"]
    assert [(r["n_neighbors"], r["min_dist"]) for r in rows] == [(5, 0.0), (5, 0.5), (15, 0.0),
                                                                 (15, 0.5)]
    for r in rows:
        assert r["silhouette_2d"] > 0.5 and r["silhouette_orig"] > 0.5
        assert r["knn_acc_2d"] > 0.9 and r["knn_acc_orig"] > 0.9
        assert 0.8 < r["trustworthiness"] <= 1 and 0 < r["knn_preservation"] <= 1
    assert (folder / f"toy.{GRID.tag()}.metrics.csv").read_text().count("\n") == 5


def test_grid_figures_written_with_provenance(grid_run):
    from PIL import Image

    _, folder, pngs = grid_run
    grid_png = folder / f"toy.{GRID.tag()}.grid.png"
    assert grid_png in pngs and (folder / f"toy.{GRID.tag()}.grid.by-site.png") in pngs
    assert len(pngs) == 4 + 2 and all(p.with_suffix(".svg").is_file() for p in pngs)
    meta = json.loads(Image.open(grid_png).info["Description"])
    assert meta["grid"]["n_neighbors"] == [5, 15] and len(meta["metrics"]) == 4


def test_grid_options_parse():
    assert len(UmapGrid.parse("cosine", None, None, 0).configs()) == 9
    assert UmapGrid.parse("cosine", "5", "0.1", 0).configs() == [UmapConfig(n_neighbors=5)]
    with pytest.raises(VlmprobeError, match="comma-separated ints"):
        UmapGrid.parse("cosine", "5,x", None, 0)


def test_bad_input_is_refused_before_any_fit(tmp_path):
    X, y = clustered(n_per=10)
    cache = make_cache(tmp_path, X, y)
    with pytest.raises(VlmprobeError, match="between 2 and 29"):
        run_umap([cache], UmapGrid(n_neighbors=(5, 30)))
    with pytest.raises(VlmprobeError, match="identical"):
        run_umap([make_cache(tmp_path, np.ones_like(X), y)], UmapGrid(n_neighbors=(5,)))
    with pytest.raises(VlmprobeError, match="no metadata column 'plane'; columns: site"):
        run_umap([cache], UmapGrid(n_neighbors=(5,)), color_by=["plane"])
    with pytest.raises(VlmprobeError, match="'cosin' is not one both umap-learn and scikit"):
        run_umap([cache], UmapGrid(metric="cosin", n_neighbors=(5,)))
    dup = X.copy()
    dup[1] = dup[0]
    with pytest.warns(UserWarning, match="1 of 30 embeddings duplicate"):
        check_input(make_cache(tmp_path, dup, y), UmapGrid(n_neighbors=(5,)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_input(cache, UmapGrid(n_neighbors=(5,)))


@pytest.mark.slow
def test_coordinates_do_not_depend_on_jobs(grid_run, tmp_path):
    cache, folder, _ = grid_run
    run_umap([make_cache(tmp_path, cache.embeddings, cache.labels)], GRID, jobs=2)
    for cfg in GRID.configs():
        name = f"toy.{cfg.tag()}.npz"
        np.testing.assert_array_equal(np.load(folder / name)["coords"],
                                      np.load(tmp_path / "umap" / name)["coords"])


def test_fast_is_in_the_tags_instead_of_the_seed():
    grid = UmapGrid.parse("cosine", "5", "0.1", 3, fast=True)
    assert grid.tag() == "cosine-nn5-md0.1-fast"
    assert grid.configs() == [UmapConfig(n_neighbors=5, seed=3, fast=True)]
    assert grid.configs()[0].tag() == "cosine-nn5-md0.1-fast"
    assert UmapGrid.single(UmapConfig(fast=True)).fast and UmapConfig().tag().endswith("-seed0")
