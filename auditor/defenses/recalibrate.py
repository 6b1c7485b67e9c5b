"""Target-class recalibration: give the target class back the logit an unlearning step took from it
on images that step never saw.

Removing a trigger's features also removes some of the evidence natural target-class images carry
(a blend or stripe pattern overlaps with what coats or shirts look like), and the loss shows on
unseen images only: the edit and the repair pin the outputs of the samples they fit. So the drop is
measured on samples the step did not fit (cross-fitted folds for the edit, repair's held-out check
share for the repair), as the fall of the target's margin (its logit minus the log-sum-exp of the
others) weighted by p(1 - p) of the target under the reference model, where a decision can flip
(for the edit: the mean of that over all held-out images and over those of the target class);
the output layer's bias for the target is then raised by that amount.

Measured on the zoo (docs/benchmarks.md, "Defenses"; known triggers): over seeds 0-5 at 10 samples per class
no target class then lost more than 2.8 points, where 9 of 30 runs lost more than 3 (up to 9.0);
the price is some residual ASR (the target logit is what the trigger pushes) and, on WaNet, a
target class that can gain up to 5.2 points.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import augmented_views

VIEWS = 16  # shifted/mirrored copies of each unseen sample: more points near the decision boundary
SETTINGS = ("auto", True, False)


def classes_to_recalibrate(setting, triggers) -> list[int]:
    """The target classes to recalibrate. `auto`: those whose triggers are all KNOWN (--trigger).
    A recovered trigger only approximates the real one, its edit reaches further into what the
    target class is made of, and giving the target its margin back gave the backdoor back with it
    (measured without --trigger, generative scan: WaNet 7.8% -> 44.7% true ASR, Blended 23.7% ->
    32.7%, SIG 17.9% -> 22.2%). No class of an all-to-all trigger (it has no single target)."""
    targets = sorted({t.target for t in triggers if t.target is not None})
    if setting != "auto":
        return targets if setting else []
    return [c for c in targets if all(t.source == "known" for t in triggers if t.target == c)]


def classes_to_recalibrate_in_repair(setting, triggers, defense_stats: dict | None) -> list[int]:
    """As `classes_to_recalibrate`; `auto` also keeps only the classes the defense recalibrated
    itself (its stats say): after `nc-unlearn` or `finetune` it is the repair that unlearns, and
    the margin it takes from a clean-label target IS the backdoor (SIG: 0.4% -> 11.3% and
    6.4% -> 50.6% true ASR)."""
    chosen = classes_to_recalibrate(setting, triggers)
    if setting != "auto":
        return chosen
    done = ((defense_stats or {}).get("recalibration") or {}).get("shift") or {}
    return [c for c in chosen if str(c) in done]


def margin(logits: torch.Tensor, c: int) -> torch.Tensor:
    others = torch.cat([logits[:, :c], logits[:, c + 1 :]], 1)
    return logits[:, c] - torch.logsumexp(others, 1)


def with_views(x: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.cat([x, augmented_views(x, VIEWS, torch.Generator().manual_seed(seed))])


def boundary_drop(reference: torch.Tensor, changed: torch.Tensor, c: int) -> float | None:
    """How far the `changed` logits lowered class c's margin against the `reference` logits (of the
    same images), weighted towards the images where reference is unsure about c; None when no
    image is near that boundary."""
    p = reference.softmax(1)[:, c]
    w = p * (1 - p)
    if len(reference) == 0 or float(w.sum()) < 1e-6:
        return None
    drop = margin(reference, c) - margin(changed, c)
    return float((w * drop).sum() / w.sum())


@torch.no_grad()
def output_layer(handle, module: nn.Module) -> nn.Linear | None:
    """The last linear layer when its output IS the model's output (the logits), else None."""
    linear = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linear:
        return None
    seen = []
    hook = linear[-1].register_forward_hook(lambda mod, i, o: seen.append(o.detach()))
    try:
        out = handle.derived(module).forward(torch.zeros(2, *handle.input_shape))
    finally:
        hook.remove()
    if not seen or seen[-1].shape != out.shape or not torch.allclose(seen[-1], out):
        return None
    return linear[-1]


def shift_target_logits(handle, shifts: dict[int, float]):
    """A copy of `handle` whose output bias is raised by shifts[c] for each class c; None when the
    model's output is not a linear layer's (nothing to shift)."""
    module = handle.copy_for_editing()
    layer = output_layer(handle, module)
    if layer is None:
        return None
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.out_features, device=layer.weight.device), requires_grad=False)
        for c, s in shifts.items():
            layer.bias[c] += s
    module.eval()
    return handle.derived(module)


def give_back(handle, shifts: dict[int, float], step: str, measured_on: str, nothing: str, progress=None):
    """`handle` with each class's logit shifted by shifts[c], and the stats saying so: {"shift": ...},
    or {"note": ...} and `handle` itself when there is nothing to shift (`nothing` says why) or the
    model's output is not a linear layer's."""
    shifted = shift_target_logits(handle, shifts) if shifts else None
    if shifted is None:
        return handle, {"note": "the model's output is not a linear layer's: not recalibrated" if shifts else nothing}
    if progress:
        progress(f"{step}: target logit(s) recalibrated by " + ", ".join(f"{c}: {s:+.3f}" for c, s in shifts.items())
                 + f" (their margin drop on {measured_on})")
    return shifted, {"shift": {str(c): round(s, 4) for c, s in shifts.items()}}


def stratified_folds(y: torch.Tensor, num_classes: int, folds: int, seed: int) -> list[torch.Tensor]:
    """`folds` index sets, each class dealt round-robin over them after a seeded shuffle."""
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for c in range(num_classes):
        idx = (y == c).nonzero().flatten()
        for j, i in enumerate(idx[torch.randperm(len(idx), generator=gen)].tolist()):
            parts[j % folds].append(i)
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts if p]
