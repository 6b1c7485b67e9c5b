"""C-ACC, ASR and per-class accuracy from predictions: pure functions, no model calls."""

from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    return (pred == labels).float().mean().item()


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    out: list[float | None] = []
    for c in range(num_classes):
        sel = labels == c
        out.append((pred[sel] == c).float().mean().item() if sel.any() else None)
    return out


def attack_success_rate(pred_triggered: torch.Tensor, labels: torch.Tensor, target: int | torch.Tensor) -> float:
    """Share of samples whose true label is not the target that the triggered input sends to the target.

    `target` is one class (all-to-one) or a per-sample tensor of targets (all-to-all)."""
    target = torch.as_tensor(target, dtype=labels.dtype).expand_as(labels)
    sel = labels != target
    if not sel.any():
        return float("nan")
    return (pred_triggered[sel] == target[sel]).float().mean().item()


def trigger_flip_rate(pred_clean: torch.Tensor, pred_triggered: torch.Tensor, labels: torch.Tensor,
                      target: int | torch.Tensor) -> float:
    """Share of samples whose true label is not the target that the trigger moves to the target: sent
    there with the trigger, elsewhere without it. ASR minus this is the model's own confusion into the
    target on the same images (`attack_success_rate` of the clean predictions, at most)."""
    target = torch.as_tensor(target, dtype=labels.dtype).expand_as(labels)
    sel = labels != target
    if not sel.any():
        return float("nan")
    return ((pred_triggered[sel] == target[sel]) & (pred_clean[sel] != target[sel])).float().mean().item()
