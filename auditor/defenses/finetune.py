"""Plain fine-tuning on the clean fit samples: the baseline every unlearning defense must beat."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..registry import DEFENSES
from .base import DefenseOutcome
from .nc_unlearn import finetune_module


@dataclass(frozen=True)
class FinetuneParams:
    steps: int = 150
    batch_size: int = 64
    lr: float = 1e-3

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("finetune: steps, batch_size and lr must be positive")


@DEFENSES.register("finetune", "Baseline: fine-tune on the clean fit samples only (no trigger)", params=asdict(FinetuneParams()), params_type=FinetuneParams,
                  quick={"steps": 3}, invalid={"steps": 0})
def finetune(handle, fit, triggers, params: dict, seed: int, progress=None) -> DefenseOutcome:
    p = FinetuneParams(**params)
    start = time.perf_counter()
    edited = finetune_module(handle, fit, [], p.steps, p.batch_size, p.lr, 0.0, seed, progress, "finetune")
    return DefenseOutcome(edited, "finetune", time.perf_counter() - start, len(fit), {"params": asdict(p)})
