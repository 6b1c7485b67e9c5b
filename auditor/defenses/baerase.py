"""BAERASE-style unlearning (after Liu et al., 2022): gradient ASCENT on the target-class loss of
inputs stamped with triggers sampled from the recovered distribution (or the known trigger),
with a clean loss so accuracy does not collapse.

Measured on the zoo with 10 clean samples per class (docs/benchmarks.md): cross-entropy on 100 clean samples
as the clean loss cost 4-12 points of C-ACC (the Blended model's target class went to 0%), so the
clean loss distils the ORIGINAL model's outputs instead (`clean_loss="distill"`), and the ascent is
bounded: a stamped sample only contributes while the trigger still wins it (`bound="argmax"`;
`"chance"` keeps pushing until the target class is below 1 / classes, which hurt the target class
more). Training stops once the trigger ASR on the fit samples (every trigger, samples not of the
target class) is below `stop_asr`, or after `max_steps`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..registry import DEFENSES
from .base import DefenseOutcome, batches, drop_alternatives, stamp_random
from .repair import trainable_params


@dataclass(frozen=True)
class BaeraseParams:
    max_steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    ascent_weight: float = 1.0
    stop_asr: float = 0.01
    check_every: int = 10
    clean_loss: str = "distill"
    temperature: float = 2.0
    scope: str = "all"
    bound: str = "argmax"

    def __post_init__(self):
        if self.clean_loss not in ("distill", "ce") or self.scope not in ("all", "linear") or self.bound not in ("argmax", "chance"):
            raise ValueError("baerase: clean_loss must be 'distill' or 'ce', scope 'all' or 'linear', bound 'argmax' or 'chance'")
        if self.max_steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.ascent_weight <= 0 or self.check_every < 1:
            raise ValueError("baerase: max_steps, batch_size, lr, ascent_weight and check_every must be positive")
        if not 0 <= self.stop_asr < 1:
            raise ValueError("baerase: stop_asr must be in [0, 1)")


@torch.no_grad()
def trigger_asr(handle, fit, triggers, num_classes) -> float:
    hits = total = 0
    for trig in triggers:
        targets = trig.target_labels(fit.y, num_classes)
        keep = targets != fit.y
        if keep.any():
            pred = handle.forward(trig.apply(fit.x[keep])).argmax(1).cpu()
            hits += int((pred == targets[keep]).sum())
            total += int(keep.sum())
    return hits / max(total, 1)


@DEFENSES.register(
    "baerase",
    "BAERASE-style unlearning: bounded gradient ascent on sampled triggers plus clean descent, stops on trigger ASR",
    params=asdict(BaeraseParams()), params_type=BaeraseParams,
    quick={"max_steps": 3, "check_every": 1}, invalid={"max_steps": 0},
)
def baerase(handle, fit, triggers, params: dict, seed: int, progress=None) -> DefenseOutcome:
    p = BaeraseParams(**params)
    start = time.perf_counter()
    k = handle.num_classes
    triggers = drop_alternatives(triggers, drop="patch", keep="generative")  # BAERASE unlearns the sampled distribution
    module = handle.copy_for_editing()
    trainable = trainable_params(module, p.scope)
    for q in trainable:
        q.requires_grad_(True)
    edited = handle.derived(module)
    opt = torch.optim.Adam(trainable, lr=p.lr)
    gen = torch.Generator().manual_seed(seed)
    eval_triggers = triggers if len(triggers) <= 8 else [triggers[i] for i in torch.randperm(len(triggers), generator=gen)[:8].tolist()]
    asr = trigger_asr(edited, fit, eval_triggers, k)
    history = [(0, asr)]
    steps = 0
    if asr >= p.stop_asr:
        for steps, idx in enumerate(batches(len(fit), min(p.batch_size, len(fit)), p.max_steps, gen), start=1):
            x, y = fit.x[idx], fit.y[idx].to(edited.device)
            stamped, targets, keep = stamp_random(fit.x[idx], fit.y[idx], triggers, k, gen)
            if p.clean_loss == "ce":
                loss = F.cross_entropy(edited.forward(x), y)
            else:
                with torch.no_grad():
                    teacher = F.log_softmax(handle.forward(x) / p.temperature, 1)
                student = F.log_softmax(edited.forward(x) / p.temperature, 1)
                loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean") * p.temperature ** 2
            if keep.any():
                logits = edited.forward(stamped[keep])
                target_logp = F.log_softmax(logits, 1).gather(1, targets[keep].to(edited.device)[:, None]).squeeze(1)
                if p.bound == "chance":
                    active = target_logp > -math.log(k)
                else:
                    active = logits.argmax(1) == targets[keep].to(edited.device)
                if active.any():
                    loss = loss + p.ascent_weight * target_logp[active].sum() / len(target_logp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if steps % p.check_every == 0:
                module.eval()
                asr = trigger_asr(edited, fit, eval_triggers, k)
                history.append((steps, asr))
                if progress:
                    progress(f"baerase: step {steps}/{p.max_steps}, trigger ASR on fit samples {100 * asr:.1f}%")
                if asr < p.stop_asr:
                    break
    module.eval()
    for q in module.parameters():
        q.requires_grad_(False)
    stats = {"params": asdict(p), "steps": steps, "fit_trigger_asr": [(s, round(a, 4)) for s, a in history]}
    return DefenseOutcome(edited, "baerase", time.perf_counter() - start, len(fit), stats)
