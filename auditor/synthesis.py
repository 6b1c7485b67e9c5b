"""Inputs synthesized from the model itself, for an audit with no data (`--data none`).

Each class gets images optimised, from seeded noise, until the model gives that class a set
probability (`confidence`, default 0.9: an image the model is sure of, not an extreme prototype,
so a trigger search still has a decision boundary to cross), starting around the mean pixel the
model's normalisation states. A total-variation prior keeps them smooth, random shifts during the optimisation keep them from being pixel-level adversarial noise,
and when the model has batch-norm layers their running statistics (the only record of the real
data a model carries) are matched as in DeepInversion (Yin et al., CVPR 2020). Images the model
does not end up predicting as their class are dropped.

They are labelled by construction, so accuracy on them says nothing about the model: a data-free
audit reports accuracy and ASR as not measured and uses these images only where a scan or a
comparison of two models needs inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageSet, Split
from .scans.neural_cleanse import _freeze, _restore


@dataclass(frozen=True)
class SynthesisParams:
    per_class: int = 20  # images per class, half for the scans' fit share and half for their checks
    steps: int = 150
    lr: float = 0.1
    confidence: float = 0.9
    tv_weight: float = 0.5
    bn_weight: float = 0.01
    batch_size: int = 200


def _bn_statistics_loss(module: nn.Module):
    """Hooks on every BatchNorm2d that add up |batch mean - running mean| + |batch var - running var|."""
    terms: list[torch.Tensor] = []

    def hook(bn, inputs, _):
        x = inputs[0]
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        terms.append(torch.norm(mean - bn.running_mean, 2) + torch.norm(var - bn.running_var, 2))

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    return terms, handles


def _shifted(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    side = max(1, min(x.shape[-2:]) // 14)
    dy, dx = (int(v) for v in torch.randint(-side, side + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def _tv(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def synthesize(handle, params: SynthesisParams, seed: int, progress=None) -> ImageSet:
    channels, height, width = handle.input_shape
    k = handle.num_classes
    labels = torch.arange(k).repeat_interleave(params.per_class)
    gen = torch.Generator().manual_seed(seed)
    images = []
    module = handle.module
    was_training = module.training
    module.eval()
    grads = _freeze(module)
    terms, hooks = _bn_statistics_loss(module)
    log_confidence = torch.log(torch.tensor(params.confidence))
    # start around the data's mean pixel when the model states its normalisation (Fashion-MNIST's
    # dark background, not mid-grey), else mid-grey
    mean = handle._mean.detach().cpu().view(1, -1, 1, 1).clamp(0.05, 0.95)
    start_logit = torch.log(mean / (1 - mean)) if handle.normalisation_stated else torch.zeros(1)
    try:
        for start in range(0, len(labels), params.batch_size):
            y = labels[start:start + params.batch_size]
            noise = 0.5 * torch.randn(len(y), channels, height, width, generator=gen)
            raw = (start_logit + noise).to(handle.device).requires_grad_(True)
            opt = torch.optim.Adam([raw], lr=params.lr)
            target = y.to(handle.device)
            for step in range(params.steps):
                x = torch.sigmoid(raw)
                terms.clear()
                log_p = F.log_softmax(handle.forward(_shifted(x, gen)), 1).gather(1, target[:, None])[:, 0]
                # only images below the wanted confidence are pushed further
                loss = -(log_p * (log_p < log_confidence)).sum() / len(y) + params.tv_weight * _tv(x)
                if terms:
                    loss = loss + params.bn_weight * torch.stack(terms).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                x = torch.sigmoid(raw).detach().cpu()
                keep = handle.predict(x, backend="torch").cpu() == y
            images.append((x[keep], y[keep]))
            if progress:
                progress(f"synthesized {min(start + params.batch_size, len(labels))}/{len(labels)} inputs "
                         f"({int(keep.sum())} of {len(y)} predicted as their class)")
    finally:
        for h in hooks:
            h.remove()
        _restore(module, grads)
        module.train(was_training)
    x = torch.cat([i for i, _ in images])
    y = torch.cat([j for _, j in images])
    return ImageSet(x, y, "synthesized from the model (--data none)")


def synthesized_split(handle, params: SynthesisParams, seed: int, progress=None) -> Split:
    """Alternate images of each class to the fit and the check share."""
    data = synthesize(handle, params, seed, progress)
    order = torch.arange(len(data))
    rank = torch.zeros(len(data), dtype=torch.long)
    for c in data.y.unique():
        members = order[data.y == c]
        rank[members] = torch.arange(len(members))
    return Split(fit=data.subset(order[rank % 2 == 0]), eval=data.subset(order[rank % 2 == 1]))
