"""What a model does on the audit's clean samples: clean accuracy, per-class accuracy, and the attack
success rate of a trigger, with each model's clean predictions computed once."""

from __future__ import annotations

import torch

from .data import Split
from .metrics import accuracy, attack_success_rate, per_class_accuracy, trigger_flip_rate
from .model import ModelHandle


class Evaluation:
    """Measurements on one split: the evaluation half decides the numbers reported, the fit half only
    chooses between recovered triggers (so the evaluation samples choose nothing)."""

    def __init__(self, split: Split):
        self.split = split
        self._clean_predictions: dict[int, tuple] = {}  # id(handle) -> (handle, its predictions on the evaluation split)

    def measure(self, handle: ModelHandle, trigger=None) -> dict:
        """C-ACC and per-class accuracy; the attack's numbers too when a trigger is given (else None)."""
        ev = self.split.eval
        pred = self.clean_predictions(handle)
        out = {
            "c_acc": accuracy(pred, ev.y),
            "per_class_acc": per_class_accuracy(pred, ev.y, handle.num_classes),
            "eval_per_class": torch.bincount(ev.y, minlength=handle.num_classes).tolist(),
            "asr": None, "asr_trigger": None, "target": None, "r_acc": None, "eval_samples": len(ev),
        }
        if trigger is not None:
            out.update(self.measure_attack(handle, trigger))
        return out

    def measure_attack(self, handle: ModelHandle, trigger) -> dict:
        """ASR, and what it is made of: `asr_no_trigger`, the share of the same images the model sends to
        the target WITHOUT the trigger (its own confusion, which a defense that keeps the class leaves in
        place), and `asr_trigger_flips`, those the trigger itself moves there."""
        ev = self.split.eval
        triggered = handle.predict(trigger.apply(ev.x))
        clean = self.clean_predictions(handle)
        targets = trigger.target_labels(ev.y, handle.num_classes)
        keep = ev.y != targets
        return {"asr": attack_success_rate(triggered, ev.y, targets), "asr_trigger": trigger.source,
                "target": trigger.target, "r_acc": accuracy(triggered[keep], ev.y[keep]),
                "asr_no_trigger": attack_success_rate(clean, ev.y, targets),
                "asr_trigger_flips": trigger_flip_rate(clean, triggered, ev.y, targets)}

    def clean_predictions(self, handle: ModelHandle) -> torch.Tensor:
        """handle's predictions on the evaluation split, once per model."""
        if id(handle) not in self._clean_predictions:  # the handle is kept with them, so its id is not reused
            self._clean_predictions[id(handle)] = (handle, handle.predict(self.split.eval.x))
        return self._clean_predictions[id(handle)][1]

    def fit_asr(self, handle: ModelHandle, trigger, target: int | None) -> float:
        """The share of the clean fit samples (not of `target`) that `trigger` sends to `target`; with
        None, each sample's own target under the trigger (all-to-all)."""
        fit = self.split.fit
        if target is None:
            target = trigger.target_labels(fit.y, handle.num_classes)
        return attack_success_rate(handle.predict(trigger.apply(fit.x)), fit.y, target)

    def mean_fit_asr(self, handle: ModelHandle, triggers: list, target: int) -> float:
        return sum(self.fit_asr(handle, t, target) for t in triggers) / len(triggers)

    def strongest(self, handle: ModelHandle, triggers: list):
        """Of a class's recovered triggers (sampled patches, a warp, a mask), the one that works best on
        `handle`, judged on the fit samples: the first sampled patch was an arbitrary pick, 75% on the
        ResNet-18 whose patches averaged 91%."""
        return max(triggers, key=lambda t: self.fit_asr(handle, t, t.target))
