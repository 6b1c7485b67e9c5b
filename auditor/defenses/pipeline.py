"""The unlearning pipeline every caller shares: the defense on its share of the fit samples, then the
repair step (each with its own target-class recalibration), timed as one. Recovered patch triggers that
work anywhere in the image are unlearned at other places too (defenses/anywhere.py).

The session writes the result to files and audits them again; the benchmarks measure it in memory.
Both get the same models from the same seed because both call this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..data import ImageSet
from ..model import ModelHandle
from ..registry import DEFENSES
from .anywhere import with_moved_copies
from .base import DefenseOutcome
from .repair import RepairParams, defense_share, repair


@dataclass
class Unlearned:
    edited: ModelHandle  # after the defense alone
    final: ModelHandle  # after repair (the edited model when repair is off)
    outcome: DefenseOutcome
    repair_stats: dict | None
    seconds: float


def unlearn(handle: ModelHandle, fit: ImageSet, triggers: list, defense: str, defense_params: dict, repair_on: bool,
            repair_params: dict, seed: int, progress=None) -> Unlearned:
    entry = DEFENSES.get(defense)
    params = RepairParams(**repair_params)
    defense_fit = defense_share(fit, params, handle.num_classes, seed) if repair_on else fit
    if progress:
        progress(f"{entry.name}: {len(defense_fit)} of the {len(fit)} clean samples"
                 + (" (the rest checks the repair)" if repair_on else ""))
    start = time.perf_counter()
    triggers, anywhere = with_moved_copies(handle, fit, triggers, seed, progress)
    outcome = entry.factory(handle, defense_fit, triggers, defense_params, seed, progress)
    if anywhere:
        outcome.stats["anywhere"] = anywhere
    final, stats = outcome.handle, None
    if repair_on:
        targets = [t.target for t in triggers if t.target is not None]
        final, stats = repair(handle, outcome.handle, fit, triggers, targets, params, seed, progress, defense_stats=outcome.stats)
    return Unlearned(outcome.handle, final, outcome, stats, time.perf_counter() - start)
