"""Neural Cleanse unlearning: fine-tune on fit samples of which a share is stamped with the
recovered (or known) trigger while keeping their true labels, so the trigger stops meaning 'target'."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..registry import DEFENSES
from .base import DefenseOutcome, batches, stamp_fraction


@dataclass(frozen=True)
class NCUnlearnParams:
    steps: int = 150
    batch_size: int = 64
    lr: float = 1e-3
    stamp_fraction: float = 0.3

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 < self.stamp_fraction <= 1:
            raise ValueError("nc-unlearn: steps, batch_size, lr must be positive and stamp_fraction in (0, 1]")


def finetune_module(handle, fit, triggers, steps, batch_size, lr, fraction, seed, progress=None, label="fine-tune"):
    """Train a copy of the handle's module in eval mode (BN statistics frozen: few samples)."""
    module = handle.copy_for_editing()
    for p in module.parameters():
        p.requires_grad_(True)
    edited = handle.derived(module)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for step, idx in enumerate(batches(len(fit), min(batch_size, len(fit)), steps, gen)):
        x = stamp_fraction(fit.x[idx], fit.y[idx], triggers, fraction, gen)
        loss = F.cross_entropy(edited.forward(x), fit.y[idx].to(edited.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step + 1) % 50 == 0:
            progress(f"{label}: step {step + 1}/{steps}, loss {loss.item():.3f}")
    module.eval()
    return edited


@DEFENSES.register(
    "nc-unlearn",
    "Neural Cleanse unlearning: fine-tune on samples stamped with the recovered trigger, true labels kept",
    params=asdict(NCUnlearnParams()), params_type=NCUnlearnParams,
    quick={"steps": 3}, invalid={"stamp_fraction": 2.0},
)
def nc_unlearn(handle, fit, triggers, params: dict, seed: int, progress=None) -> DefenseOutcome:
    p = NCUnlearnParams(**params)
    start = time.perf_counter()
    edited = finetune_module(handle, fit, triggers, p.steps, p.batch_size, p.lr, p.stamp_fraction, seed, progress, "nc-unlearn")
    return DefenseOutcome(edited, "nc-unlearn", time.perf_counter() - start, len(fit), {"params": asdict(p)})
