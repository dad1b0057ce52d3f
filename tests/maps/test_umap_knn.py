"""UMAP speed paths that must still give umap-learn's and scikit-learn's numbers."""
import numpy as np
import pytest
from sklearn.metrics import silhouette_score
from sklearn.neighbors import VALID_METRICS

from vlmprobe.maps import METRICS
from vlmprobe.maps.knn import MATRIX_METRICS, _blocked_knn, _pairwise
from vlmprobe.maps.metrics import _silhouette


def test_metric_list_is_known_to_both_libraries():
    from umap.distances import named_distances

    assert set(METRICS) <= set(named_distances) & set(VALID_METRICS["brute"])
    assert set(MATRIX_METRICS) <= set(METRICS)


@pytest.mark.parametrize("metric", MATRIX_METRICS)
def test_blocked_knn_equals_umap_learns_exact_neighbours(metric):
    """The exact kNN from matrix products (N >= 4096) = sorting umap-learn's own distances."""
    from umap.distances import named_distances

    rng = np.random.default_rng(1)
    X = (rng.normal(size=(600, 24)) + 3 * rng.normal(size=(4, 24))[rng.integers(0, 4, 600)])
    X = X.astype(np.float32)
    d = _pairwise(X, named_distances[metric])
    np.fill_diagonal(d, -1)
    ref = np.argsort(d, axis=1, kind="stable")[:, :15]
    idx, dist = _blocked_knn(X, 15, metric, rows=128)  # several blocks, a ragged last one
    assert (idx[:, 0] == np.arange(len(X))).all() and (dist[:, 0] == 0).all()
    assert (idx == ref).mean() > 0.999  # float32 products may swap exact near-ties
    np.fill_diagonal(d, 0)
    np.testing.assert_allclose(dist, np.take_along_axis(d, idx, 1), atol=2e-6)
    X[5] = X[7]  # duplicates: each copy lists itself first, then its twin at distance 0
    idx, dist = _blocked_knn(X, 3, metric)
    assert list(idx[5, :2]) == [5, 7] and list(idx[7, :2]) == [7, 5] and dist[5, 1] == 0


@pytest.mark.parametrize("metric", ["cosine", "correlation"])
def test_linear_silhouette_equals_sklearn(metric):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 400)
    X = rng.normal(size=(400, 30)) + rng.normal(size=(5, 30))[y]
    y[3] = 5  # a singleton class scores 0, as in sklearn
    if metric == "cosine":
        X[0] = 0  # a zero row: distance 1 to everything
    assert _silhouette(X, y, metric) == pytest.approx(silhouette_score(X, y, metric=metric),
                                                      abs=1e-9)


def test_planar_silhouette_equals_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 500)
    Y = (rng.normal(size=(500, 2)) + 2 * rng.normal(size=(4, 2))[y]).astype(np.float32)
    y[7] = 9  # a singleton class
    Y[11] = Y[12]  # a duplicate point
    assert _silhouette(Y, y, "euclidean") == pytest.approx(
        silhouette_score(Y, y, metric="euclidean"), abs=1e-6)


def test_fast_maps_are_unseeded_and_saved_apart(tmp_path):
    from vlmprobe.cache import Cache
    from vlmprobe.maps import UmapGrid, grid_coords

    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(2), 40)
    X = (rng.normal(size=(80, 8)) + 5 * rng.normal(size=(2, 8))[y]).astype(np.float32)
    cache = Cache(embeddings=X, labels=y, relpaths=[f"{i}.png" for i in range(80)],
                  class_names=["a", "b"], model="toy", dataset="toyset", dataset_fingerprint="f",
                  cache_key="k", path=tmp_path / "toy.h5")
    grid = UmapGrid(n_neighbors=(5,), min_dist=(0.1,), fast=True)
    (coords,) = grid_coords(cache, grid)
    assert coords.shape == (80, 2) and np.isfinite(coords).all()
    saved = np.load(tmp_path / "umap" / "toy.cosine-nn5-md0.1-fast.npz")
    assert '"fast": true' in str(saved["config"])
