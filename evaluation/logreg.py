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
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from data.splits import stratified_split

__all__ = [
    "DEFAULT_L2_GRID",
    "SweepResult",
    "fit_logreg",
    "l2_sweep",
    "logreg_loss",
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


def logreg_loss(x: torch.Tensor, y: torch.Tensor, W: torch.Tensor, l2: float) -> torch.Tensor:
    """Objective value ``mean CE(softmax(x @ W[:-1] + W[-1]), y) + l2/2 ||W[:-1]||^2`` (0-dim tensor).

    Args:
        x: (n, d) features. y: (n,) int labels. W: (d + 1, C) weights with bias row.
    """
    x = x.to(W.dtype)
    logits = torch.addmm(W[-1], x, W[:-1])  # (n, C)
    nll = torch.nn.functional.cross_entropy(logits, y.long().to(W.device))
    return nll + 0.5 * l2 * W[:-1].pow(2).sum()


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    init: torch.Tensor | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
    dtype: torch.dtype | None = None,
    history_size: int = 20,
) -> torch.Tensor:
    """Fit an l2-regularised multinomial logistic regression with full-batch L-BFGS.

    Minimises ``mean_i CE(softmax(x_i @ W[:-1] + W[-1]), y_i) + l2/2 * ||W[:-1]||^2`` (bias unpenalised)
    with ``torch.optim.LBFGS(line_search_fn='strong_wolfe')``. The loss and its gradient are computed in
    closed form (``grad_logits = (softmax - onehot) / n``), no autograd graph is built. L-BFGS runs on
    diagonally rescaled variables (weight row j scaled by ``sqrt(q / (q E[x_j^2] + l2))``, q the softmax
    variance at W = 0) so that the penalised weights and the unpenalised bias have comparable curvature;
    this changes neither the objective nor its minimiser, only the conditioning, so that large-l2 fits
    converge in the bias too. A cold start uses W = 0 and bias = centred log class priors
    (the exact optimum when W = 0).

    Args:
        x: (n, d) features (ideally standardised, see :func:`standardize`); any device.
        y: (n,) integer labels in ``[0, num_classes)``.
        num_classes: C.
        l2: penalty strength (>= 0); sklearn's ``C = 1 / (l2 * n)``.
        init: optional (d + 1, C) warm start (copied, never modified).
        max_iter: maximum number of L-BFGS iterations (function evaluations are capped at 1.25x).
        tol: stopping tolerance: L-BFGS stops when the max-abs entry of the (rescaled-variable) gradient is
            <= ``tol`` or the loss / step change falls below ``tol * 1e-3`` (the latter is what usually
            triggers in float32, once the loss stops changing at float32 resolution).
        dtype: ``torch.float32`` (default unless ``x`` is float64) or ``torch.float64``.
        history_size: L-BFGS memory.

    Returns:
        W: (d + 1, C) tensor on ``x.device`` in ``dtype``; ``W[:-1]`` weights, ``W[-1]`` bias.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (n, d), got shape {tuple(x.shape)}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    dt = _resolve_dtype(x, dtype)
    device = x.device
    n, d = x.shape
    x = x.to(dt)

    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    y = y.to(device=device, dtype=torch.long).reshape(-1)
    if y.numel() != n:
        raise ValueError(f"x has {n} rows but y has {y.numel()} labels")
    l2 = float(l2)

    if init is None:
        # W = 0 and the bias at its exact optimum for W = 0: centred log class priors.
        W0 = torch.zeros(d + 1, num_classes, dtype=dt, device=device)
        counts = torch.bincount(y, minlength=num_classes)[:num_classes].to(dt).clamp_min(0.5)  # (C,)
        log_prior = counts.log()
        W0[-1] = log_prior - log_prior.mean()
    else:
        if tuple(init.shape) != (d + 1, num_classes):
            raise ValueError(f"init must have shape {(d + 1, num_classes)}, got {tuple(init.shape)}")
        W0 = init.detach().to(device=device, dtype=dt)

    # Diagonal preconditioning (a change of variables W = U * scale, no change of the objective or of
    # its minimiser). The curvature of the objective along weight row j is ~ q * E[x_j^2] + l2 and along
    # the (unpenalised) bias ~ q, with q = (1/C)(1 - 1/C) the softmax variance at W = 0. For large l2
    # the two differ by orders of magnitude and plain L-BFGS can stop with an unconverged bias.
    # Scaling row j by sqrt(q / (q * E[x_j^2] + l2)) equalises the diagonal.
    q = (1.0 / num_classes) * (1.0 - 1.0 / num_classes)
    m2 = torch.linalg.vector_norm(x, dim=0).square_().div_(n)  # (d,) E[x_j^2]
    denom = q * m2 + l2
    r = torch.where(denom > 0, (q / denom.clamp_min(1e-30)).sqrt(), torch.ones_like(denom))  # (d,)
    scale = torch.cat([r, r.new_ones(1)])[:, None]  # (d + 1, 1)
    U = (W0 / scale).requires_grad_(True)  # (d + 1, C) optimisation variable

    # (n, C) one-hot scaled by 1/n so that grad_logits = softmax / n - onehot_n.
    onehot_n = torch.zeros(n, num_classes, dtype=dt, device=device)
    onehot_n.scatter_(1, y[:, None], 1.0 / n)

    opt = torch.optim.LBFGS(
        [U],
        lr=1.0,
        max_iter=max_iter,
        max_eval=int(max_iter * 1.25) + 1,
        tolerance_grad=tol,
        tolerance_change=tol * 1e-3,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        with torch.no_grad():
            W = U * scale  # (d + 1, C)
            Wd, b = W[:-1], W[-1]  # (d, C), (C,)
            logits = torch.addmm(b, x, Wd)  # (n, C)
            logp = torch.log_softmax(logits, dim=1)  # (n, C)
            # mean NLL = -sum(onehot/n * logp)
            loss = -(onehot_n * logp).sum() + 0.5 * l2 * (Wd * Wd).sum()
            g_logits = logp.exp_().div_(n).sub_(onehot_n)  # (n, C), reuses logp's storage
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
        W: (d + 1, C) final weights (CPU), for inputs standardised with the whole-train statistics.
        fit_weights: (d + 1, C) fit-split solutions for each ``l2_grid`` entry (CPU), in the fit-split
            standardisation.
        num_fit, num_val, num_train, num_test: split sizes.
        sweep_seconds, refit_seconds: wall-clock times of the grid sweep and of refit + test scoring.
    """

    l2_grid: list[float]
    val_acc: list[float]
    best_l2: float
    train_acc: float
    test_acc: float
    test_top5: float = float("nan")
    W: torch.Tensor | None = None
    fit_weights: list[torch.Tensor] = field(default_factory=list)
    num_fit: int = 0
    num_val: int = 0
    num_train: int = 0
    num_test: int = 0
    sweep_seconds: float = 0.0
    refit_seconds: float = 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def l2_sweep(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    l2_grid: Sequence[float] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
    dtype: torch.dtype | None = None,
) -> SweepResult:
    """SimCLR transfer linear evaluation (Chen et al. 2020, App. B.5/B.8): pick l2 on val, refit, test once.

    1. Stratified, seeded split of the training set into fit / val (:func:`stratified_split`).
    2. Standardise fit and val with the *fit-split* statistics.
    3. Fit along the grid from the largest l2 to the smallest (the strongly regularised end is well
       conditioned), warm-starting each fit from the previous solution; record val accuracy.
    4. Choose the l2 with the best val accuracy (ties: the larger l2).
    5. Re-standardise the whole training set (and the test set) with *whole-train* statistics, refit
       on the whole training set with the chosen l2 (warm-started from that l2's fit-split solution;
       the problem is strictly convex for l2 > 0 so the start only affects speed), and score the test
       set once. ``x_test`` / ``y_test`` are not touched before this final step.

    Args:
        x_train: (n, d) frozen training features. y_train: (n,) int labels.
        x_test: (m, d) frozen test features. y_test: (m,) int labels.
        num_classes: C.
        l2_grid: l2 values (any order); default :data:`DEFAULT_L2_GRID` (45 values in [1e-6, 1e5]).
        val_fraction: per-class fraction of train held out for validation.
        seed: split seed.
        device: where to fit; default ``x_train.device``.
        max_iter, tol, dtype: forwarded to :func:`fit_logreg`.

    Returns:
        :class:`SweepResult`.
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

    xt = x_train.to(dev)
    yt = y_train.to(dev)
    fit_idx_d, val_idx_d = fit_idx.to(dev), val_idx.to(dev)
    x_fit, x_val = standardize(xt[fit_idx_d].to(dt), xt[val_idx_d].to(dt))  # (n_fit, d), (n_val, d)
    y_fit, y_val = yt[fit_idx_d], yt[val_idx_d]

    # --- sweep: largest l2 first, warm-started ---------------------------------------------------
    _sync(dev)
    t0 = time.perf_counter()
    n_grid = len(grid)
    val_correct: list[int] = [0] * n_grid
    fit_weights: list[torch.Tensor | None] = [None] * n_grid
    W_prev: torch.Tensor | None = None
    for k in range(n_grid - 1, -1, -1):
        l2 = grid[k]
        W_prev = fit_logreg(x_fit, y_fit, num_classes, l2, init=W_prev, max_iter=max_iter, tol=tol, dtype=dt)
        val_correct[k] = int((predict(x_val, W_prev) == y_val).sum().item())
        fit_weights[k] = W_prev.detach().to("cpu")
    _sync(dev)
    sweep_seconds = time.perf_counter() - t0

    # Integer counts: exact tie handling; '>=' while scanning ascending -> the larger l2 wins ties.
    best_k = 0
    for k in range(n_grid):
        if val_correct[k] >= val_correct[best_k]:
            best_k = k
    best_l2 = grid[best_k]
    val_acc = [c / y_val.numel() for c in val_correct]

    # --- refit on whole train, score test once -------------------------------------------------------
    t1 = time.perf_counter()
    x_all = xt.to(dt)
    x_all_z, x_test_z = standardize(x_all, x_test.to(device=dev, dtype=dt))
    init = fit_weights[best_k]
    W = fit_logreg(x_all_z, yt, num_classes, best_l2, init=init, max_iter=max_iter, tol=tol, dtype=dt)
    train_acc = _accuracy(predict(x_all_z, W), yt)
    test_acc = _accuracy(predict(x_test_z, W), y_test.reshape(-1).long())
    test_top5 = top5_accuracy(x_test_z, W, y_test.reshape(-1).long())
    _sync(dev)
    refit_seconds = time.perf_counter() - t1
    return SweepResult(
        l2_grid=grid,
        val_acc=val_acc,
        best_l2=best_l2,
        train_acc=train_acc,
        test_acc=test_acc,
        test_top5=test_top5,
        W=W.detach().to("cpu"),
        fit_weights=[w for w in fit_weights if w is not None],
        num_fit=int(fit_idx.numel()),
        num_val=int(val_idx.numel()),
        num_train=int(y_train.numel()),
        num_test=int(x_test.shape[0]),
        sweep_seconds=sweep_seconds,
        refit_seconds=refit_seconds,
    )
