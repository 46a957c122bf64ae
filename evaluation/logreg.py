"""L2-regularised multinomial logistic regression on frozen features (SimCLR "transfer" linear evaluation).

Protocol
--------
Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv:2002.05709), Appendix B.5 / B.8 (transfer via a linear classifier,
following Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?"):

* an l2-regularised multinomial logistic regression is trained on features of the *frozen* network,
* the softmax cross-entropy objective is optimised with L-BFGS (full batch), no data augmentation,
* the regularisation strength is chosen among 45 logarithmically spaced values in [1e-6, 1e5]
  on a validation split held out of the training set,
* the classifier is then re-trained on the whole training set (train + validation) with the chosen
  strength and the test set is scored exactly once.

Here the features are additionally z-scored with training statistics (:func:`standardize`) so that a
single l2 grid is meaningful across feature extractors.

Objective and l2 convention
---------------------------
With ``x`` of shape (n, d), labels ``y`` in ``[0, C)``, weights ``W`` (d, C) and bias ``b`` (C,)::

    L(W, b) = (1/n) * sum_i  -log softmax(x_i @ W + b)[y_i]  +  (l2 / 2) * ||W||_F^2

The bias is *not* penalised.  scikit-learn's ``LogisticRegression`` minimises
``C * sum_i loss_i + 1/2 ||W||^2`` (also without penalty on the intercept for ``lbfgs``); dividing by
``C * n`` shows that the two problems have the same minimiser when::

    C_sklearn = 1 / (l2 * n_samples)        l2 = 1 / (C_sklearn * n_samples)

(``n_samples`` is the number of rows the model is fitted on, so the same ``l2`` corresponds to a
different ``C`` for the fit split and for the whole-train refit).

Weight layout
-------------
:func:`fit_logreg` returns a single tensor ``W`` of shape ``(d + 1, C)``: rows ``0..d-1`` are the
weights and the last row ``W[d]`` is the bias, i.e. ``logits = x @ W[:-1] + W[-1]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from data.splits import stratified_split

__all__ = [
    "DEFAULT_L2_GRID",
    "SweepResult",
    "fit_logreg",
    "l2_sweep",
    "predict",
    "standardize",
]

#: The paper's grid: 45 log-spaced l2 strengths in [1e-6, 1e5] (float64, exact end points).
DEFAULT_L2_GRID: list[float] = np.logspace(-6.0, 5.0, 45).tolist()


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------
def _moments(train: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column float64 mean and population std (clamped to >= eps) of a (n, d) tensor."""
    t64 = train.to(torch.float64)
    return t64.mean(dim=0), t64.std(dim=0, unbiased=False).clamp_min(eps)


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, ...]:
    """z-score every tensor with the train mean/std (std clamped away from 0).

    Args:
        train: (n, d) features whose per-column statistics are used.
        *others: any number of (m, d) feature tensors standardised with the *train* statistics.
        eps: lower clamp for the (population, ``unbiased=False``) std; constant columns become 0.

    Returns:
        ``(train_z, *others_z)``, each with the shape and floating dtype of its input (integer inputs
        become float32). Statistics are accumulated in float64 for accuracy.
    """
    if train.dim() != 2:
        raise ValueError(f"expected a 2-D (n, d) feature tensor, got shape {tuple(train.shape)}")
    mean, std = _moments(train, eps)  # (d,), (d,) float64

    def _z(t: torch.Tensor) -> torch.Tensor:
        out_dtype = t.dtype if t.is_floating_point() else torch.float32
        m, s = mean.to(t.device), std.to(t.device)
        return ((t.to(torch.float64) - m) / s).to(out_dtype)

    return (_z(train),) + tuple(_z(o) for o in others)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def _resolve_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        return dtype
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, init: torch.Tensor | None = None,
               max_iter: int = 500, tol: float = 1e-6, dtype: torch.dtype | None = None,
               history_size: int = 20) -> torch.Tensor:
    """Fit an l2-regularised multinomial logistic regression with full-batch L-BFGS (Chen et al. 2020, App. B.5).

    Minimises ``mean_i CE(softmax(x_i @ W[:-1] + W[-1]), y_i) + l2/2 * ||W[:-1]||^2`` (bias unpenalised; sklearn's
    ``C = 1 / (l2 * n)``) with ``torch.optim.LBFGS(line_search_fn='strong_wolfe')`` and a closed-form gradient,
    on rescaled variables ``W = U * scale`` (same minimiser, better conditioning). x: (n, d) features (ideally
    :func:`standardize`-d), any device; y: (n,) labels in ``[0, num_classes)``. ``init`` (d + 1, C) is a warm
    start (copied, never modified); a cold start is W = 0 and bias = centred log class priors (the optimum at
    W = 0). L-BFGS stops after ``max_iter`` iterations (1.25x as many evaluations), when the max-abs (rescaled)
    gradient entry is <= ``tol`` or when the loss / step change is < ``tol * 1e-3``. ``dtype``: float32 (default
    unless ``x`` is float64) or float64. Returns W (d + 1, C) on ``x.device``: ``W[:-1]`` weights, ``W[-1]`` bias.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (n, d), got shape {tuple(x.shape)}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    dt, device, (n, d) = _resolve_dtype(x, dtype), x.device, x.shape
    x, l2 = x.to(dt), float(l2)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    y = y.to(device=device, dtype=torch.long).reshape(-1)
    if y.numel() != n:
        raise ValueError(f"x has {n} rows but y has {y.numel()} labels")
    if init is None:  # W = 0 and the bias at its exact optimum for W = 0: centred log class priors
        W0 = torch.zeros(d + 1, num_classes, dtype=dt, device=device)
        log_prior = torch.bincount(y, minlength=num_classes)[:num_classes].to(dt).clamp_min(0.5).log()  # (C,)
        W0[-1] = log_prior - log_prior.mean()
    elif tuple(init.shape) != (d + 1, num_classes):
        raise ValueError(f"init must have shape {(d + 1, num_classes)}, got {tuple(init.shape)}")
    else:
        W0 = init.detach().to(device=device, dtype=dt)

    # Preconditioning: curvature ~ q E[x_j^2] + l2 along weight row j, ~ q along the unpenalised bias (q: softmax
    # variance at W = 0); scaling row j by sqrt(q / (q E[x_j^2] + l2)) equalises them, so large-l2 fits converge.
    q = (1.0 / num_classes) * (1.0 - 1.0 / num_classes)
    denom = q * torch.linalg.vector_norm(x, dim=0).square_().div_(n) + l2  # (d,) q E[x_j^2] + l2
    r = torch.where(denom > 0, (q / denom.clamp_min(1e-30)).sqrt(), torch.ones_like(denom))  # (d,)
    scale = torch.cat([r, r.new_ones(1)])[:, None]  # (d + 1, 1)
    U = (W0 / scale).requires_grad_(True)  # (d + 1, C) optimisation variable
    onehot_n = torch.zeros(n, num_classes, dtype=dt, device=device).scatter_(1, y[:, None], 1.0 / n)  # (n, C)
    opt = torch.optim.LBFGS([U], lr=1.0, max_iter=max_iter, max_eval=int(max_iter * 1.25) + 1, tolerance_grad=tol,
                            tolerance_change=tol * 1e-3, history_size=history_size, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        with torch.no_grad():
            W = U * scale  # (d + 1, C)
            Wd, b = W[:-1], W[-1]  # (d, C), (C,)
            logp = torch.log_softmax(torch.addmm(b, x, Wd), dim=1)  # (n, C)
            loss = -(onehot_n * logp).sum() + 0.5 * l2 * (Wd * Wd).sum()  # mean NLL + l2/2 ||Wd||^2
            g_logits = logp.exp_().div_(n).sub_(onehot_n)  # (n, C) (softmax - onehot) / n, in logp's storage
            grad = torch.empty_like(W)
            torch.addmm(Wd, x.t(), g_logits, beta=l2, out=grad[:-1])  # (d, C) = x^T G + l2 W
            grad[-1] = g_logits.sum(dim=0)  # (C,) bias gradient
            U.grad = grad.mul_(scale)  # chain rule: dL/dU = dL/dW * scale
        return loss

    opt.step(closure)
    return (U.detach() * scale).contiguous()


@torch.no_grad()
def scores(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Class scores ``x @ W[:-1] + W[-1]``: x (n, d), W (d + 1, C) -> (n, C) on W's device, in W's dtype."""
    return torch.addmm(W[-1], x.to(device=W.device, dtype=W.dtype), W[:-1])


def predict(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Class indices ``argmax(x @ W[:-1] + W[-1])``: x (n, d), W (d + 1, C) -> (n,) int64 on W's device."""
    return scores(x, W).argmax(dim=1)


def top5_accuracy(x: torch.Tensor, W: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows whose label is among the 5 largest of ``x @ W[:-1] + W[-1]`` (all classes when fewer)."""
    top = scores(x, W).topk(min(5, W.shape[1]), dim=1).indices   # (n, 5)
    return (top == y.to(W.device).reshape(-1, 1)).any(dim=1).double().mean().item()


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    if y.numel() == 0:
        return float("nan")
    return (pred == y.to(pred.device)).double().mean().item()


# --------------------------------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Outcome of :func:`l2_sweep`.

    Attributes:
        l2_grid: the grid, sorted ascending.
        val_acc: validation accuracy for each ``l2_grid`` entry (same order), in [0, 1].
        best_l2: chosen l2 (best val accuracy; ties -> the larger l2).
        train_acc: accuracy of the final (whole-train) model on the whole training set.
        test_acc: accuracy of the final model on the test set (scored once).
        test_top5: its top-5 accuracy on the test set.
        num_fit, num_val, num_train, num_test: split sizes.
        sweep_seconds, refit_seconds: wall-clock times of the grid sweep and of refit + test scoring.
    """

    l2_grid: list[float]
    val_acc: list[float]
    best_l2: float
    train_acc: float
    test_acc: float
    test_top5: float = float("nan")
    num_fit: int = 0
    num_val: int = 0
    num_train: int = 0
    num_test: int = 0
    sweep_seconds: float = 0.0
    refit_seconds: float = 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def l2_sweep(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
             num_classes: int, l2_grid: Sequence[float] | None = None, val_fraction: float = 0.1, seed: int = 0,
             device: torch.device | str | None = None, max_iter: int = 500, tol: float = 1e-6,
             dtype: torch.dtype | None = None) -> SweepResult:
    """SimCLR transfer linear evaluation (Chen et al. 2020, App. B.5/B.8): pick l2 on val, refit, test once.

    1. Stratified, seeded fit / val split of the training set (:func:`stratified_split`), both standardised
       with the *fit-split* statistics.
    2. Fit along the grid from the largest l2 (well conditioned) to the smallest, each fit warm-started from
       the previous solution; record the val accuracy. Choose the best (ties: the larger l2).
    3. Standardise train and test with *whole-train* statistics, refit on the whole training set with the chosen
       l2 (warm-started from its fit-split solution; strictly convex for l2 > 0, so the start only affects speed)
       and score the test set once. ``x_test`` / ``y_test`` are not touched before this step.

    Args:
        x_train, y_train: (n, d) frozen training features, (n,) int labels.
        x_test, y_test: (m, d) frozen test features, (m,) int labels.
        num_classes: C. l2_grid: l2 values, any order (default :data:`DEFAULT_L2_GRID`).
        val_fraction: per-class fraction of train held out for validation. seed: split seed.
        device: where to fit (default ``x_train.device``). max_iter, tol, dtype: see :func:`fit_logreg`.
    """
    grid = sorted(float(v) for v in (DEFAULT_L2_GRID if l2_grid is None else l2_grid))
    if not grid:
        raise ValueError("empty l2 grid")
    dev = torch.device(device) if device is not None else x_train.device
    dt = _resolve_dtype(x_train, dtype)
    y_train = y_train.reshape(-1).long()
    fit_idx, val_idx = stratified_split(y_train, val_fraction, seed)
    if val_idx.numel() == 0:
        raise ValueError("validation split is empty; increase val_fraction or the number of samples")
    xt, yt = x_train.to(dev), y_train.to(dev)
    fit_idx_d, val_idx_d = fit_idx.to(dev), val_idx.to(dev)
    x_fit, x_val = standardize(xt[fit_idx_d].to(dt), xt[val_idx_d].to(dt))  # (n_fit, d), (n_val, d)
    y_fit, y_val = yt[fit_idx_d], yt[val_idx_d]

    _sync(dev)
    t0 = time.perf_counter()
    val_correct = [0] * len(grid)  # integer counts: exact ties
    best_k, W_best, W = -1, None, None
    for k in reversed(range(len(grid))):  # largest l2 first, warm-started from the previous solution
        W = fit_logreg(x_fit, y_fit, num_classes, grid[k], init=W, max_iter=max_iter, tol=tol, dtype=dt)
        val_correct[k] = int((predict(x_val, W) == y_val).sum().item())
        if best_k < 0 or val_correct[k] > val_correct[best_k]:  # strict '>': a tie keeps the larger l2
            best_k, W_best = k, W
    _sync(dev)
    sweep_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    x_all_z, x_test_z = standardize(xt.to(dt), x_test.to(device=dev, dtype=dt))  # whole-train statistics
    W = fit_logreg(x_all_z, yt, num_classes, grid[best_k], init=W_best, max_iter=max_iter, tol=tol, dtype=dt)
    y_test = y_test.reshape(-1).long()
    train_acc, test_acc = _accuracy(predict(x_all_z, W), yt), _accuracy(predict(x_test_z, W), y_test)
    test_top5 = top5_accuracy(x_test_z, W, y_test)
    _sync(dev)
    refit_seconds = time.perf_counter() - t1
    return SweepResult(l2_grid=grid, val_acc=[c / y_val.numel() for c in val_correct], best_l2=grid[best_k],
                       train_acc=train_acc, test_acc=test_acc, test_top5=test_top5, num_fit=int(fit_idx.numel()),
                       num_val=int(val_idx.numel()), num_train=int(y_train.numel()), num_test=int(x_test.shape[0]),
                       sweep_seconds=sweep_seconds, refit_seconds=refit_seconds)
