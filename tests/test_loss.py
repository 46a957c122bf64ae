"""NT-Xent against a NumPy loop reference and closed forms."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.loss import NTXentLoss


def paper_loss(t: float, **kw) -> NTXentLoss:
    """NT-Xent at the paper's scale (Eq. 1 averaged over the 2N anchors): what the references compute."""
    return NTXentLoss(t, scale="paper", **kw)


def reference_loss(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """Eq. 1 of the paper written as loops: l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / t) / denom)
    return total / n2


def loop_loss_torch(z1, z2, t):
    """The same loops in torch, differentiable, as a gradient reference."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    n2, n = z.shape[0], z1.shape[0]
    terms = []
    for i in range(n2):
        j = (i + n) % n2
        others = torch.stack([z[i] @ z[k] / t for k in range(n2) if k != i])
        terms.append(-(z[i] @ z[j] / t - torch.logsumexp(others, 0)))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("n,d,t", [(1, 3, 0.5), (4, 8, 0.5), (7, 16, 0.1), (16, 5, 1.0)])
def test_matches_numpy_loop(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    got = paper_loss(t)(z1, z2).item()
    assert got == pytest.approx(reference_loss(z1.numpy(), z2.numpy(), t), rel=1e-5, abs=1e-6)


def test_gradients_match_loop_reference():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 10, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 10, generator=g, dtype=torch.float64, requires_grad=True)
    paper_loss(0.3)(z1, z2).backward()
    got = (z1.grad.clone(), z2.grad.clone())
    z1.grad = z2.grad = None
    loop_loss_torch(z1, z2, 0.3).backward()
    torch.testing.assert_close(got[0], z1.grad.float(), rtol=1e-4, atol=1e-6, check_dtype=False)
    torch.testing.assert_close(got[1], z2.grad.float(), rtol=1e-4, atol=1e-6, check_dtype=False)


def test_orthogonal_embeddings_give_log_2n_minus_1():
    n = 8
    eye = torch.eye(2 * n)  # 2N mutually orthogonal unit vectors
    assert paper_loss(0.5)(eye[:n], eye[n:]).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)


def test_identical_embeddings_give_log_2n_minus_1():
    n = 5
    z = torch.randn(1, 7).repeat(n, 1)
    assert paper_loss(0.1)(z, z).item() == pytest.approx(math.log(2 * n - 1), rel=1e-5)


def test_aligned_positives_orthogonal_negatives_closed_form():
    n, t = 6, 0.2
    z = torch.eye(n) * 3.0  # positives identical, negatives orthogonal; scale must not matter
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert paper_loss(t)(z, z).item() == pytest.approx(expected, rel=1e-5)


def test_swapping_views_and_permuting_pairs_leave_it_unchanged():
    z1, z2 = torch.randn(9, 4), torch.randn(9, 4)
    loss = paper_loss(0.5)
    perm = torch.randperm(9)
    assert loss(z2, z1).item() == pytest.approx(loss(z1, z2).item(), rel=1e-6)
    assert loss(z1[perm], z2[perm]).item() == pytest.approx(loss(z1, z2).item(), rel=1e-6)


def test_float32_under_autocast():
    z1, z2 = torch.randn(8, 16).bfloat16(), torch.randn(8, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = paper_loss(0.5)(z1, z2)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference_loss(z1.float().numpy(), z2.float().numpy(), 0.5), rel=1e-5)


def test_depends_only_on_inputs_short_last_batch():
    loss = paper_loss(0.5)
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    assert loss(z1, z2).item() == pytest.approx(reference_loss(z1.numpy(), z2.numpy(), 0.5), rel=1e-5)
    with pytest.raises(ValueError):
        loss(z1, z2[:2])
    with pytest.raises(ValueError):
        NTXentLoss(0.0)


def test_scale_invariance_of_cosine():
    z1, z2 = torch.randn(4, 6), torch.randn(4, 6)
    assert paper_loss(0.5)(5 * z1, 0.1 * z2).item() == pytest.approx(paper_loss(0.5)(z1, z2).item(), rel=1e-5)
    assert F.normalize(z1).norm(dim=1).allclose(torch.ones(4))


@pytest.mark.parametrize("n,block", [(5, 1), (5, 3), (8, 4), (8, 16), (13, 7)])
def test_blockwise_equals_dense_loss_and_gradients(n, block):
    """The blockwise path (any block size, dividing 2N or not) against the dense one: same loss and
    same gradients with respect to both views, float32."""
    g = torch.Generator().manual_seed(n + block)
    z1, z2 = torch.randn(n, 12, generator=g), torch.randn(n, 12, generator=g)
    results = []
    for block_rows in (2 * n, block):  # 2N rows: the dense path
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss = paper_loss(0.3, block_rows=block_rows)(a, b)
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad))
    for dense, blockwise in zip(results[0], results[1]):
        torch.testing.assert_close(blockwise, dense, rtol=1e-5, atol=1e-6)
    assert results[1][0].item() == pytest.approx(reference_loss(z1.numpy(), z2.numpy(), 0.3), rel=1e-5)


def test_blockwise_gradient_passes_gradcheck():
    from models.loss import blockwise_nt_xent

    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(10, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: blockwise_nt_xent(x, 0.5, 3), (z,))


def test_blockwise_keeps_no_square_matrix_for_backward():
    """What the loss keeps alive between forward and backward (every tensor autograd saves, seen
    through saved_tensors_hooks): the dense path keeps (2N)^2 similarities, the blockwise path only
    the embeddings and one log-sum-exp per anchor, O(N d); its blocks are transient."""
    n, d = 256, 16

    def largest_saved(block_rows: int) -> int:
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        z1, z2 = torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = paper_loss(0.5, block_rows=block_rows)(z1, z2)
        loss.backward()
        return max(sizes)

    assert largest_saved(2 * n) >= (2 * n) ** 2   # dense
    assert largest_saved(64) <= 2 * n * d         # blockwise


def official_objective(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """A NumPy transcription of the official ``objective.add_contrastive_loss`` (one replica, hidden_norm):
    cross-entropy of view a against [b, a] and of view b against [a, b], self-similarities masked with a
    large number, ``mean(loss_a + loss_b)`` over the N pairs."""
    large = 1e9
    a = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    b = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    n = len(a)
    mask = np.eye(n) * large

    def xent(logits: np.ndarray) -> np.ndarray:  # labels: column i of the first block
        logits = logits - logits.max(axis=1, keepdims=True)
        return -(logits[np.arange(n), np.arange(n)] - np.log(np.exp(logits).sum(axis=1)))

    loss_a = xent(np.concatenate([a @ b.T / t, a @ a.T / t - mask], axis=1))
    loss_b = xent(np.concatenate([b @ a.T / t, b @ b.T / t - mask], axis=1))
    return float(np.mean(loss_a + loss_b))


@pytest.mark.parametrize("n,block_rows", [(1, None), (6, None), (6, 5)])
def test_default_scale_is_the_official_objective(n, block_rows):
    """The default equals the official code's loss_a + loss_b (dense and blockwise), twice the paper's mean."""
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 8, generator=g, dtype=torch.float64), torch.randn(n, 8, generator=g, dtype=torch.float64)
    got = NTXentLoss(0.5, block_rows=block_rows)(z1, z2).item()
    assert got == pytest.approx(official_objective(z1.numpy(), z2.numpy(), 0.5), rel=1e-5)
    assert got == pytest.approx(2 * paper_loss(0.5)(z1, z2).item(), rel=1e-6)
    with pytest.raises(ValueError, match="scale"):
        NTXentLoss(0.5, scale="mean")
