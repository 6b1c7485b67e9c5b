"""Repair: bring back the classes an unlearning defense hurt, the suspected target classes first.

Unlearning a backdoor can unlearn its target class along with it, and fine-tuning on a handful of
samples costs accuracy everywhere. Repair fine-tunes the edited model on the fit samples,
distilling the ORIGINAL model's outputs on clean inputs (its clean behaviour is what we want back;
the backdoor is dormant without the trigger), and on stamped copies too, towards the original's
output for the same image unstamped, so the backdoor does not return. (Hard true labels on stamped
copies, our first version, made 2-7 other classes fall within ten steps on 10 samples per class.) Which classes fell is judged on a held-out share of the fit samples
(which the defense never saw either: see `defense_share`), by each class's mean probability of the
true label rather than its accuracy: with 10 samples per class the held-out share is 2 samples a
class, where accuracy moves in steps of 50 points and misses a class that is merely weakened.
Fallen classes are weighted up, target classes most, and repair stops once every class is back
within `tolerance` (after `min_steps`).

Measured on the zoo with 10 samples per class: fine-tuning every layer on so few samples costs
accuracy of its own and can let the backdoor back in, so by default (`scope="linear"`) only the
linear layers train, nothing runs when no class fell, and the checkpoint with the fewest fallen
classes (then the best held-out true-label probability) is kept, never a worse one than the input; training
stops after `patience` checks without a better checkpoint. With `recalibrate` (auto: the classes the
defense recalibrated), the margin the repair's training took from a target class on the held-out
share is given back to its output bias (`recalibrate.py`); a margin it gave is kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data import ImageSet
from .base import batches, stamp_fraction
from .recalibrate import SETTINGS, boundary_drop, classes_to_recalibrate_in_repair, give_back, with_views


@dataclass(frozen=True)
class RepairParams:
    min_steps: int = 60
    max_steps: int = 300
    batch_size: int = 64
    lr: float = 5e-4
    temperature: float = 2.0
    stamp_fraction: float = 0.5
    unlearn_weight: float = 1.0
    holdout_fraction: float = 0.2
    tolerance: float = 0.02
    check_every: int = 20
    fallen_weight: float = 3.0
    target_weight: float = 5.0
    scope: str = "linear"
    patience: int = 5
    recalibrate: bool | str = "auto"  # give target classes back the margin repair took (auto: those the defense did)

    def __post_init__(self):
        if self.scope not in ("linear", "last", "all"):
            raise ValueError("repair: scope must be 'linear', 'last' or 'all'")
        if not 0 <= self.min_steps <= self.max_steps or self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("repair: need 0 <= min_steps <= max_steps and positive batch_size, lr, temperature")
        if self.patience < 1:
            raise ValueError("repair: patience must be at least 1")
        if self.recalibrate not in SETTINGS:
            raise ValueError("repair: recalibrate must be auto, true or false")
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


def per_class_true_probability(handle, data: ImageSet) -> list[float | None]:
    """Per class: the mean softmax probability the model gives the true label."""
    true_p = handle.logits(data.x, backend="torch").softmax(1).gather(1, data.y[:, None]).squeeze(1)
    return [true_p[data.y == c].mean().item() if (data.y == c).any() else None for c in range(handle.num_classes)]


def defense_share(fit: ImageSet, params: RepairParams, num_classes: int, seed: int) -> ImageSet:
    """The fit samples a defense may train on when repair follows it: repair's held-out check share
    is kept from the defense too, or the check would judge the defense on samples it fitted."""
    return holdout_split(fit, params.holdout_fraction, num_classes, seed)[0]


def _fallen(reference, now, tolerance):
    return [b is not None and n is not None and n < b - tolerance for b, n in zip(reference, now)]


def trainable_params(module, scope: str):
    if scope == "all":
        return list(module.parameters())
    linear = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if scope == "last" and linear:
        linear = linear[-1:]
    params = [p for m in linear for p in m.parameters()]
    return params or list(module.parameters())


def _check_score(reference, now, tolerance):
    fallen = _fallen(reference, now, tolerance)
    accs = [a for a in now if a is not None]
    return fallen, (-sum(fallen), sum(accs) / max(len(accs), 1))


def repair(original, edited, fit, triggers, targets, params: RepairParams = RepairParams(), seed: int = 0, progress=None,
           defense_stats: dict | None = None):
    """Returns (handle, stats). `edited` is not modified; a repaired copy is returned. `defense_stats`
    (the defense's own) tell `recalibrate=auto` whether the defense recalibrated its edit."""
    start = time.perf_counter()
    train, check = holdout_split(fit, params.holdout_fraction, original.num_classes, seed)
    if len(check) == 0:
        note = "one clean sample per class leaves none to judge which classes fell: repair skipped"
        if progress:
            progress(f"repair: {note}")
        return edited, {"params": asdict(params), "fallen_classes": [], "train_samples": len(train), "check_samples": 0,
                        "steps": 0, "still_fallen": [], "kept_step": 0, "seconds": time.perf_counter() - start, "note": note}
    reference = per_class_true_probability(original, check)

    fallen, best_score = _check_score(reference, per_class_true_probability(edited, check), params.tolerance)
    stats = {"params": asdict(params), "fallen_classes": [c for c, f in enumerate(fallen) if f],
             "train_samples": len(train), "check_samples": len(check)}
    if not any(fallen):
        stats.update(steps=0, still_fallen=[], kept_step=0, seconds=time.perf_counter() - start,
                     note="no class fell below its original held-out true-label probability: nothing to repair")
        if progress:
            progress("repair: no class fell below its original held-out true-label probability, nothing to repair")
        return edited, stats

    module = edited.copy_for_editing()
    trainable = trainable_params(module, params.scope)
    for p in module.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    repaired = edited.derived(module)
    opt = torch.optim.Adam(trainable, lr=params.lr)
    gen = torch.Generator().manual_seed(seed)
    device = repaired.device
    t = params.temperature
    best_state, kept_step, best_fallen = None, 0, fallen
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
            n = max(1, int(len(x) * params.stamp_fraction))
            stamped = stamp_fraction(x[:n], y[:n], triggers, 1.0, gen)
            kd_stamped = F.kl_div(F.log_softmax(repaired.forward(stamped) / t, dim=1), teacher[:n], log_target=True,
                                  reduction="batchmean") * t * t
            loss = loss + params.unlearn_weight * kd_stamped
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if steps % params.check_every == 0:
            module.eval()
            fallen, score = _check_score(reference, per_class_true_probability(repaired, check), params.tolerance)
            if score > best_score:
                best_score, kept_step, best_fallen = score, steps, fallen
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            elif steps - kept_step >= params.patience * params.check_every:
                break  # no better checkpoint for `patience` checks
            if progress:
                progress(f"repair: step {steps}/{params.max_steps}, {sum(fallen)} classes below their original held-out true-label probability")
            if steps >= params.min_steps and not any(fallen):
                break
    module.eval()
    if best_state is None:
        stats.update(steps=steps, still_fallen=stats["fallen_classes"], kept_step=0, seconds=time.perf_counter() - start,
                     note="no repair step beat the edited model on the held-out samples: edited model kept")
        return edited, stats
    module.load_state_dict(best_state)
    for p in module.parameters():
        p.requires_grad_(False)
    if chosen := classes_to_recalibrate_in_repair(params.recalibrate, triggers, defense_stats):
        repaired, stats["recalibration"] = _recalibrate(edited, repaired, check, chosen, seed, progress)
    stats.update(steps=steps, kept_step=kept_step, still_fallen=[c for c, f in enumerate(best_fallen) if f],
                 seconds=time.perf_counter() - start)
    return repaired, stats


def _recalibrate(edited, repaired, check: ImageSet, targets: list[int], seed: int, progress=None):
    """Give each target class back the margin the repair's training took from it, measured on the
    held-out check share (and views of it), which the repair never trained on. A margin the repair
    GAVE a target class is kept: bringing fallen classes back is its job."""
    x = with_views(check.x, seed + 43)
    before, after = edited.logits(x, backend="torch"), repaired.logits(x, backend="torch")
    shifts = {c: d for c in targets if (d := boundary_drop(before, after, c)) is not None and d > 0}
    return give_back(repaired, shifts, "repair", "the held-out samples", "no target class lost margin on the held-out samples",
                     progress)
