"""Tests for evaluation.logreg (SimCLR transfer linear evaluation, Chen et al. 2020 App. B.5/B.8). CPU only."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluation.logreg as lr  # noqa: E402
from data.splits import stratified_split  # noqa: E402
from evaluation.logreg import (  # noqa: E402
    DEFAULT_L2_GRID,
    fit_logreg,
    l2_sweep,
    predict,
    standardize,
    top5_accuracy,
)

torch.set_num_threads(min(2, torch.get_num_threads()))


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _np_objective(w: np.ndarray, X: np.ndarray, y: np.ndarray, C: int, l2: float) -> tuple[float, np.ndarray]:
    """Reference float64 objective/gradient: mean CE + l2/2 ||W[:-1]||^2, W (d+1, C) flattened."""
    n, d = X.shape
    W = w.reshape(d + 1, C)
    Z = X @ W[:-1] + W[-1]
    Z = Z - Z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(Z).sum(axis=1))
    loss = np.mean(lse - Z[np.arange(n), y]) + 0.5 * l2 * np.sum(W[:-1] ** 2)
    G = np.exp(Z - lse[:, None])
    G[np.arange(n), y] -= 1.0
    G /= n
    g = np.vstack([X.T @ G + l2 * W[:-1], G.sum(axis=0)])
    return float(loss), g.ravel()


def _blobs(n: int, m: int, d: int, C: int, scale: float, seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(C, d)) * scale
    ytr = rng.integers(0, C, n)
    yte = rng.integers(0, C, m)
    Xtr = centers[ytr] + rng.normal(size=(n, d))
    Xte = centers[yte] + rng.normal(size=(m, d))
    return Xtr, ytr, Xte, yte


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


# --------------------------------------------------------------------------------------------------
# fit_logreg vs scipy / sklearn
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,w_tol,loss_tol", [(torch.float64, 1e-4, 1e-9), (torch.float32, 1e-3, 1e-6)])
def test_fit_matches_scipy_lbfgsb(dtype, w_tol, loss_tol):
    rng = np.random.default_rng(0)
    n, d, C, l2 = 200, 10, 4, 1e-2
    y = rng.integers(0, C, n)
    X = rng.normal(size=(n, d)) + 1.5 * np.eye(C, d)[y]
    ref = scipy.optimize.minimize(
        _np_objective, np.zeros((d + 1) * C), args=(X, y, C, l2), jac=True, method="L-BFGS-B",
        options=dict(maxiter=10_000, ftol=1e-15, gtol=1e-12),
    )
    W_ref = ref.x.reshape(d + 1, C)

    tol = 1e-10 if dtype == torch.float64 else 1e-6
    W = fit_logreg(torch.tensor(X), torch.tensor(y), C, l2, dtype=dtype, tol=tol)
    assert W.shape == (d + 1, C) and W.dtype == dtype
    Wn = W.double().numpy()
    # The bias is only defined up to a common shift (unpenalised): compare centred biases.
    Wn_c, Wr_c = Wn.copy(), W_ref.copy()
    Wn_c[-1] -= Wn_c[-1].mean()
    Wr_c[-1] -= Wr_c[-1].mean()
    assert _rel(Wn_c, Wr_c) < w_tol
    loss = _np_objective(Wn.ravel(), X, y, C, l2)[0]
    assert abs(loss - ref.fun) / ref.fun < loss_tol


@pytest.mark.parametrize("l2", [1e3, 1e5])
def test_fit_converges_at_strong_regularisation(l2):
    """Regression: at large l2 the weight/bias curvatures differ by ~l2 / q; without the diagonal
    preconditioning float32 L-BFGS stopped with an unconverged bias (and a non-majority classifier)."""
    g = torch.Generator().manual_seed(0)
    C = 10
    y = torch.randint(0, C, (2000,), generator=g)
    x = torch.randn(2000, 64, generator=g) + 0.5 * torch.randn(C, 64, generator=g)[y]
    (x,) = standardize(x)
    W = fit_logreg(x, y, C, l2)  # float32 default
    W_ref = fit_logreg(x.double(), y, C, l2, tol=1e-12, max_iter=2000)
    X, Y = x.double().numpy(), y.numpy()
    ref_loss = _np_objective(W_ref.numpy().ravel(), X, Y, C, l2)[0]
    assert abs(_np_objective(W.double().numpy().ravel(), X, Y, C, l2)[0] - ref_loss) / ref_loss < 1e-6
    assert torch.allclose(W[-1].double(), W_ref[-1], atol=1e-4)
    prior = torch.bincount(y, minlength=C).double()
    assert torch.allclose(W_ref[-1] - W_ref[-1].mean(), prior.log() - prior.log().mean(), atol=1e-2)
    assert torch.equal(predict(x, W), torch.full_like(y, int(prior.argmax())))


def test_fit_warm_start_does_not_modify_init_and_converges_fast():
    rng = np.random.default_rng(3)
    X = torch.tensor(rng.normal(size=(300, 8)), dtype=torch.float64)
    y = torch.tensor(rng.integers(0, 3, 300))
    W0 = fit_logreg(X, y, 3, 1e-1, tol=1e-10)
    init = W0.clone()
    W1 = fit_logreg(X, y, 3, 1e-1, init=init, tol=1e-10, max_iter=3)
    assert torch.equal(init, W0)
    assert torch.allclose(W1, W0, atol=1e-8)


def test_matches_sklearn_logistic_regression():
    sklearn_lm = pytest.importorskip("sklearn.linear_model")
    n, m, d, C, l2 = 2000, 2000, 64, 10, 1e-3
    Xtr, ytr, Xte, yte = _blobs(n, m, d, C, scale=0.3, seed=1)
    xtr, xte = standardize(torch.tensor(Xtr, dtype=torch.float32), torch.tensor(Xte, dtype=torch.float32))
    W = fit_logreg(xtr, torch.tensor(ytr), C, l2)  # default float32 path
    acc = float((predict(xte, W).numpy() == yte).mean())

    kw = dict(C=1.0 / (l2 * n), solver="lbfgs", max_iter=5000, tol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # l1_ratio / penalty deprecations differ across sklearn versions
        clf = sklearn_lm.LogisticRegression(**kw).fit(xtr.double().numpy(), ytr)
    acc_sk = clf.score(xte.double().numpy(), yte)

    assert 0.6 < acc_sk < 0.995, "problem should be neither trivial nor hopeless"
    assert abs(acc - acc_sk) * 100 <= 0.2
    assert _rel(W[:-1].double().numpy(), clf.coef_.T) < 1e-2
    b = W[-1].double().numpy()
    b_sk = clf.intercept_
    assert np.abs((b - b.mean()) - (b_sk - b_sk.mean())).max() < 1e-2


# --------------------------------------------------------------------------------------------------
# preprocessing / split
# --------------------------------------------------------------------------------------------------
def test_standardize_uses_train_statistics():
    g = torch.Generator().manual_seed(0)
    tr = torch.randn(500, 6, generator=g) * 3 + 5
    tr[:, 2] = 7.0  # constant column
    te = torch.randn(100, 6, generator=g)
    ztr, zte = standardize(tr, te)
    assert ztr.shape == tr.shape and zte.shape == te.shape and ztr.dtype == tr.dtype
    assert torch.allclose(ztr.mean(0), torch.zeros(6), atol=1e-5)
    keep = [0, 1, 3, 4, 5]
    assert torch.allclose(ztr[:, keep].std(0, unbiased=False), torch.ones(5), atol=1e-4)
    assert torch.isfinite(ztr).all() and torch.isfinite(zte).all()
    assert torch.allclose(ztr[:, 2], torch.zeros(500))
    mu, sd = tr.double().mean(0), tr.double().std(0, unbiased=False).clamp_min(1e-6)
    assert torch.allclose(zte.double(), (te.double() - mu) / sd, atol=1e-5)


def test_stratified_split_counts_disjoint_reproducible():
    sizes = {0: 100, 1: 37, 2: 5, 3: 2, 4: 1, 5: 15}
    y = torch.cat([torch.full((s,), c) for c, s in sizes.items()])
    y = y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(9))]
    tr, va = stratified_split(y, 0.1, seed=0)

    assert tr.dtype == torch.long and va.dtype == torch.long
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(y.numel()))
    for c, s in sizes.items():
        n_val = int((y[va] == c).sum())
        expected = 0 if s < 2 else min(max(round(0.1 * s), 1), s - 1)
        assert n_val == expected, (c, s, n_val)
        assert int((y[tr] == c).sum()) == s - expected

    tr2, va2 = stratified_split(y, 0.1, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    _, va3 = stratified_split(y, 0.1, seed=1)
    assert not torch.equal(va, va3)


# --------------------------------------------------------------------------------------------------
# protocol: l2 chosen on validation, test scored once
# --------------------------------------------------------------------------------------------------
def _flipped_label_problem(seed: int = 0):
    """Binary, imbalanced (~65/35), linearly separable train; test labels are flipped.

    On validation the well-fitted (small/moderate l2) models are perfect while the huge-l2 model predicts
    the majority class; on the (label-flipped) test set the ranking is reversed, so the test-optimal l2
    is the largest grid value.
    """
    g = torch.Generator().manual_seed(seed)

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.rand(k, generator=g) < 0.35).long()
        x = torch.randn(k, 5, generator=g)
        x[:, 0] += 3.0 * (2 * y - 1).float()
        return x, y

    x_tr, y_tr = draw(600)
    x_te, y_te_true = draw(250)
    return x_tr, y_tr, x_te, 1 - y_te_true


def test_l2_chosen_on_validation_not_test():
    grid = [1e-3, 1e-1, 1e1, 1e3, 1e5]
    x_tr, y_tr, x_te, y_te = _flipped_label_problem()
    res = l2_sweep(x_tr, y_tr, x_te, y_te, 2, l2_grid=grid, seed=0)

    assert res.l2_grid == grid and len(res.val_acc) == len(grid)
    # selection rule: best val accuracy, ties -> larger l2
    best = max(res.val_acc)
    assert res.best_l2 == max(l2 for l2, a in zip(grid, res.val_acc) if a == best)
    assert res.val_acc[-1] < best  # huge l2 -> majority class on validation

    # what the test set would have chosen (refit on whole train at every l2, score test)
    xa, xt = standardize(x_tr, x_te)
    test_acc = [float((predict(xt, fit_logreg(xa, y_tr, 2, l2)) == y_te).float().mean()) for l2 in grid]
    test_best = {l2 for l2, a in zip(grid, test_acc) if a == max(test_acc)}
    assert 1e5 in test_best
    assert res.best_l2 not in test_best and res.best_l2 <= 1e1
    assert res.test_acc < 0.1  # the honest (validation-chosen) model does badly on the flipped test set
    assert res.test_acc == pytest.approx(test_acc[grid.index(res.best_l2)], abs=1 / 250)


class _Spy(torch.Tensor):
    """Tensor subclass that logs every torch operation it takes part in."""

    events: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.events.append(("y_test", getattr(func, "__name__", str(func))))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_test_set_scored_once_after_final_fit(monkeypatch):
    x_tr, y_tr, x_te, y_te = _flipped_label_problem(seed=1)
    n_test = x_te.shape[0]
    events: list = []
    _Spy.events = events
    real_fit, real_predict = lr.fit_logreg, lr.predict

    def fit_spy(x, y, *a, **k):
        events.append(("fit", x.shape[0]))
        return real_fit(x, y, *a, **k)

    def predict_spy(x, W):
        events.append(("predict", x.shape[0]))
        return real_predict(x, W)

    monkeypatch.setattr(lr, "fit_logreg", fit_spy)
    monkeypatch.setattr(lr, "predict", predict_spy)
    grid = [1e-2, 1e0, 1e2]
    res = lr.l2_sweep(x_tr, y_tr, x_te, y_te.as_subclass(_Spy), 2, l2_grid=grid, seed=0)

    fits = [i for i, e in enumerate(events) if e[0] == "fit"]
    test_preds = [i for i, e in enumerate(events) if e == ("predict", n_test)]
    label_touches = [i for i, e in enumerate(events) if e[0] == "y_test"]
    assert len(fits) == len(grid) + 1
    assert [events[i][1] for i in fits[:-1]] == [res.num_fit] * len(grid)
    assert events[fits[-1]][1] == x_tr.shape[0]  # final refit on the whole training set
    assert len(test_preds) == 1 and test_preds[0] > fits[-1]
    assert label_touches and min(label_touches) > fits[-1]
    assert n_test not in (res.num_fit, res.num_val, x_tr.shape[0])  # sizes unambiguous


# --------------------------------------------------------------------------------------------------
# warm start along the path == cold starts
# --------------------------------------------------------------------------------------------------
def test_warm_started_sweep_equals_cold_fits(monkeypatch):
    n, m, d, C = 1000, 200, 16, 5
    Xtr, ytr, Xte, yte = _blobs(n, m, d, C, scale=0.4, seed=2)
    x_tr, y_tr = torch.tensor(Xtr, dtype=torch.float32), torch.tensor(ytr)
    x_te, y_te = torch.tensor(Xte, dtype=torch.float32), torch.tensor(yte)
    grid = [1e-3, 1e-2, 1e-1, 1e0]
    fits: list = []  # (rows, l2, W) of every fit the sweep makes, in order

    def fit_spy(x, y, num_classes, l2, **kwargs):
        fits.append((x.shape[0], l2, fit_logreg(x, y, num_classes, l2, **kwargs)))
        return fits[-1][2]

    monkeypatch.setattr(lr, "fit_logreg", fit_spy)
    res = lr.l2_sweep(x_tr, y_tr, x_te, y_te, C, l2_grid=grid, val_fraction=0.2, seed=3)

    fit_idx, val_idx = stratified_split(y_tr, 0.2, seed=3)
    assert [(rows, l2) for rows, l2, _ in fits] == [(len(fit_idx), l2) for l2 in grid[::-1]] + [(n, res.best_l2)]
    x_fit, x_val = standardize(x_tr[fit_idx], x_tr[val_idx])
    sweep_W = {l2: W for _, l2, W in fits[:-1]}
    for k, l2 in enumerate(grid):
        W_cold = fit_logreg(x_fit, y_tr[fit_idx], C, l2)
        assert _rel(sweep_W[l2], W_cold) < 2e-3, l2
        acc = float((predict(x_val, W_cold) == y_tr[val_idx]).float().mean())
        assert abs(acc - res.val_acc[k]) <= 1.0 / len(val_idx) + 1e-12

    xa, xt = standardize(x_tr, x_te)
    W_final = fit_logreg(xa, y_tr, C, res.best_l2)
    assert _rel(fits[-1][2], W_final) < 2e-3
    assert abs(float((predict(xt, W_final) == y_te).float().mean()) - res.test_acc) <= 1.0 / m + 1e-12


def test_default_grid_is_the_papers():
    assert len(DEFAULT_L2_GRID) == 45
    assert DEFAULT_L2_GRID[0] == pytest.approx(1e-6) and DEFAULT_L2_GRID[-1] == pytest.approx(1e5)
    ratios = np.diff(np.log10(DEFAULT_L2_GRID))
    assert np.allclose(ratios, 11 / 44)


def test_top5_accuracy_matches_a_numpy_loop():
    """Top-5 of the affine scores, counted per row in NumPy; with fewer than 5 classes every row counts."""
    g = torch.Generator().manual_seed(0)
    x, W, y = torch.randn(200, 6, generator=g), torch.randn(7, 8, generator=g), torch.randint(0, 8, (200,), generator=g)
    scores = x.numpy() @ W[:-1].numpy() + W[-1].numpy()
    hits = [y[i].item() in np.argsort(-scores[i])[:5] for i in range(200)]
    assert top5_accuracy(x, W, y) == pytest.approx(np.mean(hits))
    assert top5_accuracy(x, W[:, :3], y % 3) == 1.0
