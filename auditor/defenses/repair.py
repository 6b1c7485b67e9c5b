"""Repair: bring back the classes an unlearning defense hurt, the suspected target classes first.

Unlearning a backdoor can unlearn its target class along with it, and fine-tuning on a handful of
samples costs accuracy everywhere. Repair fine-tunes the edited model on the fit samples,
distilling the ORIGINAL model's outputs on clean inputs (its clean behaviour is what we want back;
the backdoor is dormant without the trigger) while stamped copies keep their true labels so the
backdoor does not return. Which classes fell is judged on a held-out share of the fit samples
(accuracy on samples the defense trained on says nothing); fallen classes are weighted up, target
classes most, and repair stops once every class is back within `tolerance` (after `min_steps`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data import ImageSet
from .base import batches, per_class_fit_accuracy, stamp_fraction


@dataclass(frozen=True)
class RepairParams:
    min_steps: int = 60
    max_steps: int = 300
    batch_size: int = 64
    lr: float = 5e-4
    temperature: float = 2.0
    stamp_fraction: float = 0.5
    unlearn_weight: float = 3.0
    holdout_fraction: float = 0.2
    tolerance: float = 0.02
    check_every: int = 20
    fallen_weight: float = 3.0
    target_weight: float = 5.0

    def __post_init__(self):
        if not 0 <= self.min_steps <= self.max_steps or self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("repair: need 0 <= min_steps <= max_steps and positive batch_size, lr, temperature")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError("repair: holdout_fraction must be in (0, 1)")


def holdout_split(fit: ImageSet, fraction: float, num_classes: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Stratified: `fraction` of each class (at least one sample where the class has two) held out."""
    gen = torch.Generator().manual_seed(seed + 7)
    train_idx, check_idx = [], []
    for c in range(num_classes):
        idx = (fit.y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        check_idx.append(idx[:n])
        train_idx.append(idx[n:])
    return fit.subset(torch.cat(train_idx)), fit.subset(torch.cat(check_idx))


def _fallen(reference, now, tolerance):
    return [b is not None and n is not None and n < b - tolerance for b, n in zip(reference, now)]


def repair(original, edited, fit, triggers, targets, params: RepairParams = RepairParams(), seed: int = 0, progress=None):
    """Returns (handle, stats). `edited` is not modified; a repaired copy is returned."""
    start = time.perf_counter()
    train, check = holdout_split(fit, params.holdout_fraction, original.num_classes, seed)
    reference = per_class_fit_accuracy(original, check)
    fallen = _fallen(reference, per_class_fit_accuracy(edited, check), params.tolerance)
    stats = {"params": asdict(params), "fallen_classes": [c for c, f in enumerate(fallen) if f],
             "train_samples": len(train), "check_samples": len(check)}

    module = edited.copy_for_editing()
    for p in module.parameters():
        p.requires_grad_(True)
    repaired = edited.derived(module)
    opt = torch.optim.Adam(module.parameters(), lr=params.lr)
    gen = torch.Generator().manual_seed(seed)
    device = repaired.device
    t = params.temperature
    steps = 0
    for steps, idx in enumerate(batches(len(train), min(params.batch_size, len(train)), params.max_steps, gen), start=1):
        weights = torch.ones(original.num_classes)
        weights[[c for c, f in enumerate(fallen) if f]] = params.fallen_weight
        weights[[c for c in targets if fallen[c]]] = params.target_weight
        x, y = train.x[idx], train.y[idx]
        with torch.no_grad():
            teacher = F.log_softmax(original.forward(x) / t, dim=1)
        student = F.log_softmax(repaired.forward(x) / t, dim=1)
        kd = F.kl_div(student, teacher, log_target=True, reduction="none").sum(1) * t * t
        w = weights[y].to(device)
        loss = (kd * w).sum() / w.sum()
        if triggers:
            stamped = stamp_fraction(x, y, triggers, 1.0, gen)[: max(1, int(len(x) * params.stamp_fraction))]
            loss = loss + params.unlearn_weight * F.cross_entropy(repaired.forward(stamped), y[: len(stamped)].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if steps % params.check_every == 0:
            module.eval()
            fallen = _fallen(reference, per_class_fit_accuracy(repaired, check), params.tolerance)
            if progress:
                progress(f"repair: step {steps}/{params.max_steps}, {sum(fallen)} classes below their original accuracy")
            if steps >= params.min_steps and not any(fallen):
                break
    module.eval()
    stats.update(steps=steps, still_fallen=[c for c, f in enumerate(fallen) if f], seconds=time.perf_counter() - start)
    return repaired, stats
