"""Maximum-margin backdoor detection (MM-BD; Wang, Xiang, Miller and Kesidis, IEEE S&P 2024).

A backdoor makes its target class reachable with an unusually large logit margin: the trigger was
trained to win against every other class, whatever the image under it. For every class c this scan
maximises z_c(x) - max_{k != c} z_k(x) over images x in the valid pixel box (gradient ascent from
several random starts, no clean data needed) and keeps the largest margin found. The other classes'
maxima describe what a class reaches without a backdoor: a Gamma distribution is fitted to them
(the largest left out), and the largest class's p-value is that of the maximum of K-1 such draws.
It assumes nothing about the trigger's form (patch, blend, warp and frequency triggers all raise
the target's margin), but it names a class, not a trigger: what the defense unlearns for a flagged
class comes from a Neural Cleanse pass on that class alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..registry import SCANS
from ..triggers import Trigger
from .neural_cleanse import NeuralCleanseParams, _freeze, _restore, neural_cleanse


@dataclass(frozen=True)
class MaxMarginParams:
    starts: int = 8  # random starting images per class; the class keeps its best
    steps: int = 300
    lr: float = 0.05  # Adam, on the tanh-parametrised image
    batch_size: int = 256  # images optimised at once (classes x starts are split into chunks of this many)
    nc_max_steps: int = 600  # the Neural Cleanse pass that recovers a flagged class's trigger for the defense
    seed: int = 0

    def __post_init__(self):
        if self.starts < 1 or self.steps < 1 or self.batch_size < 1 or self.nc_max_steps < 1 or self.lr <= 0:
            raise ValueError("max-margin: starts, steps, batch_size, nc_max_steps >= 1 and lr > 0")

    def image_passes(self, num_classes: int) -> int:
        """Images forward and backward: every class's starts for every step, then NC on one class (at most)."""
        return num_classes * self.starts * self.steps + NeuralCleanseParams(max_steps=self.nc_max_steps).image_passes(num_classes, 1)


def gamma_fit(values: torch.Tensor) -> tuple[float, float]:
    """Maximum-likelihood Gamma (shape, scale) for positive values: Minka's closed-form start and
    Newton steps on the shape (the scale follows as mean / shape)."""
    x = values.double().clamp_min(1e-6)
    mean = x.mean()
    s = (mean.log() - x.log().mean()).clamp_min(1e-9)
    k = (3 - s + ((s - 3) ** 2 + 24 * s).sqrt()) / (12 * s)
    for _ in range(20):
        f = k.log() - torch.special.digamma(k) - s
        df = 1 / k - torch.special.polygamma(1, k)
        k = (k - f / df).clamp_min(1e-6)
    return float(k), float(mean / k)


def max_of_null_p_value(statistics: list[float]) -> tuple[int, float]:
    """The class with the largest statistic, and the chance that the largest of K-1 draws from the Gamma
    fitted to the OTHER classes' statistics is at least as large (MM-BD's order-statistic p-value)."""
    stats = torch.tensor(statistics, dtype=torch.float64)
    top = int(stats.argmax())
    rest = torch.cat([stats[:top], stats[top + 1:]])
    if len(rest) < 2 or float(rest.std()) == 0.0:
        return top, 1.0
    shape, scale = gamma_fit(rest)
    cdf = torch.special.gammainc(torch.tensor(shape, dtype=torch.float64), torch.tensor(float(stats[top]) / scale, dtype=torch.float64))
    return top, float(1 - cdf ** len(rest))


@dataclass
class MaxMarginResult:
    margins: list[float]  # per class, the largest margin reached
    top: int
    p_value: float
    seconds: float
    params: MaxMarginParams
    nc_triggers: dict[int, Trigger] = field(default_factory=dict)  # the top class's Neural Cleanse trigger
    method: str = "max-margin"

    def ranking(self) -> list[int]:
        return sorted(range(len(self.margins)), key=lambda c: -self.margins[c])

    def flagged(self, thresholds) -> list[int]:
        return [self.top] if self.p_value < thresholds.max_margin_p_value else []

    def suspects(self, thresholds) -> list[int]:
        return []

    def triggers(self, cls: int, input_shape, thresholds) -> list[Trigger]:
        return [self.nc_triggers[cls]] if cls in self.nc_triggers else []

    def evidence(self, cls: int, thresholds, label: str) -> str:
        others = sorted(m for c, m in enumerate(self.margins) if c != cls)
        return (f"class {label} reaches a logit margin of {self.margins[cls]:.1f} over every other class (the others "
                f"{others[0]:.1f}-{others[-1]:.1f}); p = {self.p_value:.2g} < {thresholds.max_margin_p_value:g} that a class "
                "without a backdoor reaches it")

    def describe_class(self, cls: int) -> str:
        return f"largest margin was {self.margins[cls]:.1f} (p = {self.p_value:.2g} for the largest class, {self.top}"

    def pictures(self, classes, thresholds, example, label) -> list:
        from ..report.images import trigger_pictures

        return [(f"Neural Cleanse trigger for class {label(c)} (flagged by its maximum margin)",
                 list(trigger_pictures(self.nc_triggers[c].mask, self.nc_triggers[c].pattern, example).items()))
                for c in classes if c in self.nc_triggers]

    def summary(self) -> dict:
        return {"method": self.method, "margins": [round(m, 3) for m in self.margins], "top_class": self.top,
                "p_value": self.p_value, "seconds": round(self.seconds, 2), "params": asdict(self.params)}


def maximum_margins(handle, params: MaxMarginParams, progress=None, classes: list[int] | None = None) -> list[float]:
    """Per class (per class of `classes`, in its order, when given), the largest logit margin over the pixel
    box found from `starts` random images."""
    device = handle.device
    c, h, w = handle.input_shape
    k = handle.num_classes
    searched = torch.arange(k) if classes is None else torch.tensor(list(classes))
    gen = torch.Generator().manual_seed(params.seed)
    rows = searched.repeat_interleave(params.starts)  # the class each optimised image pushes up
    init = torch.rand(len(rows), c, h, w, generator=gen) * 0.98 + 0.01
    best = torch.full((len(rows),), -float("inf"))
    for begin in range(0, len(rows), params.batch_size):
        chunk = rows[begin:begin + params.batch_size].to(device)
        raw = torch.atanh(2 * init[begin:begin + params.batch_size] - 1).to(device).requires_grad_(True)
        opt = torch.optim.Adam([raw], lr=params.lr)
        chunk_best = torch.full((len(chunk),), -float("inf"), device=device)
        others = torch.ones(len(chunk), k, dtype=torch.bool, device=device)
        others[torch.arange(len(chunk), device=device), chunk] = False
        for _ in range(params.steps):
            logits = handle.forward((torch.tanh(raw) + 1) / 2)
            own = logits.gather(1, chunk[:, None])[:, 0]
            margin = own - logits.masked_fill(~others, -float("inf")).amax(1)
            chunk_best = torch.maximum(chunk_best, margin.detach())
            opt.zero_grad(set_to_none=True)
            (-margin.sum()).backward()
            opt.step()
        best[begin:begin + len(chunk)] = chunk_best.cpu()
        if progress:
            progress(f"max-margin: {min(begin + params.batch_size, len(rows))}/{len(rows)} images optimised")
    return best.view(len(searched), params.starts).amax(1).tolist()


def max_margin_scan(handle, fit_x, params: MaxMarginParams, progress=None) -> MaxMarginResult:
    """The margins, the top class's p-value, and a Neural Cleanse trigger for the top class on the fit
    samples (whatever its p-value, so the result does not depend on the threshold it is judged by)."""
    start = time.perf_counter()
    flags = _freeze(handle.module)
    try:
        margins = maximum_margins(handle, params, progress)
    finally:
        _restore(handle.module, flags)
    top, p = max_of_null_p_value(margins)
    result = MaxMarginResult(margins, top, p, 0.0, params)
    nc = neural_cleanse(handle, fit_x, params=NeuralCleanseParams(max_steps=params.nc_max_steps, seed=params.seed),
                        progress=progress, classes=[top])
    result.nc_triggers[top] = Trigger(nc.masks[0], nc.patterns[0], top, "recovered")
    result.seconds = time.perf_counter() - start
    return result


@SCANS.register(
    "max-margin",
    "MM-BD: per class, the largest logit margin reachable over the pixel box (no clean data); the top class's p-value "
    "under a Gamma fit to the others",
    params=asdict(MaxMarginParams()), params_type=MaxMarginParams,
    quick={"starts": 1, "steps": 2, "nc_max_steps": 2}, invalid={"steps": -1},
    limits=("Flags at most one class, the one with the largest reachable margin, so it cannot see an all-to-all backdoor. "
            "A class that is naturally easy to push far (Fashion-MNIST's Bag) can hold the largest margin on a clean "
            "model and hide a planted target behind it (docs/benchmarks.md, \"Maximum margin\"). Its trigger for the "
            "defense is a Neural Cleanse mask for the flagged class."),
)
def run_max_margin(handle, split, params: dict, seed: int, progress=None) -> MaxMarginResult:
    return max_margin_scan(handle, split.fit.x, MaxMarginParams(**{**params, "seed": seed}), progress)
