"""Class scheduling for many-class heads: spend the trigger search where a backdoor can be.

Every per-class search (the Neural Cleanse pass, the warp, blend and maximum-margin searches) costs the
same for every class, so a 1,000-class head costs 100 times a 10-class one. Most of that is spent
confirming that ordinary classes are ordinary. K-Arm (Shen et al., ICML 2021) treats the labels as
arms of a bandit and spends optimisation on the promising ones; this module does the same in two
rounds, which keeps the numbers reproducible and the statistics honest:

1. **Screening.** Every class gets a short Neural Cleanse run (`screen_steps` steps on
   `screen_batch_size` images, batched over chunks of classes). A backdoor target is reached by a small
   mask within a few steps; an ordinary class is not. K-Arm's pre-screen is added beside it: the
   classes that most often hold the second-highest logit on clean images.
2. **Full search** on the `shortlist` classes with the smallest screening masks, the `logit_shortlist`
   classes of the pre-screen, and `reference` classes drawn at random (seeded) from the rest. The
   random ones are the baseline: a class's anomaly index (Neural Cleanse) and blend ratio are computed
   against the median and spread of the reference classes only, an unbiased sample of what an ordinary
   class of this model needs (the shortlist is biased towards easy classes and would hide an outlier).

A class left out after screening keeps its screening mask but gets no anomaly index (`null` in the JSON):
a class the screen did not bring to success has a small, unsuccessful mask there, not comparable with a
full search's. So only classes searched in full are ranked by index, flagged or suspected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from .neural_cleanse import NeuralCleanseParams, NeuralCleanseResult, anomaly_index, neural_cleanse, recovered_trigger_asr


@dataclass(frozen=True)
class ScheduleParams:
    above: int = 32  # schedule when the head has more classes than this (0: never)
    screen_steps: int = 30
    screen_batch_size: int = 4  # 8 ranked the 1,000-class target 1st, not 4th, but took 5.97x the 10-class scan (docs/benchmarks.md)
    screen_chunk_images: int = 512  # images per forward pass while screening (classes x batch): bounds memory
    shortlist: int = 8
    logit_shortlist: int = 4
    reference: int = 16

    def __post_init__(self):
        if self.above < 0 or self.screen_steps < 1 or self.screen_batch_size < 1 or self.screen_chunk_images < 1 \
                or self.shortlist < 1 or self.logit_shortlist < 0 or self.reference < 3:
            raise ValueError("schedule: above >= 0, screen_steps, screen_batch_size, screen_chunk_images, shortlist >= 1, "
                             "logit_shortlist >= 0, reference >= 3")

    def applies(self, num_classes: int) -> bool:
        return self.above > 0 and num_classes > self.above

    def full_classes(self, num_classes: int) -> int:
        """How many classes run the full search (at most)."""
        return min(num_classes, self.shortlist + self.logit_shortlist + self.reference)

    def screen_passes(self, num_classes: int) -> int:
        return num_classes * self.screen_steps * self.screen_batch_size


@dataclass(frozen=True)
class ClassSchedule:
    num_classes: int
    shortlist: list[int]  # smallest screening masks first
    logit_shortlist: list[int]  # most often runner-up on clean images first (not already in the shortlist)
    reference: list[int]  # drawn at random from the rest
    screen_norms: list[float]
    screen_converged: list[bool]  # the screen reached the success rate for the class
    runner_up: list[int]  # per class: how many clean images had it second
    screen_seconds: float
    params: ScheduleParams
    screen_order: list[int]  # every class, the most promising first: screened to success, then by the screen's mask L1
    full: list[int]  # the classes that run the full search, in class order

    def candidates(self, by_index: list[int], count: int) -> list[int]:
        """The generative scan's patch candidates: alternately the screen's order (the class reached fastest,
        K-Arm's criterion) and the full pass's anomaly index, `count` distinct classes. On a 100-class head
        the planted target was first in the screen but sixth by index: fine-grained classes all have small masks."""
        out: list[int] = []
        for pair in zip(self.screen_order, by_index + [None] * self.num_classes):
            for c in pair:
                if c is not None and c not in out and len(out) < count:
                    out.append(c)
            if len(out) >= count:
                break
        return out

    def summary(self) -> dict:
        return {"classes": self.num_classes, "full_search": self.full, "shortlist": self.shortlist,
                "logit_shortlist": self.logit_shortlist, "reference": self.reference,
                "screen_steps": self.params.screen_steps, "screen_batch_size": self.params.screen_batch_size,
                "screen_seconds": round(self.screen_seconds, 2),
                "screen_norms": [round(n, 2) for n in self.screen_norms], "screen_converged": self.screen_converged,
                "runner_up": self.runner_up}


def runner_up_counts(handle, x: torch.Tensor) -> list[int]:
    """Per class: on how many of these images it holds the second-highest logit (K-Arm's pre-screen)."""
    counts = torch.zeros(handle.num_classes, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(x), 256):
            second = handle.logits(x[i:i + 256]).topk(2, dim=1).indices[:, 1].cpu()
            counts += second.bincount(minlength=handle.num_classes)
    return counts.tolist()


@dataclass
class Screened:
    """The screen's outcome for every class: its best mask and pattern after `screen_steps` steps."""
    masks: torch.Tensor
    patterns: torch.Tensor
    norms: list[float]
    converged: list[bool]
    steps: list[int]


def screen(handle, fit_x, nc_params: NeuralCleanseParams, params: ScheduleParams, progress=None) -> Screened:
    """A short Neural Cleanse run for every class, in chunks of classes."""
    k = handle.num_classes
    short = replace(nc_params, max_steps=params.screen_steps, batch_size=params.screen_batch_size)
    per_chunk = max(1, params.screen_chunk_images // params.screen_batch_size)
    parts = []
    for begin in range(0, k, per_chunk):
        chunk = list(range(begin, min(k, begin + per_chunk)))
        parts.append(neural_cleanse(handle, fit_x, params=short, classes=chunk))
        if progress:
            progress(f"class scheduling: screened {chunk[-1] + 1}/{k} classes ({params.screen_steps} steps each)")
    return Screened(masks=torch.cat([p.masks for p in parts]), patterns=torch.cat([p.patterns for p in parts]),
                    norms=[n for p in parts for n in p.norms], converged=[v for p in parts for v in p.converged],
                    steps=[s for p in parts for s in p.steps])


def choose(num_classes: int, screened: Screened, runner_up: list[int], params: ScheduleParams, seed: int,
           seconds: float) -> ClassSchedule:
    order = sorted(range(num_classes), key=lambda c: (not screened.converged[c], screened.norms[c], c))
    shortlist = order[: params.shortlist]
    by_logit = sorted((c for c in range(num_classes) if c not in shortlist and runner_up[c] > 0), key=lambda c: (-runner_up[c], c))
    logit_shortlist = by_logit[: params.logit_shortlist]
    rest = [c for c in range(num_classes) if c not in shortlist and c not in logit_shortlist]
    pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed + 11))[: params.reference]
    reference = sorted(rest[i] for i in pick.tolist())
    return ClassSchedule(num_classes, shortlist, logit_shortlist, reference, list(screened.norms), list(screened.converged),
                         runner_up, seconds, params, screen_order=order,
                         full=sorted(set(shortlist) | set(logit_shortlist) | set(reference)))


def scheduled_neural_cleanse(handle, fit_x, eval_x, eval_y, nc_params: NeuralCleanseParams, params: ScheduleParams,
                             progress=None) -> tuple[NeuralCleanseResult, ClassSchedule]:
    """Screen every class, run the full Neural Cleanse pass on the scheduled ones, and merge: one result
    over every class whose anomaly index is measured against the reference classes."""
    start = time.perf_counter()
    k = handle.num_classes
    if progress:
        progress(f"class scheduling: {k} classes; a {params.screen_steps}-step screen of each, then the full search on "
                 f"at most {params.full_classes(k)}")
    screened = screen(handle, fit_x, nc_params, params, progress)
    schedule = choose(k, screened, runner_up_counts(handle, fit_x), params, nc_params.seed, time.perf_counter() - start)
    full = schedule.full
    if progress:
        progress(f"class scheduling: full search on classes {', '.join(map(str, full))}")
    deep = neural_cleanse(handle, fit_x, params=nc_params, classes=full, progress=progress)
    masks, patterns = screened.masks.clone(), screened.patterns.clone()
    norms, converged, steps = list(screened.norms), list(screened.converged), list(screened.steps)
    for i, c in enumerate(full):
        masks[c], patterns[c], norms[c] = deep.masks[i], deep.patterns[i], deep.norms[i]
        converged[c], steps[c] = deep.converged[i], screened.steps[c] + deep.steps[i]
    reference = schedule.reference
    # a screened-out class gets no index: its short screen's mask is small because it never succeeded, not
    # comparable with a full search's, so it is neither ranked among, flagged nor suspected with them
    index = anomaly_index(torch.tensor(norms), reference).tolist()
    in_full = set(full)
    result = NeuralCleanseResult(
        masks=masks, patterns=patterns, norms=norms, anomaly_index=[a if c in in_full else None for c, a in enumerate(index)],
        converged=converged, steps=steps, recovered_asr=[], seconds=0.0, params=nc_params, fit_samples=len(fit_x),
        reference=reference)
    if eval_x is not None and eval_y is not None:
        result.recovered_asr = recovered_trigger_asr(handle, result, eval_x, eval_y, nc_params.asr_eval_samples, nc_params.seed,
                                                     classes=set(full))
    result.seconds = time.perf_counter() - start
    return result, schedule
