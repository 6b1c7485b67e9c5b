from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data import ImageSet
from ..metrics import per_class_accuracy
from ..model import ModelHandle


@dataclass
class DefenseOutcome:
    handle: ModelHandle
    name: str
    seconds: float
    samples_used: int
    stats: dict = field(default_factory=dict)


def per_class_fit_accuracy(handle: ModelHandle, data: ImageSet) -> list[float | None]:
    return per_class_accuracy(handle.predict(data.x, backend="torch"), data.y, handle.num_classes)


def drop_alternatives(triggers, drop: str, keep: str) -> list:
    """Without the recovered triggers of kind `drop` whose target also has a recovered trigger of kind
    `keep`: a class the generative scan flagged comes with its sampled patches ("generative") and
    its NC mask/pattern ("patch"), two stand-ins for one unknown trigger."""
    covered = {t.target for t in triggers if t.source == "recovered" and t.kind == keep}
    return [t for t in triggers if not (t.source == "recovered" and t.kind == drop and t.target in covered)]


def batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """`steps` index batches drawn by reshuffled passes over n samples."""
    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def stamp_fraction(x, y, triggers, fraction: float, gen: torch.Generator):
    """Stamp a random `fraction` of the batch, each with one of the triggers; labels stay true."""
    x = x.clone()
    if not triggers or fraction <= 0:
        return x
    chosen = torch.rand(len(x), generator=gen) < fraction
    which = torch.randint(len(triggers), (len(x),), generator=gen)
    for i, trig in enumerate(triggers):
        sel = chosen & (which == i)
        if sel.any():
            x[sel] = trig.apply(x[sel])
    return x


def stamp_random(x, y, triggers, num_classes, gen):
    """Each sample stamped with one randomly chosen trigger; returns (stamped, target labels, keep),
    keep marking samples whose true label differs from that trigger's target."""
    which = torch.randint(len(triggers), (len(x),), generator=gen)
    stamped, targets = x.clone(), y.clone()
    for i, trig in enumerate(triggers):
        sel = which == i
        if sel.any():
            stamped[sel] = trig.apply(x[sel])
            targets[sel] = trig.target_labels(y[sel], num_classes)
    return stamped, targets, targets != y


def augmented_views(x, views: int, gen: torch.Generator):
    """`views` random variants of every image (shifted by up to 1/14 of its side, 2 pixels at 28,
    edges replicated; mirrored left-right with probability 1/2), stacked view by view: row i of view v is
    a variant of x[i]. Unlabelled extra inputs on which a defense can ask that the ORIGINAL model's
    clean behaviour be kept."""
    if views < 1:
        return x[:0]
    n, _, h, w = x.shape
    s = max(1, min(h, w) // 14)
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    out = []
    for _ in range(views):
        dy = torch.randint(0, 2 * s + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * s + 1, (n,), generator=gen)
        mirror = torch.rand(n, generator=gen) < 0.5
        view = torch.empty_like(x)
        for oy in range(2 * s + 1):  # one slice per offset, not per image
            for ox in range(2 * s + 1):
                sel = (dy == oy) & (dx == ox)
                view[sel] = padded[sel, :, oy : oy + h, ox : ox + w]
        view[mirror] = view[mirror].flip(-1)
        out.append(view)
    return torch.cat(out)
