"""Weighted k-nearest-neighbour classifier on L2-normalised features (Wu et al. 2018, InstDisc),
the usual monitor of self-supervised pretraining: k=200, temperature 0.1, cosine similarity."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from data.augment import eval_transform
from data.datasets import HELD_OUT, input_info, load_split
from data.views import Transformed
from evaluation.features import extract_features


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


@torch.no_grad()
def knn_loo_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int = 20, temperature: float = 0.1,
                     chunk_size: int = 1024) -> float:
    """Top-1 accuracy in percent of :func:`knn_predict`'s vote for each sample by its k most similar others
    (leave-one-out): the kNN score of one labelled set, e.g. embed.py's embeddings of a test split."""
    x, y = F.normalize(features.float(), dim=1), labels.long().to(features.device)  # (N, D), (N,)
    k, correct = min(k, x.shape[0] - 1), 0
    for start in range(0, x.shape[0], chunk_size):
        sim = x[start:start + chunk_size] @ x.t()  # (m, N)
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, start + rows] = -float("inf")  # not its own neighbour
        top, idx = sim.topk(k, dim=1)  # (m, k)
        votes = torch.zeros(sim.shape[0], int(y.max()) + 1, device=sim.device)
        votes.scatter_add_(1, y[idx], (top / temperature).exp())  # (m, C)
        correct += int((votes.argmax(dim=1) == y[start:start + chunk_size]).sum())
    return 100.0 * correct / x.shape[0]


class KNNMonitor:
    """kNN top-1 (%) of a dataset's test split against its training split, on a backbone's features of
    un-augmented images, at ``precision`` (utils.precision.Precision): the monitor of pretraining."""

    def __init__(self, dataset: str, paths_file: str, image_size: int, native_size: int | None,
                 device: torch.device, precision, num_workers: int = 0, k: int = 200,
                 augment: str = "torchvision", test_fraction: float = HELD_OUT) -> None:
        info = input_info(dataset, augment)  # the pretraining's input normalisation
        self.transform = eval_transform(image_size, info.mean, info.std, native_size)
        self.train_set, self.test_set = (load_split(dataset, split, paths_file, test_fraction)
                                         for split in ("train", "test"))
        self.device, self.precision, self.num_workers, self.k = device, precision, num_workers, k

    def features(self, backbone: torch.nn.Module, images, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        return extract_features(backbone, Transformed(images, self.transform), self.device, batch_size=512,
                                num_workers=self.num_workers, precision=self.precision, desc=desc)

    def __call__(self, backbone: torch.nn.Module) -> float:
        x_train, y_train = self.features(backbone, self.train_set, "kNN: train features")
        x_test, y_test = self.features(backbone, self.test_set, "kNN: test features")
        return knn_accuracy(x_train.to(self.device), y_train, x_test, y_test, len(self.train_set.classes), k=self.k)
