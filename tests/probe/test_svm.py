"""FastLinearSVC solves LinearSVC's default objective: checked against liblinear
run to tol=1e-8 on small binary / 9-class, N<d / N>d, separable / overlapping problems."""
import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from vlmprobe.probe.svm import FastLinearSVC, fit_path


def primal_objective(model, X, y, C):
    """0.5·||[w, b]||² + C·Σ squared hinge, summed over the one-vs-rest problems; the
    intercept is penalized, as liblinear does with intercept_scaling=1."""
    classes = model.classes_
    W = np.hstack([model.coef_, model.intercept_[:, None]])
    Y = (np.where(y == classes[1], 1.0, -1.0)[:, None] if len(classes) == 2
         else np.where(y[:, None] == classes, 1.0, -1.0))
    slack = np.maximum(0.0, 1.0 - Y * (np.hstack([X, np.ones((len(X), 1))]) @ W.T))
    return 0.5 * (W * W).sum() + C * (slack * slack).sum()


def _problem(n, d, k, noise, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = rng.normal(size=(k, d))[y] + rng.normal(size=(n, d)) * noise
    return (X - X.mean(0)) / X.std(0), y


@pytest.mark.parametrize("n, d, k, noise, C", [
    (200, 20, 2, 2.0, 1.0),      # binary, N > d, overlapping
    (200, 20, 9, 2.0, 10.0),     # 9 classes, N > d, overlapping
    (400, 50, 9, 3.0, 1000.0),   # 9 classes, N > d, large C
    (100, 300, 2, 0.1, 50.0),    # binary, N < d, separable
    (150, 300, 9, 1.0, 100.0),   # 9 classes, N < d, separable
])
def test_same_objective_and_predictions_as_liblinear(n, d, k, noise, C):
    X, y = _problem(n, d, k, noise)
    ref = LinearSVC(C=C, tol=1e-8, max_iter=100000).fit(X, y)
    fast = FastLinearSVC(C=C).fit(X, y)
    assert fast.converged_
    f_ref, f_fast = primal_objective(ref, X, y, C), primal_objective(fast, X, y, C)
    assert abs(f_fast - f_ref) <= 1e-4 * f_ref
    assert (fast.predict(X) == ref.predict(X)).mean() >= 0.995
    assert fast.coef_.shape == ref.coef_.shape and fast.intercept_.shape == ref.intercept_.shape


def test_path_matches_independent_fits():
    X, y = _problem(200, 20, 3, 1.5)
    Cs = [10.0, 0.1, 1.0]  # any order: fitted ascending with warm starts, returned as given
    for C, model in zip(Cs, fit_path(X, y, Cs)):
        alone = FastLinearSVC(C=C).fit(X, y)
        assert model.C == C
        assert primal_objective(model, X, y, C) == pytest.approx(primal_objective(alone, X, y, C),
                                                                 rel=1e-6)


def test_bad_input_is_refused_clearly():
    X, y = _problem(50, 5, 2, 1.0)
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        FastLinearSVC().fit(X, y)
    X[3, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        FastLinearSVC().fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        FastLinearSVC().fit(X[5:15], np.zeros(10))


def test_works_in_a_pipeline_with_string_labels():
    X, y = _problem(120, 8, 3, 0.5)
    labels = np.array(["a", "b", "c"])[y]
    pipe = make_pipeline(StandardScaler(), FastLinearSVC()).fit(X, labels)
    assert (pipe.predict(X) == labels).mean() > 0.9


@parametrize_with_checks([FastLinearSVC()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_cold_fit_at_large_c_converges_and_matches_the_path():
    # From w = 0 at C = 1e4·d/N the finite Newton method alone took > 200 steps; the fit
    # now climbs a tenfold C continuation from d/N.
    X, y = _problem(300, 40, 9, 1.5)
    C = 1e4 * 40 / 300
    cold = FastLinearSVC(C=C, max_iter=60).fit(X, y)
    [path] = fit_path(X, y, [C])
    assert cold.converged_
    assert primal_objective(cold, X, y, C) == pytest.approx(primal_objective(path, X, y, C), rel=1e-6)


def test_a_fit_at_the_numerical_floor_is_converged_not_unconverged():
    """Duplicate rows with conflicting labels, N < d, t = 10^4: the gradient test is out of
    reach (its rounding error exceeds tol·||w||) though the objective cannot decrease any
    more. The fit stops at that floor in a few steps, flagged, and is the optimum: a solve to
    tol 1e-8 from there gains nothing."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 200)), rng.integers(0, 3, 60)
    X, y = np.vstack([X, X[:10]]), np.concatenate([y, (y[:10] + 1) % 3])
    X = StandardScaler().fit_transform(X)
    Cs = [t * 200 / 70 for t in (1, 10, 100, 1000, 10000)]
    fits = fit_path(X, y, Cs)
    last = fits[-1]
    assert last.converged_ and last.at_floor_ and last.n_iter_ < 10
    assert all(f.converged_ for f in fits)
    tight = FastLinearSVC(C=Cs[-1], tol=1e-8, max_iter=50, warm_start=True)
    tight.classes_, tight.coef_, tight.intercept_ = last.classes_, last.coef_, last.intercept_
    tight.n_features_in_ = X.shape[1]
    tight.fit(X, y)
    assert primal_objective(last, X, y, Cs[-1]) <= primal_objective(tight, X, y, Cs[-1]) * (1 + 1e-12)
