"""Triggers in pixel space, known (from a JSON spec) or recovered (from a scan).

A trigger is applied as: warp (a fixed sampling grid), then add (a fixed signal, clamped), then
stamp (x' = (1 - mask) * x + mask * pattern); each part optional. Recovered triggers are always a
mask and a pattern. The spec format (--trigger, and the fixtures' *.trigger.json), values in
pixel space [0, 1] before normalisation:

    {"kind": "patch", "target": 7, "top": 24, "left": 24, "pattern": [[1, 0, 1], [0, 1, 0], [1, 0, 1]]}
        a patch pasted at (top, left); pattern is h x w (same for every channel) or c x h x w.
    {"kind": "blend", "target": 7, "alpha": 0.15, "pattern": "random", "seed": 3}
        the whole image blended with a fixed pattern (c x h x w list, or "random" with a seed).
    {"kind": "sig", "target": 7, "delta": 0.12, "frequency": 6}
        horizontal sinusoidal stripes added: x + delta * sin(2 pi j frequency / W), clamped.
    {"kind": "warp", "target": 7, "grid_size": 4, "strength": 0.5, "seed": 5}
        a WaNet-style smooth warp: a random grid_size x grid_size flow field, upsampled, scaled
        by strength (in pixels), applied with bilinear sampling.
Any kind takes "all_to_all": true instead of "target": the label y goes to (y + 1) mod classes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import AuditorInputError


@dataclass(frozen=True)
class Trigger:
    mask: torch.Tensor | None  # 1 x H x W in [0, 1]
    pattern: torch.Tensor | None  # C x H x W in [0, 1]
    target: int | None  # None: all-to-all, label y -> (y + 1) mod classes
    source: str  # "known" or "recovered"
    additive: torch.Tensor | None = None  # C x H x W, added then clamped
    grid: torch.Tensor | None = None  # H x W x 2 sampling grid in [-1, 1]
    kind: str = "patch"
    # a recovered all-to-all trigger's destination per source class (-1: the class itself, none observed);
    # None with target None: the known all-to-all rule y -> y + 1
    mapping: tuple[int, ...] | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to a pixel-space batch N x C x H x W."""
        if self.grid is not None:
            grid = self.grid.to(x.device, x.dtype).unsqueeze(0).expand(len(x), -1, -1, -1)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp(0, 1)
        if self.additive is not None:
            x = (x + self.additive.to(x.device, x.dtype)).clamp(0, 1)
        if self.mask is not None:
            mask = self.mask.to(x.device, x.dtype)
            x = (1 - mask) * x + mask * self.pattern.to(x.device, x.dtype)
        return x

    def target_labels(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        if self.target is None and self.mapping is not None:
            table = torch.tensor(self.mapping, dtype=labels.dtype, device=labels.device)
            return torch.where(table[labels] >= 0, table[labels], labels)
        if self.target is None:
            return (labels + 1) % num_classes
        return torch.full_like(labels, self.target)

    @property
    def target_name(self) -> str:
        if self.target is None:
            return "all-to-all (recovered mapping)" if self.mapping is not None else "all-to-all (y -> y+1)"
        return str(self.target)


def _random_pattern(spec: dict, shape) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    return torch.rand(*shape, generator=gen)


def warp_grid(height: int, width: int, grid_size: int, strength: float, seed: int) -> torch.Tensor:
    """WaNet-style: a random flow on a coarse grid, upsampled smoothly, `strength` pixels at most."""
    gen = torch.Generator().manual_seed(seed)
    flow = torch.rand(1, 2, grid_size, grid_size, generator=gen) * 2 - 1
    flow = flow / flow.abs().mean()
    flow = F.interpolate(flow, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)[0]
    return (identity_grid(height, width) + flow * strength * pixel_in_grid_units(height, width)).clamp(-1, 1)


def identity_grid(height: int, width: int) -> torch.Tensor:
    """The H x W x 2 sampling grid (x, y in [-1, 1], align_corners=True) that leaves an image as it is."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def pixel_in_grid_units(height: int, width: int) -> torch.Tensor:
    """One pixel's length along x and y in those grid coordinates."""
    return torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])


def trigger_from_spec(spec: dict, channels: int, height: int, width: int) -> Trigger:
    try:
        kind = spec["kind"]
        target = None if spec.get("all_to_all") else int(spec["target"])
        if kind == "patch":
            pattern = torch.tensor(spec["pattern"], dtype=torch.float32)
            if pattern.dim() == 2:
                pattern = pattern.unsqueeze(0).expand(channels, -1, -1)
            if pattern.dim() != 3 or pattern.shape[0] != channels:
                raise ValueError(f"patch pattern must be h x w or {channels} x h x w")
            top, left = int(spec["top"]), int(spec["left"])
            h, w = pattern.shape[1:]
            if top < 0 or left < 0 or top + h > height or left + w > width:
                raise ValueError(f"patch {h}x{w} at ({top},{left}) does not fit a {height}x{width} image")
            mask = torch.zeros(1, height, width)
            mask[:, top : top + h, left : left + w] = 1
            full = torch.zeros(channels, height, width)
            full[:, top : top + h, left : left + w] = pattern
            return Trigger(mask, full.clamp(0, 1), target, "known", kind=kind)
        if kind == "blend":
            alpha = float(spec["alpha"])
            if not 0 < alpha <= 1:
                raise ValueError("blend alpha must be in (0, 1]")
            if spec["pattern"] == "random":
                pattern = _random_pattern(spec, (channels, height, width))
            else:
                pattern = torch.tensor(spec["pattern"], dtype=torch.float32)
                if pattern.shape != (channels, height, width):
                    raise ValueError(f"blend pattern must be {channels} x {height} x {width}")
            return Trigger(torch.full((1, height, width), alpha), pattern.clamp(0, 1), target, "known", kind=kind)
        if kind == "sig":
            delta, freq = float(spec["delta"]), float(spec["frequency"])
            cols = torch.arange(width, dtype=torch.float32)
            signal = delta * torch.sin(2 * math.pi * cols * freq / width)
            return Trigger(None, None, target, "known", additive=signal.expand(channels, height, width).clone(), kind=kind)
        if kind == "warp":
            grid = warp_grid(height, width, int(spec["grid_size"]), float(spec["strength"]), int(spec.get("seed", 0)))
            return Trigger(None, None, target, "known", grid=grid, kind=kind)
        raise ValueError(f"unknown trigger kind {kind!r} (known: patch, blend, sig, warp)")
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise AuditorInputError(f"trigger spec: {detail}") from None


def load_trigger(path: str | Path, channels: int, height: int, width: int) -> Trigger:
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditorInputError(f"{path}: cannot read trigger spec: {exc}") from None
    if not isinstance(spec, dict):
        raise AuditorInputError(f"{path}: a trigger spec is a JSON object")
    try:
        return trigger_from_spec(spec, channels, height, width)
    except AuditorInputError as exc:
        raise AuditorInputError(f"{path}: {exc}") from None
