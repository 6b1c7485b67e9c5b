"""Triggers as a mask and a pattern in pixel space: x' = (1 - mask) * x + mask * pattern.

A known trigger comes from a JSON spec (the fixtures write one per backdoored model; users pass
their own with --trigger). The spec format:

    {"kind": "patch", "target": 7, "image_size": [28, 28],
     "top": 24, "left": 24, "pattern": [[1, 0, 1], [0, 1, 0], [1, 0, 1]]}
        a patch pasted at (top, left); pattern is h x w (same for every channel) or c x h x w,
        values in [0, 1] (pixel space, before normalisation).
    {"kind": "blend", "target": 7, "alpha": 0.15, "pattern": "random", "seed": 3}
        the whole image blended with a fixed pattern (c x h x w list, or "random" with a seed).

A recovered trigger (from a scan) is the same mask/pattern pair with source="recovered".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import AuditorInputError


@dataclass(frozen=True)
class Trigger:
    mask: torch.Tensor  # 1 x H x W in [0, 1]
    pattern: torch.Tensor  # C x H x W in [0, 1]
    target: int
    source: str  # "known" or "recovered"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp a pixel-space batch N x C x H x W."""
        mask = self.mask.to(x.device, x.dtype)
        pattern = self.pattern.to(x.device, x.dtype)
        return (1 - mask) * x + mask * pattern


def trigger_from_spec(spec: dict, channels: int, height: int, width: int) -> Trigger:
    try:
        kind = spec["kind"]
        target = int(spec["target"])
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
            return Trigger(mask, full.clamp(0, 1), target, "known")
        if kind == "blend":
            alpha = float(spec["alpha"])
            if spec["pattern"] == "random":
                gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))
                pattern = torch.rand(channels, height, width, generator=gen)
            else:
                pattern = torch.tensor(spec["pattern"], dtype=torch.float32)
                if pattern.shape != (channels, height, width):
                    raise ValueError(f"blend pattern must be {channels} x {height} x {width}")
            return Trigger(torch.full((1, height, width), alpha), pattern.clamp(0, 1), target, "known")
        raise ValueError(f"unknown trigger kind {kind!r} (known: patch, blend)")
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise AuditorInputError(f"trigger spec: {detail}") from None


def load_trigger(path: str | Path, channels: int, height: int, width: int) -> Trigger:
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditorInputError(f"{path}: cannot read trigger spec: {exc}") from None
    try:
        return trigger_from_spec(spec, channels, height, width)
    except AuditorInputError as exc:
        raise AuditorInputError(f"{path}: {exc}") from None
