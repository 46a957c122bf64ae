"""Weighted k-nearest-neighbour classifier on L2-normalised features (Wu et al. 2018, InstDisc),
the usual monitor of self-supervised pretraining: k=200, temperature 0.1, cosine similarity."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> torch.Tensor:
    """Predicted class of each test feature: each of its k most similar training features votes for its
    class with weight exp(cosine similarity / temperature). Returns (M,) int64."""
    train = F.normalize(train_features.float(), dim=1)  # (N, D)
    train_labels = train_labels.to(train.device)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start:start + chunk_size].float().to(train.device), dim=1)  # (m, D)
        sim, idx = (test @ train.t()).topk(k, dim=1)  # (m, k)
        weights = (sim / temperature).exp()
        votes = torch.zeros(test.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, train_labels[idx], weights)  # (m, C)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy in percent of :func:`knn_predict`."""
    pred = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return 100.0 * (pred.cpu() == test_labels.cpu()).float().mean().item()
