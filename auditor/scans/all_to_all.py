"""All-to-all search: the smallest single trigger that moves most clean images away from their own
class, to MANY different classes.

A per-class search (Neural Cleanse, the generative patches, the warp and blend searches) asks "how
easily can images be sent to class t?". An all-to-all backdoor (one trigger; each source class s sent
to its own target, e.g. s -> s + 1) answers that question like a clean model: no single class is
unusually easy to reach, so every per-class scan passes it (docs/benchmarks.md, "Scans over seeds").
What it does have is one small trigger that flips almost every image, each to its own destination.
Here one mask m and pattern p (as Neural Cleanse's, x' = (1 - m) x + m p) are optimised for

    mean(-log(1 - p_s(x'))) - spread * H(mean softmax(x')) / log K + lambda * |m|_1

where s is the model's own answer on the clean image (no labels are needed) and H the entropy of the
batch's mean prediction, which keeps the search off the cheap solution of a clean model: one sink
class that every image is pushed into (which the per-class scans already measure). lambda follows
Neural Cleanse's adaptive schedule; a step succeeds when at least `flip_rate` of the batch leaves its
class and no destination takes more than `max_sink_share` of those flips. The score is the smallest
successful mask's L1 over the median of the per-class Neural Cleanse masks on the same model: how
cheap "every image somewhere else" is against "every image to one class".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from ..triggers import Trigger
from .neural_cleanse import NeuralCleanseParams


@dataclass
class AllToAllSearch:
    mask: torch.Tensor  # 1 x H x W: the smallest successful mask (or the last one if none succeeded)
    pattern: torch.Tensor  # C x H x W
    norm: float  # its L1; inf when no step succeeded
    reference_norm: float  # the median per-class Neural Cleanse mask L1 of the same model
    flip_rate: float  # held-out: share of images whose answer leaves their clean answer
    sink_share: float  # held-out: share of those flips that go to the most frequent destination
    destinations: int  # held-out: how many classes receive at least 5% of the flips
    mapping: list[int | None]  # per source class (clean answer): the most frequent destination; None: none flipped
    steps: int
    seconds: float

    def ratio(self) -> float:
        return self.norm / self.reference_norm if self.reference_norm > 0 else math.inf

    def hit(self, max_ratio: float, min_flip: float) -> bool:
        """An all-to-all trigger: a mask at most `max_ratio` of the per-class median that flips at least
        `min_flip` of held-out images, spread over several destinations."""
        return self.ratio() <= max_ratio and self.flip_rate >= min_flip and self.destinations >= 3

    @cached_property
    def trigger(self) -> Trigger:
        """One object for every class it flags, so the defense unlearns it once."""
        mapping = tuple(-1 if d is None else d for d in self.mapping)
        return Trigger(self.mask.clone(), self.pattern.clone(), None, "recovered", kind="all-to-all", mapping=mapping)

    def summary(self) -> dict:
        return {"norm": None if math.isinf(self.norm) else round(self.norm, 3), "reference_norm": round(self.reference_norm, 3),
                "ratio": None if math.isinf(r := self.ratio()) else round(r, 3), "flip_rate": round(self.flip_rate, 4),
                "sink_share": round(self.sink_share, 4), "destinations": self.destinations, "mapping": self.mapping,
                "steps": self.steps, "seconds": round(self.seconds, 2)}


def all_to_all_search(handle, fit_x, eval_x, *, reference_norm: float, steps: int, batch_size: int, lr: float,
                      schedule: NeuralCleanseParams, spread: float, flip_rate: float, max_sink_share: float,
                      eval_samples: int, seed: int, init_mask: torch.Tensor | None = None) -> AllToAllSearch:
    """The model's parameters must already be frozen (the caller's scan does that). `schedule` supplies Neural
    Cleanse's lambda schedule and early stopping (init_cost, cost_up/down, patience, early_stop_*). `init_mask` (1 x H x W
    in [0, 1]) starts the mask there instead of near zero everywhere: the generative scan passes the mean
    of the per-class Neural Cleanse masks, where an all-to-all trigger shows in every class's mask (each
    class is some other class's destination). From a near-empty mask, one seed of three on the CIFAR-style
    CNN settled on a mask 2.6x the trigger's (docs/benchmarks.md, "All-to-all search")."""
    start = time.perf_counter()
    device = handle.device
    c, h, w = handle.input_shape
    k = handle.num_classes
    gen = torch.Generator().manual_seed(seed + 7)
    mask_raw = torch.randn(1, h, w, generator=gen) * 0.1 - 2.0
    if init_mask is not None:
        mask_raw = mask_raw + torch.atanh(init_mask.clamp(0.01, 0.6) * 2 - 1) + 2.0
    mask_raw = mask_raw.to(device).requires_grad_(True)
    pattern_raw = (torch.randn(c, h, w, generator=gen) * 0.1).to(device).requires_grad_(True)
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=lr, betas=(0.5, 0.9))
    x_fit = fit_x.to(device)
    with torch.no_grad():
        own = handle.logits(x_fit).argmax(1).to(device)
    cost, up, down, since_best, done = schedule.init_cost, 0, 0, 0, 0
    best_norm, best_mask, best_pattern = math.inf, None, None
    for step in range(steps):
        pick = torch.randint(len(x_fit), (batch_size,), generator=gen).to(device)
        mask = (torch.tanh(mask_raw) + 1) / 2
        pattern = (torch.tanh(pattern_raw) + 1) / 2
        probs = F.softmax(handle.forward((1 - mask) * x_fit[pick] + mask * pattern), 1)
        stay = probs.gather(1, own[pick][:, None])[:, 0]
        marginal = probs.mean(0)
        entropy = -(marginal * marginal.clamp_min(1e-12).log()).sum() / math.log(k)
        l1 = mask.sum()
        loss = -torch.log1p(-stay.clamp(max=1 - 1e-6)).mean() - spread * entropy + cost * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        with torch.no_grad():
            answer = probs.argmax(1)
            flipped = answer != own[pick]
            share = answer[flipped].bincount(minlength=k).max().item() / max(1, int(flipped.sum()))
            success = flipped.float().mean().item() >= flip_rate and share <= max_sink_share
            norm = l1.item()
            if success and norm < best_norm:
                since_best = 0 if norm < best_norm * (1 - schedule.early_stop_min_delta) else since_best + 1
                best_norm, best_mask, best_pattern = norm, mask.detach().clone(), pattern.detach().clone()
            else:
                since_best += 1
        # Neural Cleanse's schedule: raise lambda after `patience` successes in a row, lower it after as many failures
        up, down = (up + 1, 0) if success else (0, down + 1)
        if up >= schedule.patience:
            cost, up = (cost * schedule.cost_up if cost > 0 else schedule.init_cost), 0
        elif down >= schedule.patience:
            cost, down = cost / schedule.cost_down, 0
        if best_mask is not None and since_best >= schedule.early_stop_patience:
            break
    if best_mask is None:
        best_mask = ((torch.tanh(mask_raw) + 1) / 2).detach()
        best_pattern = ((torch.tanh(pattern_raw) + 1) / 2).detach()
    mask, pattern = best_mask.cpu(), best_pattern.cpu()
    pick = torch.randperm(len(eval_x), generator=gen)[:eval_samples]
    ex = eval_x[pick]
    with torch.no_grad():
        before = handle.predict(ex, backend="torch")
        after = handle.predict(Trigger(mask, pattern, None, "recovered").apply(ex), backend="torch")
    flipped = after != before
    counts = after[flipped].bincount(minlength=k)
    n_flipped = int(flipped.sum())
    mapping: list[int | None] = []
    for s in range(k):
        moved = after[flipped & (before == s)]
        mapping.append(int(moved.bincount(minlength=k).argmax()) if len(moved) else None)
    return AllToAllSearch(mask, pattern, best_norm, reference_norm, n_flipped / max(1, len(ex)),
                          counts.max().item() / max(1, n_flipped), int((counts >= 0.05 * max(1, n_flipped)).sum()) if n_flipped else 0,
                          mapping, done, time.perf_counter() - start)
