import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation.pictures as pictures
from evaluation.pictures import cosine_neighbours, embedding_map, neighbours_picture, pick_queries, project_2d
from utils.errors import UserError

RED, GREEN = (214, 39, 40), (44, 160, 44)  # matplotlib's tab:red and tab:green


def reference_neighbours(x: np.ndarray, queries, k: int) -> np.ndarray:
    """A plain double loop: cosine similarity of each query with every other sample, sorted (-sim, index)."""
    out = []
    for q in queries:
        sims = []
        for j in range(len(x)):
            if j != q:
                cos = float(x[q] @ x[j]) / (np.linalg.norm(x[q]) * np.linalg.norm(x[j]))
                sims.append((-cos, j))
        out.append([j for _, j in sorted(sims)[:k]])
    return np.array(out, dtype=np.int64)


def grey_image(i: int) -> Image.Image:
    """A plain grey image of a size that depends on i (no red or green in it)."""
    return Image.new("RGB", (20 + 7 * (i % 5), 30 + 3 * (i % 4)), (40 + 5 * (i % 30),) * 3)


def colour_pixels(path: str, rgb: tuple[int, int, int], tol: int = 12) -> int:
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(a - np.array(rgb)).max(axis=2) <= tol).sum())


def test_cosine_neighbours_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)) * rng.uniform(0.01, 100.0, (40, 1))  # scaled rows: cosine ignores norms
    queries = np.array([0, 7, 39, 12, 7])
    ref = reference_neighbours(x, queries, 5)
    got = cosine_neighbours(x.astype(np.float32), queries, 5)
    assert got.dtype == np.int64 and got.shape == (5, 5)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(cosine_neighbours(torch.from_numpy(x), torch.tensor(queries), 5), ref)
    assert not (got == queries[:, None]).any()  # never the query itself
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = np.einsum("qd,qkd->qk", xn[queries], xn[got])
    assert (np.diff(sims, axis=1) <= 0).all()  # most similar first


def test_cosine_neighbours_ties_lower_index_first_and_k_capped():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, 0.1], [1.0, 0.1], [1.0, 0.0], [-1.0, 0.0]])
    # query 0: sample 5 is identical (cosine 1); 2, 3, 4 tie next; k=3 takes the lower two of the tie
    np.testing.assert_array_equal(cosine_neighbours(x, [0], 3), [[5, 2, 3]])
    np.testing.assert_array_equal(cosine_neighbours(x, [3], 3), [[2, 4, 0]])  # 0 and 5 tie: 0 first
    every = cosine_neighbours(x, [0, 1], 50)
    assert every.shape == (2, 6) and not (every == [[0], [1]]).any()  # k capped at the N - 1 others


def test_cosine_neighbours_chunked_equals_unchunked():
    x = torch.randn(60, 16, generator=torch.Generator().manual_seed(1))
    queries = np.arange(0, 60, 3)
    whole = cosine_neighbours(x, queries, 7, chunk_size=len(queries))
    np.testing.assert_array_equal(cosine_neighbours(x, queries, 7, chunk_size=3), whole)
    np.testing.assert_array_equal(whole, reference_neighbours(x.double().numpy(), queries, 7))


def labelled(n_per_class: int = 10, classes: int = 5, unlabeled: int = 6, seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.repeat(np.arange(classes), n_per_class), np.full(unlabeled, -1)])
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


def test_pick_queries_one_per_class():
    labels = labelled()
    q = pick_queries(labels, 3, seed=0)
    assert q.dtype == np.int64 and list(labels[q]) == [0, 2, 4]  # evenly spaced over the 5 classes
    q = pick_queries(labels, 10, seed=0)
    assert list(labels[q]) == [0, 1, 2, 3, 4] and len(set(q)) == 5  # min(n, C) classes, distinct images
    np.testing.assert_array_equal(pick_queries(labels, 10, seed=0), q)  # a pure function of its arguments
    assert any((pick_queries(labels, 10, seed=s) != q).any() for s in (1, 2, 3))  # the seed chooses the images
    np.testing.assert_array_equal(pick_queries(torch.from_numpy(labels), 10, seed=0), q)


def test_pick_queries_unlabeled():
    q = pick_queries(None, 10, seed=3, num_samples=100)
    assert q.dtype == np.int64 and len(set(q)) == 10 and q.min() >= 0 and q.max() < 100
    np.testing.assert_array_equal(pick_queries(None, 10, seed=3, num_samples=100), q)
    assert (pick_queries(None, 10, seed=4, num_samples=100) != q).any()
    assert sorted(pick_queries(np.full(7, -1), 10, seed=0)) == list(range(7))  # N < n: every image once
    with pytest.raises(ValueError, match="num_samples"):
        pick_queries(None, 10, seed=0)


def test_neighbours_picture_grid(tmp_path):
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(3), 10)
    features = torch.from_numpy((rng.standard_normal((3, 8)) * 5)[clusters] + rng.standard_normal((30, 8))).float()
    right, wrong, plain = (str(tmp_path / f"{name}.png") for name in ("right", "wrong", "plain"))
    neighbours_picture(right, grey_image, features, clusters, ["cat", "dog", "a very long class name"], k=2, queries=2)
    neighbours_picture(wrong, grey_image, features, np.arange(30) % 3, None, k=4, queries=2)  # not the clusters
    neighbours_picture(plain, grey_image, features.numpy(), None, None, k=2, queries=3)  # no labels
    sizes = {}
    for path in (right, wrong, plain):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGBA"
            sizes[path] = img.size
    assert sizes[wrong][0] > sizes[right][0] and sizes[wrong][1] == sizes[right][1]  # wider with k
    assert sizes[plain][1] > sizes[right][1] and sizes[plain][0] == sizes[right][0]  # taller with queries
    assert colour_pixels(right, GREEN) > 100 and colour_pixels(right, RED) == 0  # neighbours of its own class
    assert colour_pixels(wrong, RED) > 100  # neighbours of other classes
    assert colour_pixels(plain, RED) == colour_pixels(plain, GREEN) == 0  # no labels: no coloured frames
    assert sorted(os.listdir(tmp_path)) == ["plain.png", "right.png", "wrong.png"]  # no temporary files left


def test_without_matplotlib_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError) as e:
        pictures.pyplot()
    assert "pip install matplotlib" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="pip install matplotlib"):
        embedding_map(str(tmp_path / "map.png"), np.eye(4), None, None)
    assert os.listdir(tmp_path) == []


def blobs(n: int = 60, classes: int = 3, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    return (rng.standard_normal((classes, dim)) * 4)[labels] + rng.standard_normal((n, dim)), labels


def test_embedding_map_tsne_or_pca(tmp_path, monkeypatch):
    features, labels = blobs()
    path = str(tmp_path / "map.png")
    assert embedding_map(path, torch.from_numpy(features), labels, ["a", "b", "c"], title="run") == "t-SNE"
    with Image.open(path) as img:
        assert img.format == "PNG"
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    os.remove(path)
    assert embedding_map(path, features, None, None) == "PCA"
    with Image.open(path) as img:
        assert img.format == "PNG"
    assert os.listdir(tmp_path) == ["map.png"]


def test_embedding_map_normalises_and_subsamples(tmp_path, monkeypatch):
    seen = []

    def spy(x, method, seed):
        seen.append(np.asarray(x))
        return project_2d(x, method, seed)

    monkeypatch.setattr(pictures, "project_2d", spy)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # PCA: fast
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    features, labels = blobs(n=75, classes=25)  # more classes than a legend holds
    labels[:5] = -1
    assert embedding_map(str(tmp_path / "m.png"), features * 50, labels, None, max_points=20, seed=2) == "PCA"
    assert seen[0].shape == (20, 16)
    np.testing.assert_allclose(np.linalg.norm(seen[0], axis=1), 1.0, rtol=1e-5)  # L2-normalised first
    rows = [int(np.argmin(np.abs(features / np.linalg.norm(features, axis=1, keepdims=True) - r).sum(1)))
            for r in seen[0]]
    assert len(set(rows)) == 20  # distinct samples
    embedding_map(str(tmp_path / "m2.png"), features * 50, labels, None, max_points=20, seed=2)
    np.testing.assert_array_equal(seen[1], seen[0])  # the same seeded subset


def test_pca_is_the_top_two_principal_components():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    coords = project_2d(x, "PCA", seed=0)
    centred = x - x.mean(axis=0)
    _, vecs = np.linalg.eigh(centred.T @ centred)  # eigenvectors of the scatter matrix, ascending
    ref = centred @ vecs[:, [-1, -2]]
    for a in range(2):
        assert np.allclose(coords[:, a], ref[:, a]) or np.allclose(coords[:, a], -ref[:, a])
        assert coords[np.abs(coords[:, a]).argmax(), a] > 0  # a fixed sign
    with pytest.raises(ValueError, match="neither"):
        project_2d(x, "UMAP", seed=0)


def test_tsne_arguments(monkeypatch):
    import sklearn.manifold
    calls = []

    class FakeTSNE:
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def fit_transform(self, x):
            return x[:, :2]

    monkeypatch.setattr(sklearn.manifold, "TSNE", FakeTSNE)
    x, _ = blobs(n=40)
    np.testing.assert_array_equal(project_2d(x, "t-SNE", seed=5), x[:, :2])
    assert calls[0]["init"] == "pca" and calls[0]["random_state"] == 5 and calls[0]["perplexity"] == 13
    project_2d(np.ones((100, 3)), "t-SNE", seed=0)
    assert calls[1]["perplexity"] == 30
