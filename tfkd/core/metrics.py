"""Evaluation metrics. Accuracies are in percent, like the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * (logits.argmax(dim=1) == labels).float().mean().item()


def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the true class (cross-entropy), in nats."""
    return F.cross_entropy(logits.float(), labels).item()


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017) with equal-width confidence bins, in percent.

    ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|.
    """
    probs = F.softmax(logits.float(), dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    bins = torch.clamp((confidence * n_bins).long(), min=0, max=n_bins - 1)
    conf_sum = torch.zeros(n_bins, device=logits.device).index_add_(0, bins, confidence)
    acc_sum = torch.zeros(n_bins, device=logits.device).index_add_(0, bins, correct)
    return 100.0 * ((acc_sum - conf_sum).abs().sum() / max(len(labels), 1)).item()


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int = 5) -> float:
    """Top-k accuracy in percent: the true class among the k largest logits (k capped at C)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return 100.0 * (top == labels[:, None]).any(dim=1).float().mean().item()
