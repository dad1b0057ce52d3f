"""CKA against independent computations: Kornblith et al.'s feature-space formula, Song et al.'s
U-statistic by brute force over 4-tuples, and the invariances CKA is defined to have."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import ortho_group

from vlmprobe.report.cka import cka, cka_matrix, hsic, linear_cka, rbf_gram
from vlmprobe.validation import VlmprobeError


def _u_statistic_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012)'s unbiased HSIC as the mean of its kernel over ordered distinct
    4-tuples (the definition, not the closed form)."""
    n, total, count = len(K), 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        count += 1
    return total / count


def _kornblith_linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred features (Kornblith et al., eq. 4)."""
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return (np.linalg.norm(Y.T @ X) ** 2
            / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


@pytest.fixture
def pair():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 12))
    Y = X @ rng.normal(size=(12, 9)) + 0.8 * rng.normal(size=(40, 9))
    return X, Y


def test_debiased_hsic_is_the_u_statistic():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(7, 3)), rng.normal(size=(7, 4))
    K, L = A @ A.T, np.exp(-np.square(B[:, None] - B[None]).sum(-1))
    assert hsic(K, L) == pytest.approx(_u_statistic_hsic(K, L), rel=1e-10)


def test_linear_cka_equals_the_hsic_formula(pair):
    X, Y = pair
    K, L = X @ X.T, Y @ Y.T
    biased = linear_cka(X, Y, debiased=False)
    assert biased == pytest.approx(_kornblith_linear_cka(X, Y), rel=1e-10)
    assert biased == pytest.approx(cka(K, L, debiased=False), rel=1e-10)
    # the N×N-free debiased estimate equals the one from the Gram matrices
    assert linear_cka(X, Y) == pytest.approx(cka(K, L), rel=1e-10)
    assert 0 < linear_cka(X, Y) < 1


def test_self_cka_is_one_and_invariances(pair):
    X, Y = pair
    Q = ortho_group.rvs(X.shape[1], random_state=1)
    for debiased in (True, False):
        assert linear_cka(X, X, debiased) == pytest.approx(1.0, abs=1e-12)
        base = linear_cka(X, Y, debiased)
        assert linear_cka(X @ Q, Y, debiased) == pytest.approx(base, rel=1e-10)
        assert linear_cka(3.7 * X, 0.05 * Y, debiased) == pytest.approx(base, rel=1e-10)
        assert linear_cka(X + 5.0, Y, debiased) == pytest.approx(base, rel=1e-10)
    # RBF: the bandwidth follows the median distance, so rotation and scale leave it unchanged
    (K, sigma), (L, _) = rbf_gram(X, 0.5), rbf_gram(Y, 0.5)
    Kq, sigma_q = rbf_gram(2.5 * X @ Q, 0.5)
    assert sigma_q == pytest.approx(2.5 * sigma, rel=1e-10)
    assert cka(K, K) == pytest.approx(1.0, abs=1e-12)
    assert cka(Kq, L) == pytest.approx(cka(K, L), rel=1e-9)
    d = np.sqrt(np.square(X[:, None] - X[None]).sum(-1))
    assert sigma == pytest.approx(0.5 * np.median(d[np.triu_indices(len(X), 1)]), rel=1e-10)


def test_debiased_estimate_is_near_zero_for_independent_embeddings():
    """The plain estimate of two independent embeddings of few images in many dimensions is
    far from 0; the debiased one is not (why it is the headline)."""
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(30, 500)), rng.normal(size=(30, 500))
    assert linear_cka(X, Y, debiased=False) > 0.5
    assert abs(linear_cka(X, Y)) < 0.1


def _cache(model, relpaths, embeddings, baseline=False):
    return SimpleNamespace(model=model, baseline=baseline, relpaths=list(relpaths),
                           embeddings=np.asarray(embeddings))


def test_cka_matrix_pairs_images_by_path_and_records_its_settings(pair):
    X, Y = pair
    names = [f"img{i:02d}.png" for i in range(len(X))]
    order = np.random.default_rng(2).permutation(len(X))
    extra = np.random.default_rng(4).normal(size=(3, Y.shape[1]))
    a = _cache("a", names, X)
    # another order, and three images the first model never embedded
    b = _cache("b", [names[i] for i in order] + ["x1", "x2", "x3"],
               np.vstack([Y[order], extra]), baseline=True)
    m = cka_matrix([a, b], bandwidth=0.5, rbf_images=25, seed=0)
    assert m.models == ["a", "b (baseline)"] and m.n_images == len(X) and m.n_rbf == 25
    assert m.linear[0, 1] == m.linear[1, 0] == pytest.approx(linear_cka(X, Y), rel=1e-10)
    assert m.linear_biased[0, 1] == pytest.approx(_kornblith_linear_cka(X, Y), rel=1e-10)
    assert np.allclose(np.diag(m.rbf), 1) and 0 < m.rbf[0, 1] < 1
    assert len(m.sigma) == 2 and m.bandwidth == 0.5
    frame = m.to_frame()
    assert len(frame) == 4 and set(frame.columns) >= {"linear_cka", "rbf_cka", "n_rbf"}
    with pytest.raises(VlmprobeError, match="bandwidth must be > 0"):
        cka_matrix([a, b], bandwidth=0)
    with pytest.raises(VlmprobeError, match="share 3"):
        cka_matrix([a, _cache("c", names[:3], X[:3])])
