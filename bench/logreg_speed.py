"""Benchmark: SimCLR transfer linear-eval l2 sweep (evaluation.logreg.l2_sweep) vs scikit-learn.

Protocol (Chen et al. 2020, arXiv:2002.05709, App. B.5/B.8): l2-regularised multinomial logistic
regression with L-BFGS on frozen features, l2 chosen among 45 log-spaced values in [1e-6, 1e5] on a
validation split of the training set, refit on the whole training set, score the test set once.

Both sides run exactly that protocol on the same synthetic features, the same fit/val split and the same
standardisation, with the same grid, the same ``max_iter`` and ``tol``, warm-starting along the grid from
the largest l2 to the smallest, and sklearn's ``C = 1 / (l2 * n_samples)``.

Features mimic ResNet-18 CIFAR-10 penultimate features: (n, 512), non-negative (post-ReLU average pool),
class structure living in a low-dimensional subspace.

Usage::

    python bench/logreg_speed.py --n 10000 --d 512 --classes 10 --grid 45 [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation.logreg import l2_sweep, standardize, stratified_split  # noqa: E402
from utils.precision import configure_backends  # noqa: E402


def make_features(n: int, n_test: int, d: int, classes: int, seed: int = 0, latent: int = 32,
                  separation: float = 0.6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic ResNet-like features: x = relu(z @ A + b + noise), z = center[y] + N(0, I_latent).

    Returns x_train (n, d) float32, y_train (n,), x_test (n_test, d) float32, y_test (n_test,).
    """
    g = torch.Generator().manual_seed(seed)
    centers = separation * torch.randn(classes, latent, generator=g)  # (C, k)
    A = torch.randn(latent, d, generator=g) / latent ** 0.5  # (k, d)
    b = 0.5 * torch.randn(d, generator=g)  # (d,)

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (m,), generator=g)
        z = centers[y] + torch.randn(m, latent, generator=g)  # (m, k)
        x = torch.relu(z @ A + b + 0.5 * torch.randn(m, d, generator=g))  # (m, d)
        return x, y

    x_tr, y_tr = draw(n)
    x_te, y_te = draw(n_test)
    return x_tr, y_tr, x_te, y_te


def sklearn_sweep(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                  grid: list[float], val_fraction: float, seed: int, max_iter: int, tol: float) -> dict:
    """The same protocol with sklearn LogisticRegression(lbfgs, warm_start=True), float64."""
    from sklearn.linear_model import LogisticRegression

    grid = sorted(grid)
    fit_idx, val_idx = stratified_split(y_train, val_fraction, seed)
    x_fit, x_val = standardize(x_train[fit_idx], x_train[val_idx])
    Xf, Xv = x_fit.double().numpy(), x_val.double().numpy()
    yf, yv = y_train[fit_idx].numpy(), y_train[val_idx].numpy()
    n_fit = Xf.shape[0]

    t0 = time.perf_counter()
    clf = LogisticRegression(solver="lbfgs", warm_start=True, max_iter=max_iter, tol=tol)
    coefs: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    val_correct: dict[float, int] = {}
    iters = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at tiny l2, version-dependent deprecations
        for l2 in reversed(grid):  # largest l2 first, warm-started
            clf.set_params(C=1.0 / (l2 * n_fit))
            clf.fit(Xf, yf)
            iters += int(np.max(clf.n_iter_))
            coefs[l2] = (clf.coef_.copy(), clf.intercept_.copy())
            val_correct[l2] = int((clf.predict(Xv) == yv).sum())
        best_l2 = max(grid, key=lambda l2: (val_correct[l2], l2))  # ties -> larger l2
        sweep_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        x_all, x_te = standardize(x_train, x_test)
        Xa, Xt = x_all.double().numpy(), x_te.double().numpy()
        final = LogisticRegression(solver="lbfgs", warm_start=True, max_iter=max_iter, tol=tol,
                                   C=1.0 / (best_l2 * Xa.shape[0]))
        final.coef_, final.intercept_ = (a.copy() for a in coefs[best_l2])  # same warm start as ours
        final.fit(Xa, y_train.numpy())
        test_acc = float((final.predict(Xt) == y_test.numpy()).mean())
        refit_s = time.perf_counter() - t1
    return dict(best_l2=best_l2, test_acc=test_acc, sweep_s=sweep_s, refit_s=refit_s, iters=iters,
                val_acc=[val_correct[l2] / len(yv) for l2 in grid])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="training samples")
    p.add_argument("--n-test", type=int, default=None, help="test samples (default n // 5)")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--grid", type=int, default=45, help="number of log-spaced l2 values in [1e-6, 1e5]")
    p.add_argument("--max-iter", type=int, default=500)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--separation", type=float, default=0.6,
                   help="class-centre scale in the latent space (0.6 -> ~90%% test accuracy, like SimCLR R18 CIFAR-10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-sklearn", action="store_true")
    args = p.parse_args(argv)

    n_test = args.n_test if args.n_test is not None else max(args.n // 5, 1)
    x_tr, y_tr, x_te, y_te = make_features(args.n, n_test, args.d, args.classes, seed=args.seed,
                                           separation=args.separation)
    grid = np.logspace(-6.0, 5.0, args.grid).tolist()
    print(f"features: train {tuple(x_tr.shape)}, test {tuple(x_te.shape)}, {args.classes} classes; "
          f"grid {args.grid} in [1e-6, 1e5]; max_iter {args.max_iter}, tol {args.tol}; "
          f"torch {torch.__version__} on {args.device} ({torch.get_num_threads()} threads)", flush=True)

    dev = torch.device(args.device)
    configure_backends(dev)  # simclr.py's
    if dev.type == "cuda":  # warm up kernels / context outside the timed region
        l2_sweep(x_tr[:500].to(dev), y_tr[:500].to(dev), x_te[:100].to(dev), y_te[:100].to(dev),
                 args.classes, l2_grid=[1.0], max_iter=5)
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    res = l2_sweep(x_tr.to(dev), y_tr.to(dev), x_te.to(dev), y_te.to(dev), args.classes, l2_grid=grid,
                   val_fraction=args.val_fraction, seed=args.seed, device=dev, max_iter=args.max_iter, tol=args.tol)
    ours_s = time.perf_counter() - t0
    print(f"ours (torch LBFGS, float32): total {ours_s:.2f}s (sweep {res.sweep_seconds:.2f}s, "
          f"refit+test {res.refit_seconds:.2f}s)  best l2 {res.best_l2:.3e}  "
          f"val {100 * max(res.val_acc):.2f}%  test {100 * res.test_acc:.2f}%", flush=True)
    out = dict(ours_s=ours_s, ours_best_l2=res.best_l2, ours_test_acc=res.test_acc)

    if not args.no_sklearn:
        import sklearn

        t0 = time.perf_counter()
        sk = sklearn_sweep(x_tr, y_tr, x_te, y_te, grid, args.val_fraction, args.seed, args.max_iter, args.tol)
        sk_s = time.perf_counter() - t0
        print(f"sklearn {sklearn.__version__} (lbfgs, warm_start, float64): total {sk_s:.2f}s "
              f"(sweep {sk['sweep_s']:.2f}s, refit+test {sk['refit_s']:.2f}s, {sk['iters']} sweep iters)  "
              f"best l2 {sk['best_l2']:.3e}  val {100 * max(sk['val_acc']):.2f}%  "
              f"test {100 * sk['test_acc']:.2f}%", flush=True)
        print(f"speed-up sklearn / ours: {sk_s / ours_s:.2f}x", flush=True)
        out.update(sklearn_s=sk_s, sklearn_best_l2=sk["best_l2"], sklearn_test_acc=sk["test_acc"],
                   ratio=sk_s / ours_s)
    return out


if __name__ == "__main__":
    main()
