"""Warp-trigger search: for every class, the smooth image warp of at most `strength` pixels (in
each direction) that sends the most clean images to that class.

Patch-shaped recovery (Neural Cleanse, generative patches) cannot express a WaNet-style trigger:
a fixed, barely visible warp of the whole image. Here each class gets a flow field on a coarse
`grid` x `grid` lattice, upsampled bicubically as WaNet builds its own and bounded to `strength`
pixels (tanh on the lattice, a clamp after upsampling), optimised for cross-entropy towards the
class on the fit samples; all classes share one batched forward pass like the NC pass. A backdoor
that answers a warp shows as one class reached by a tiny warp: on the zoo's WaNet model (a 4 x 4
flow of mean 1 px) its target reached 77-87% held-out ASR at 1.5 px over seeds 0-2 (one miss
under the 80% flag) and 86-92% at 2 px, the default (docs/benchmarks.md, "Scans over seeds").
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..metrics import attack_success_rate
from ..triggers import Trigger, identity_grid, pixel_in_grid_units


@dataclass
class WarpSearch:
    grids: torch.Tensor  # one H x W x 2 sampling grid (grid_sample, align_corners=True) per class searched
    asr: list[float | None]  # per class, on held-out samples not of the class; None: not searched
    strength: float
    steps: int
    seconds: float
    classes: list[int] | None = None  # the classes searched, in the grids' order; None: every class

    def trigger(self, cls: int) -> Trigger:
        row = cls if self.classes is None else self.classes.index(cls)
        return Trigger(None, None, cls, "recovered", grid=self.grids[row], kind="warp")

    def summary(self) -> dict:
        return {"strength": self.strength, "steps": self.steps, "asr": [None if a is None else round(a, 4) for a in self.asr],
                "seconds": round(self.seconds, 2)}


def warp_search(handle, fit_x, eval_x, eval_y, *, strength: float, grid: int, steps: int, batch_size: int, lr: float,
                eval_samples: int, seed: int, classes: list[int] | None = None) -> WarpSearch:
    """The model's parameters must already be frozen (the caller's scan does that). `classes`: search only
    these (scheduled scans); the others' ASR is None."""
    start = time.perf_counter()
    device = handle.device
    c, h, w = handle.input_shape
    searched = list(range(handle.num_classes)) if classes is None else list(classes)
    k = len(searched)
    gen = torch.Generator().manual_seed(seed + 3)
    raw = (torch.randn(k, 2, grid, grid, generator=gen) * 0.01).to(device).requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=lr)
    identity = identity_grid(h, w).to(device)
    pixel = pixel_in_grid_units(h, w).to(device)

    def grids():
        flow = F.interpolate(torch.tanh(raw) * strength, size=(h, w), mode="bicubic", align_corners=True)
        flow = flow.clamp(-strength, strength)  # bicubic overshoots the lattice values (measured: by 1.3x)
        return (identity[None] + flow.permute(0, 2, 3, 1) * pixel).clamp(-1, 1)

    def warp_all(x, g):  # every class's warp applied to the same batch: K*n images
        n = len(x)
        stacked = x[None].expand(k, -1, -1, -1, -1).reshape(k, n * c, h, w)
        return F.grid_sample(stacked, g, padding_mode="border", align_corners=True).reshape(k * n, c, h, w)  # as Trigger.apply

    x_all = fit_x.to(device)
    targets = torch.tensor(searched, device=device)[:, None].expand(k, batch_size).reshape(-1)
    for _ in range(steps):
        batch = x_all[torch.randint(len(x_all), (batch_size,), generator=gen).to(device)]
        loss = F.cross_entropy(handle.forward(warp_all(batch, grids())), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = grids().cpu()
    pick = torch.randperm(len(eval_y), generator=gen)[:eval_samples]
    ex, ey = eval_x[pick], eval_y[pick]
    result = WarpSearch(final, [], strength, steps, 0.0, classes=None if classes is None else searched)
    result.asr = [attack_success_rate(handle.predict(result.trigger(cls).apply(ex), backend="torch"), ey, cls)
                  if cls in searched else None for cls in range(handle.num_classes)]
    result.seconds = time.perf_counter() - start
    return result
