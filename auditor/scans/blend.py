"""Blend-trigger search: for every class, how weak an image-wide blend can be and still send most
clean images to it.

Patch recovery (Neural Cleanse's L1-sparse mask, the generative scan's small windows) approximates
an image-wide trigger badly: on small CNNs trained with a 15% random-noise blend (Chen et al. 2017,
"Blended"), the target's best 8x8 patch reached 74% held-out ASR, under the 80% flag, and the
model passed the gate with 99.5% true ASR. Here the trigger space is the blend itself,
x' = (1 - alpha) x + alpha p, with one pattern p per class over the whole image and one scalar
alpha for all pixels (no sparsity prior). alpha climbs a fixed ladder; at each rung every class's
pattern is optimised for cross-entropy towards the class on the fit samples (one batched forward
pass for all classes, as the NC pass and the warp search do) and its held-out ASR is measured. A
class's score is the smallest alpha at which its pattern reaches the flag share, interpolated in
log alpha between rungs. A backdoor that answers a blend shows as one class reached at a fraction
of the alpha the other classes need: with a 15% blend planted, the target needed 0.06 where the
clean classes of the same models and of six clean models needed 0.2-0.45 (docs/benchmarks.md,
"Blend search"). The score is relative, so a class that is merely easy (Fashion-MNIST's Bag or
Shirt) is compared with how easy the other classes are on the same model.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..triggers import Trigger

STRONGER_BLEND = 2.0  # the defense also unlearns the recovered pattern at this multiple of its alpha (triggers())
LADDER = (0.02, 0.03, 0.045, 0.065, 0.09, 0.13, 0.18, 0.25, 0.35)


@dataclass
class BlendSearch:
    patterns: torch.Tensor  # one C x H x W pattern in [0, 1] per class searched, at the alpha it reached (or the last rung)
    alphas: list[float | None]  # per class: the interpolated alpha that reaches `min_asr`; None: not within the ladder
    curves: list[list[float]]  # per class: held-out ASR at each rung run (stops once the class reached)
    ladder: tuple[float, ...]
    min_asr: float
    steps: int  # gradient steps per rung
    seconds: float
    # Scheduled scans (scans/schedule.py): the classes searched (the others' alpha is None and not
    # counted), and the randomly drawn ones whose median alpha every class is compared with
    classes: list[int] | None = None
    reference: list[int] | None = None

    def ceiling(self) -> float:
        """What an unreached class counts as: beyond the last rung run."""
        return self.ladder[len(max(self.curves, key=len)) - 1] * 1.5

    def ratio(self, cls: int) -> float:
        """The class's alpha over the median alpha of the other classes (unreached ones at the ceiling)."""
        if self.alphas[cls] is None:
            return math.inf
        base = self.reference or self.classes or range(len(self.alphas))
        others = [self.alphas[c] if self.alphas[c] is not None else self.ceiling() for c in base if c != cls]
        return self.alphas[cls] / statistics.median(others) if others else 1.0

    def hits(self, max_ratio: float) -> list[int]:
        """The classes reached by a blend at most `max_ratio` of the others' median alpha, weakest blend first."""
        found = [c for c in range(len(self.alphas)) if self.ratio(c) <= max_ratio]
        return sorted(found, key=self.ratio)

    def triggers(self, cls: int) -> list[Trigger]:
        """The recovered blend at the alpha it reached, and the same pattern at STRONGER_BLEND times that
        alpha: the planted blend is stronger than the weakest one that works (15% on the zoo's Blended
        model, found at 0.065), and unlearning only the weak copy left 6.8-10.9% true ASR on it over seeds
        0-2; with the stronger copy too, 3.9-5.4% (docs/benchmarks.md, "Trigger recovered by the scan")."""
        weak = self.trigger(cls)
        return [weak, Trigger(weak.mask.mul(STRONGER_BLEND).clamp(max=1), weak.pattern, cls, "recovered", kind="blend")]

    def trigger(self, cls: int) -> Trigger:
        # the rung the pattern was last optimised and measured at (the interpolated alpha is only the score)
        alpha = self.ladder[len(self.curves[cls]) - 1]
        c, h, w = self.patterns.shape[1:]
        pattern = self.patterns[cls if self.classes is None else self.classes.index(cls)]
        return Trigger(torch.full((1, h, w), float(alpha)), pattern.clone(), cls, "recovered", kind="blend")

    def summary(self) -> dict:
        return {"ladder": list(self.ladder[: len(max(self.curves, key=len))]), "min_asr": self.min_asr, "steps_per_rung": self.steps,
                "alpha": [None if a is None else round(a, 4) for a in self.alphas],
                "ratio": [None if math.isinf(r := self.ratio(c)) else round(r, 3) for c in range(len(self.alphas))],
                "asr_curves": [[round(a, 3) for a in curve] for curve in self.curves], "seconds": round(self.seconds, 2)}


def _crossing(lo_alpha: float, lo_asr: float, hi_alpha: float, hi_asr: float, target: float) -> float:
    """Where the ASR curve crosses `target` between two rungs, linear in log alpha."""
    if hi_asr <= lo_asr:
        return hi_alpha
    t = min(1.0, max(0.0, (target - lo_asr) / (hi_asr - lo_asr)))
    return math.exp(math.log(lo_alpha) + t * (math.log(hi_alpha) - math.log(lo_alpha)))


def blend_search(handle, fit_x, eval_x, eval_y, *, steps: int, batch_size: int, lr: float, min_asr: float,
                 eval_samples: int, seed: int, ladder: tuple[float, ...] = LADDER, classes: list[int] | None = None,
                 reference: list[int] | None = None) -> BlendSearch:
    """The model's parameters must already be frozen (the caller's scan does that). Stops climbing once
    more than half of the classes have been reached (of `reference` when given): the median the score
    divides by is then known. `classes`: search only these (scheduled scans)."""
    start = time.perf_counter()
    device = handle.device
    c, h, w = handle.input_shape
    k = handle.num_classes
    searched = list(range(k)) if classes is None else list(classes)
    base = searched if reference is None else list(reference)
    gen = torch.Generator().manual_seed(seed + 5)
    row = {cls: i for i, cls in enumerate(searched)}  # each searched class's row in raw and patterns
    raw = torch.zeros(len(searched), c, h, w, device=device, requires_grad=True)  # sigmoid(0) = 0.5: mid-grey start for all
    opt = torch.optim.Adam([raw], lr=lr)
    pick = torch.randperm(len(eval_y), generator=gen)[:eval_samples]
    ex, ey = eval_x[pick].to(device), eval_y[pick].to(device)
    x_fit = fit_x.to(device)
    patterns = torch.zeros(len(searched), c, h, w)
    alphas: list[float | None] = [None] * k
    curves: list[list[float]] = [[] for _ in range(k)]
    active = list(searched)
    for rung, alpha in enumerate(ladder):
        cls = torch.tensor(active, device=device)
        rows = torch.tensor([row[t] for t in active], device=device)
        targets = cls[:, None].expand(len(active), batch_size).reshape(-1)
        for _ in range(steps):
            batch = x_fit[torch.randint(len(x_fit), (batch_size,), generator=gen).to(device)]
            blended = (1 - alpha) * batch[None] + alpha * torch.sigmoid(raw[rows])[:, None]
            loss = F.cross_entropy(handle.forward(blended.reshape(-1, c, h, w)), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            pattern = torch.sigmoid(raw)
            for t in list(active):
                others = ex[ey != t]
                asr = float((handle.forward((1 - alpha) * others + alpha * pattern[row[t]]).argmax(1) == t).float().mean())
                curves[t].append(asr)
                patterns[row[t]] = pattern[row[t]].cpu()
                if asr >= min_asr:
                    prev = (ladder[rung - 1], curves[t][-2]) if rung else (alpha / 2, 0.0)
                    alphas[t] = _crossing(prev[0], prev[1], alpha, asr, min_asr)
                    active.remove(t)
        if sum(t in active for t in base) < len(base) / 2 or not active:
            break
    return BlendSearch(patterns, alphas, curves, tuple(ladder), min_asr, steps, time.perf_counter() - start,
                       classes=None if classes is None else searched, reference=reference)
