"""Small PNGs (base64) of triggers for the self-contained HTML report."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import io

import numpy as np
import torch
from PIL import Image


# While the report's pictures are drawn: image -> the label the audited model gives it, so the captions
# of clean and stamped examples say what the model decided (set by result._pictures).
_predict = contextvars.ContextVar("predict", default=None)


@contextlib.contextmanager
def predicted_labels(predict):
    token = _predict.set(predict)
    try:
        yield
    finally:
        _predict.reset(token)


def example_caption(caption: str, image: torch.Tensor) -> str:
    predict = _predict.get()
    if predict is None:
        return caption
    try:
        return f"{caption}: model says {predict(image)}"
    except Exception:  # a picture caption must never break the report
        return caption


def png_base64(image: torch.Tensor, scale: int = 4) -> str:
    """image: C x H x W or H x W in [0, 1]; upscaled with nearest neighbour so pixels stay visible."""
    arr = image.detach().float().clamp(0, 1).cpu()
    if arr.dim() == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.permute(1, 2, 0)
    pixels = (arr.numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def trigger_pictures(mask: torch.Tensor, pattern: torch.Tensor, example: torch.Tensor) -> dict[str, str]:
    """mask (1 x H x W), pattern (C x H x W), example clean image (C x H x W) -> name: base64 PNG."""
    scale = max(1, 112 // max(mask.shape[-2:]))
    stamped = (1 - mask) * example + mask * pattern
    return {
        "mask": png_base64(mask, scale),
        "pattern": png_base64(pattern, scale),
        "trigger": png_base64(mask * pattern, scale),
        example_caption("clean example", example): png_base64(example, scale),
        example_caption("stamped example", stamped): png_base64(stamped, scale),
    }


def applied_pictures(trigger, example: torch.Tensor) -> dict[str, str]:
    """Any trigger (warp, additive, stamp): the example before and after, and the change, amplified."""
    scale = max(1, 112 // max(example.shape[-2:]))
    stamped = trigger.apply(example.unsqueeze(0))[0]
    change = (stamped - example).abs()
    pics = {}
    if trigger.mask is not None:
        pics["mask"] = png_base64(trigger.mask, scale)
        pics["trigger"] = png_base64(trigger.mask * trigger.pattern, scale)
    pics[example_caption("clean example", example)] = png_base64(example, scale)
    pics[example_caption("stamped example", stamped)] = png_base64(stamped, scale)
    pics["change (amplified)"] = png_base64(change / change.max().clamp_min(1e-6), scale)
    return pics
