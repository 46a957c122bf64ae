"""Two pictures of what a frozen network's representation learned, drawn from its embeddings (``embed.py``).

- ``neighbours_picture``: a few query images, each followed by its nearest neighbours in cosine similarity;
  with labels, each neighbour framed green when its class is the query's and red when not.
- ``embedding_map``: the L2-normalised embeddings laid out in 2-D (t-SNE, or PCA without scikit-learn),
  one colour per class.

matplotlib (and scikit-learn, for t-SNE) are optional dependencies, imported only when a picture is drawn.
"""
from __future__ import annotations

import textwrap
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.files import atomic_write

DPI = 100
TILE_PIXELS = 112  # every image is shown at this size, whatever its own
QUERY_FRAME, SAME_FRAME, OTHER_FRAME, UNKNOWN_FRAME = "black", "tab:green", "tab:red", "0.6"
MAX_LEGEND = 20  # more classes than this: coloured along a colormap, without a legend


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); a one-line UserError if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("matplotlib is not installed: pip install matplotlib (the pictures of embed.py need it)"
                        ) from None
    return plt


def _as_tensor(features) -> torch.Tensor:
    """(N, D) float32 tensor of ``features`` (a tensor stays on its device)."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(np.ascontiguousarray(features))
    return features.detach().float()


def _as_labels(labels) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels, dtype=np.int64)


@torch.no_grad()
def _neighbours(features, queries, k: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities) of :func:`cosine_neighbours`, both (Q, min(k, N - 1))."""
    x = F.normalize(_as_tensor(features), dim=1)  # (N, D)
    q = torch.as_tensor(np.asarray(queries, dtype=np.int64), device=x.device)  # (Q,)
    k = min(k, x.shape[0] - 1)
    out_idx, out_sim = [], []
    for start in range(0, q.shape[0], chunk_size):
        rows = q[start:start + chunk_size]  # (m,)
        sim = x[rows] @ x.t()  # (m, N)
        sim[torch.arange(rows.shape[0], device=x.device), rows] = -float("inf")  # never the query itself
        idx = _top_k_lowest_index_first(sim, k)  # (m, k)
        out_idx.append(idx)
        out_sim.append(sim.gather(1, idx))
    if not out_idx:
        return np.zeros((0, max(k, 0)), np.int64), np.zeros((0, max(k, 0)), np.float32)
    return torch.cat(out_idx).cpu().numpy(), torch.cat(out_sim).cpu().numpy()


def _top_k_lowest_index_first(sim: torch.Tensor, k: int) -> torch.Tensor:
    """(m, k) column indices of each row's k largest values, largest first, equal values lower index first."""
    if k <= 0:
        return torch.zeros(sim.shape[0], 0, dtype=torch.int64, device=sim.device)
    kth = sim.topk(k, dim=1).values[:, -1:]  # (m, 1): the k-th largest value of each row
    above, tied = sim > kth, sim == kth  # at most k - 1 above; the lowest-index ties fill the rest
    room = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= room))  # exactly k per row
    idx = chosen.nonzero()[:, 1].view(sim.shape[0], k)  # ascending per row
    order = sim.gather(1, idx).argsort(dim=1, descending=True, stable=True)
    return idx.gather(1, order)


def cosine_neighbours(features, queries, k: int, *, chunk_size: int = 256) -> np.ndarray:
    """(Q, k) int64: for each query index, the indices of its k most cosine-similar other samples (never
    itself), most similar first, equal similarities lower index first. ``features``: (N, D) tensor or array of
    any float dtype; ``queries``: (Q,) ints; k is capped at N - 1. ``chunk_size`` queries are compared with
    all samples at a time, so memory grows with chunk_size x N, never N x N."""
    return _neighbours(features, queries, k, chunk_size)[0]


def pick_queries(labels, n: int, seed: int, *, num_samples: int | None = None) -> np.ndarray:
    """Query indices (int64). With ``labels`` ((N,) ints, -1 unlabeled): one seeded random image of each of
    min(n, C) classes present, evenly spaced over them (all of them when C <= n), in class order. With labels
    None (or none labeled): min(n, N) seeded random distinct images, N being ``num_samples`` (needed then) or
    len(labels). A pure function of its arguments."""
    labels = _as_labels(labels)
    rng = np.random.default_rng(seed)
    present = np.unique(labels[labels >= 0]) if labels is not None else np.zeros(0, np.int64)
    if len(present):
        spread = present[np.linspace(0, len(present) - 1, min(n, len(present))).round().astype(int)]
        members = [np.flatnonzero(labels == c) for c in spread]
        return np.array([m[rng.integers(len(m))] for m in members], dtype=np.int64)
    size = len(labels) if labels is not None else num_samples
    if size is None:
        raise ValueError("pick_queries: without labels, num_samples is needed")
    return np.sort(rng.choice(size, size=min(n, size), replace=False)).astype(np.int64)


def _tile(img) -> np.ndarray:
    """The image centre-cropped to a square and resized to TILE_PIXELS: (T, T, 3) uint8."""
    from PIL import ImageOps
    return np.asarray(ImageOps.fit(img.convert("RGB"), (TILE_PIXELS, TILE_PIXELS)))


def _class_name(label: int, classes: list[str] | None) -> str:
    if label < 0:
        return "unlabeled"
    name = classes[label] if classes is not None and label < len(classes) else str(label)
    return name if len(name) <= 16 else name[:15] + "…"


def _frame(ax, color: str | None, width: float = 3.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(color is not None)
        if color is not None:
            spine.set_edgecolor(color)
            spine.set_linewidth(width)


def _neighbour_frame(query_label: int | None, label: int | None) -> str | None:
    if query_label is None:
        return None
    if query_label < 0 or label < 0:
        return UNKNOWN_FRAME
    return SAME_FRAME if label == query_label else OTHER_FRAME


def _save(plt, fig, path: str) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically, then close it."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def neighbours_picture(path: str, image: Callable[[int], object], features, labels, classes: list[str] | None, *,
                       k: int = 8, queries: int = 10, seed: int = 0) -> None:
    """A grid PNG at ``path``: one row per query (:func:`pick_queries`), the query image first (framed black),
    then its k nearest neighbours by cosine similarity (shown under each). With labels, each tile is titled by
    its class and each neighbour framed green when its class is the query's, red when not (grey if either is
    unlabeled). ``image(i)``: the PIL image of sample i, any size. Written atomically."""
    plt = pyplot()
    labels = _as_labels(labels)
    if labels is not None and not (labels >= 0).any():
        labels = None
    rows = pick_queries(labels, queries, seed, num_samples=len(features))
    idx, sim = _neighbours(features, rows, k, chunk_size=256)  # (Q, k)
    cols = idx.shape[1] + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.15 * cols, 1.4 * len(rows)), squeeze=False)
    for r, q in enumerate(rows):
        q_label = int(labels[q]) if labels is not None else None
        for c, (i, caption) in enumerate([(q, "query")] + [(j, f"{s:.2f}") for j, s in zip(idx[r], sim[r])]):
            ax = axes[r, c]
            ax.imshow(_tile(image(int(i))))
            label = int(labels[i]) if labels is not None else None
            _frame(ax, QUERY_FRAME if c == 0 else _neighbour_frame(q_label, label))
            if label is not None:
                ax.set_title(_class_name(label, classes), fontsize=7)
            ax.set_xlabel(caption, fontsize=7, labelpad=2)
    fig.suptitle(f"each query (framed black) and its {cols - 1} nearest neighbours by cosine similarity",
                 fontsize=9)
    fig.tight_layout()
    _save(plt, fig, path)


def sklearn_available() -> bool:
    """Whether scikit-learn's t-SNE can be imported."""
    try:
        from sklearn.manifold import TSNE  # noqa: F401
    except ImportError:
        return False
    return True


def project_2d(features, method: str, seed: int) -> np.ndarray:
    """(N, 2) float64 coordinates of the rows of ``features`` as given (normalise them first if wanted):
    ``"PCA"``: on their top two principal components (each axis signed so that its largest coordinate is
    positive); ``"t-SNE"``: scikit-learn's t-SNE (PCA initialisation, perplexity min(30, (N - 1) / 3))."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    x = np.asarray(features, dtype=np.float64)  # (N, D)
    if method == "PCA":
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (min(N, D), D)
        coords = np.zeros((x.shape[0], 2))
        coords[:, :min(2, vt.shape[0])] = centred @ vt[:2].T
        flip = np.sign(coords[np.abs(coords).argmax(axis=0), [0, 1]])
        return coords * np.where(flip == 0, 1.0, flip)
    if method == "t-SNE":
        from sklearn.manifold import TSNE
        perplexity = min(30.0, (x.shape[0] - 1) / 3)
        return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
    raise ValueError(f"project_2d: method {method!r} is neither 'PCA' nor 't-SNE'")


def _scatter(ax, coords: np.ndarray, labels: np.ndarray | None, classes: list[str] | None) -> None:
    """Points coloured by class (grey when unlabeled), with a legend for up to MAX_LEGEND classes."""
    unlabeled = np.ones(len(coords), bool) if labels is None else labels < 0
    if unlabeled.any():
        ax.scatter(*coords[unlabeled].T, s=4, c="0.6", alpha=0.6, linewidths=0, label="unlabeled")
    present = np.unique(labels[~unlabeled]) if labels is not None else np.zeros(0, np.int64)
    if len(present) == 0:
        return
    import matplotlib
    cmap = matplotlib.colormaps["tab10" if len(present) <= 10 else "tab20" if len(present) <= 20 else "turbo"]
    for n, c in enumerate(present):
        color = cmap(n if len(present) <= 20 else n / max(len(present) - 1, 1))
        ax.scatter(*coords[labels == c].T, s=4, color=color, alpha=0.8, linewidths=0,
                   label=_class_name(int(c), classes))
    if len(present) <= MAX_LEGEND:
        ax.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        ax.text(1.01, 0.5, f"{len(present)} classes:\nno legend", transform=ax.transAxes, fontsize=7)


def embedding_map(path: str, features, labels, classes: list[str] | None, *, title: str = "", seed: int = 0,
                  max_points: int = 5000) -> str:
    """A 2-D scatter PNG at ``path`` of the L2-normalised embeddings (a seeded random subset of at most
    ``max_points``), coloured by class with a legend (grey when unlabeled): t-SNE when scikit-learn is
    installed, else PCA, named in the title after ``title``. Written atomically. Returns "t-SNE" or "PCA"."""
    plt = pyplot()
    x = F.normalize(_as_tensor(features), dim=1).cpu()  # (N, D)
    labels = _as_labels(labels)
    keep = np.arange(x.shape[0])
    if x.shape[0] > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=max_points, replace=False))
    method = "t-SNE" if sklearn_available() and len(keep) > 1 else "PCA"  # t-SNE needs two points
    coords = project_2d(x[torch.from_numpy(keep)], method, seed)  # (n, 2)
    fig, ax = plt.subplots(figsize=(7.5, 6))
    _scatter(ax, coords, labels[keep] if labels is not None else None, classes)
    ax.set_xticks([])
    ax.set_yticks([])
    heading = f"{method} of {len(keep)} L2-normalised embeddings"
    ax.set_title(textwrap.fill(f"{title}: {heading}" if title else heading, 90), fontsize=9)  # within the figure
    fig.tight_layout()
    _save(plt, fig, path)
    return method
