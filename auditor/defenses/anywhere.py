"""Recovered patch triggers that work ANYWHERE in the image, and their shifted copies.

A scan recovers a patch trigger at one place (Neural Cleanse's mask, the generator's window). A
backdoor planted at random places in each poisoned image answers its pattern wherever it is, and
unlearning the recovered copy at that one place left most of it working (`checker_rand_t2`, a 4x4
checkerboard planted anywhere: true ASR 98.6% -> 66.9% after repair; docs/benchmarks.md). So before
unlearning, each recovered patch is moved to other places on the clean fit samples; where the moved
copies still send most of them to the target, the trigger works anywhere: the kind of recovered patch
that moves best is unlearned where found and at other places. A patch that only works where it was
planted (the zoo's BadNets models) fails this test, and the defense sees the same triggers as before.
"""

from __future__ import annotations

import torch

from ..metrics import attack_success_rate
from ..triggers import Trigger

SHIFTS = 8  # moved copies tested per trigger, and added per trigger that works anywhere
TESTED = 4  # triggers tested per (target, kind): a generator's sampled patches are alike
ANYWHERE_ASR = 0.5  # the moved copies' mean ASR on the fit samples from which a trigger counts as working anywhere
MAX_BOX_SHARE = 0.3  # only patches: a mask whose bounding box covers more of the image is a blend or a frame


def _box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    rows = (mask[0] > 0.05).any(1).nonzero().flatten()
    cols = (mask[0] > 0.05).any(0).nonzero().flatten()
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _movable(t: Trigger) -> bool:
    return (t.source == "recovered" and t.target is not None and t.mask is not None and t.grid is None
            and t.additive is None and t.kind in ("patch", "generative"))


def moved(t: Trigger, gen: torch.Generator, count: int) -> list[Trigger]:
    """`count` copies of a patch trigger with its mask's bounding box moved to random places inside the image."""
    _, h, w = t.mask.shape
    box = _box(t.mask)
    if box is None:
        return []
    top, bottom, left, right = box
    bh, bw = bottom - top, right - left
    if bh * bw > MAX_BOX_SHARE * h * w:
        return []
    out = []
    for _ in range(count):
        dy = int(torch.randint(0, h - bh + 1, (1,), generator=gen)) - top
        dx = int(torch.randint(0, w - bw + 1, (1,), generator=gen)) - left
        out.append(Trigger(t.mask.roll((dy, dx), (1, 2)), t.pattern.roll((dy, dx), (1, 2)), t.target, t.source, kind=t.kind))
    return out


def with_moved_copies(handle, fit, triggers: list, seed: int, progress=None) -> tuple[list, dict]:
    """The triggers to unlearn, and what was measured per target: {"moved_asr" per kind, "added", "kind"}.

    A target whose recovered patches of some kind (the generator's samples, NC's mask) still send at
    least ANYWHERE_ASR of the fit samples not of the target there when moved works anywhere. Its
    patches of the kind whose moved copies did best stand in for it, with SHIFTS moved copies of each;
    its other patch kind is dropped, since the defense would otherwise pick one by a rule made for
    triggers that stay where they were planted (activation-edit: NC's mask, 43% when moved against
    the generator's 97% on `checker_rand_t2`). Other triggers and targets are returned as given."""
    gen = torch.Generator().manual_seed(seed + 29)
    groups: dict[int, dict[str, list[Trigger]]] = {}
    for t in triggers:
        if _movable(t):
            groups.setdefault(t.target, {}).setdefault(t.kind, []).append(t)
    dropped: set[int] = set()  # id() of the triggers replaced by a better-moving kind
    added, report = [], {}
    for target, kinds in groups.items():
        if not (fit.y != target).any():
            continue
        rates = {}
        for kind, group in kinds.items():
            tests = [m for t in group[:TESTED] for m in moved(t, gen, SHIFTS)]
            if tests:
                rates[kind] = sum(attack_success_rate(handle.predict(m.apply(fit.x), backend="torch"), fit.y, target)
                                  for m in tests) / len(tests)
        if not rates:
            continue
        best = max(rates, key=rates.get)
        works = rates[best] >= ANYWHERE_ASR
        copies = []
        if works:
            copies = [m for t in kinds[best] for m in moved(t, gen, SHIFTS)]
            dropped |= {id(t) for kind, group in kinds.items() if kind != best for t in group}
        added += copies
        report[str(target)] = {"moved_asr": {k: round(v, 4) for k, v in rates.items()}, "added": len(copies)}
        if works:
            report[str(target)]["kind"] = best
        if progress:
            said = ", ".join(f"{k} {v:.0%}" for k, v in rates.items())
            progress(f"class {target}: its recovered patches moved elsewhere still send fit samples there ({said})"
                     + (f": works anywhere, its {best} patches unlearned here and at {len(copies)} other places"
                        if works else ": only where found"))
    return [t for t in triggers if id(t) not in dropped] + added, report
