"""One audit's state: the loaded model, data split, scans, metrics and the defense, computed lazily
and cached so every check of a stage shares one pass (no check re-runs inference or a scan)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .config import AuditConfig
from .errors import AuditorInputError
from .metrics import accuracy, attack_success_rate, per_class_accuracy, trigger_flip_rate

STAGES = ("before", "after")


class StageSkipped(Exception):
    """The after stage does not run (no backdoor check failed, or no defense was chosen)."""


def progress_printer(quiet: bool):
    start = time.perf_counter()
    # pytest captures file descriptor 2 while checks run, and the long steps (scans, defense) run
    # inside checks: write to a duplicate of the terminal's stderr taken before pytest starts.
    stream = sys.stderr
    if not quiet:
        try:
            stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        except (AttributeError, OSError, ValueError):  # no real descriptor (e.g. click's test runner)
            pass

    def progress(message: str) -> None:
        if not quiet:
            print(f"[auditor {time.perf_counter() - start:6.1f}s] {message}", file=stream, flush=True)

    return progress


@dataclass
class DefenseRecord:
    name: str
    triggers: list[dict]
    seconds: float = 0.0
    samples_used: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    repair: dict[str, Any] | None = None
    after_edit: dict[str, Any] = field(default_factory=dict)  # C-ACC, per-class accuracy and ASR (+ parts) after the defense alone
    stats: dict[str, Any] = field(default_factory=dict)


class AuditSession:
    def __init__(self, config: AuditConfig, progress=None):
        from .scans.base import ScanThresholds

        self.config = config
        self.thresholds = ScanThresholds.from_config(config)
        self.progress = progress or progress_printer(config.quiet)
        self.errors: dict[str, str] = {}
        self.handle = None
        self.split = None
        self.known_trigger = None
        self.paired = None
        self.reference = None
        self._carry_over: dict[int, dict[int, dict]] = {}
        self._strongest = None  # reference_trigger() without a known one
        self.timings: dict[str, float] = {}
        self._scans: dict[str, Any] = {}
        self._metrics: dict[str, dict] = {}
        self._clean_predictions: dict[int, tuple] = {}  # id(handle) -> (handle, its predictions on the evaluation split)
        self._after_handle = None
        self._after_error: BaseException | None = None
        self.defense: DefenseRecord | None = None
        self.defense_needed: bool | None = None
        self.skip_reason: str | None = None
        self.repaired_module_for_parity = None

    # ---------------------------------------------------------------- preparation
    def prepare(self) -> None:
        """Load model, data and trigger; input errors are kept (checks then error out) not raised."""
        from .data import conform, load_data, split
        from .loading import load_model
        from .triggers import load_trigger

        cfg = self.config
        t = time.perf_counter()
        raw = None
        try:
            raw = load_data(cfg.data)
        except AuditorInputError as exc:
            self.errors["data"] = str(exc)
        # the user's own images say the input size a weights-only file does not; the bundled default set does not
        data_shape = tuple(raw.x.shape[1:]) if raw is not None and cfg.data != AuditConfig.data and len(raw) else None
        try:
            self.progress(f"loading {cfg.model}")
            self.handle = load_model(self._request(cfg.model, data_shape=data_shape))
        except AuditorInputError as exc:
            self.errors["model"] = str(exc)
            return
        self.timings["load"] = time.perf_counter() - t
        c, h, w = self.handle.input_shape
        if cfg.paired_model:
            try:
                self.paired = load_model(self._request(cfg.paired_model))
            except AuditorInputError as exc:
                self.errors["paired_model"] = str(exc)
        if cfg.reference_model:
            try:
                self.reference = self._load_reference(cfg.reference_model)
            except AuditorInputError as exc:
                self.errors["reference_model"] = str(exc)
        try:
            if raw is not None:
                data = conform(raw, c, h, w, self.handle.num_classes)
                self.split = split(data, cfg.clean_samples, cfg.seed, self.handle.num_classes)
                self.progress(f"data {data.source}: {len(self.split.fit)} fit samples, {len(self.split.eval)} evaluation samples")
        except AuditorInputError as exc:
            self.errors["data"] = str(exc)
        if cfg.trigger:
            try:
                trigger = load_trigger(cfg.trigger, c, h, w)
                if trigger.target is not None and not 0 <= trigger.target < self.handle.num_classes:
                    raise AuditorInputError(f"{cfg.trigger}: target {trigger.target} is not a class of the model")
                self.known_trigger = trigger
            except AuditorInputError as exc:
                self.errors["trigger"] = str(exc)

    def _load_reference(self, path: Path):
        """The clean reference model: loaded fail-closed like the audited one (its own sidecar; the
        command line's --arch/--input-size/--mean/--std apply to both), same input and classes."""
        from .loading import load_model

        self.progress(f"loading the reference model {path}")
        reference = load_model(self._request(path, metadata_path=None))
        if (reference.input_shape, reference.num_classes) != (self.handle.input_shape, self.handle.num_classes):
            raise AuditorInputError(f"{path}: the reference model takes {reference.input_shape} and gives {reference.num_classes} "
                                    f"classes; the audited model {self.handle.input_shape} and {self.handle.num_classes}")
        return reference

    def _request(self, path: Path, **overrides):
        from .loading import LoadRequest

        cfg = self.config
        base = LoadRequest(path=Path(path), arch=cfg.arch, arch_kwargs=dict(cfg.arch_kwargs), input_shape=cfg.input_shape,
                           mean=cfg.mean, std=cfg.std, metadata_path=cfg.metadata, max_file_bytes=cfg.max_file_bytes,
                           device=cfg.device)
        return replace(base, **overrides)

    def require(self, *what: str) -> None:
        for key in what:
            if key in self.errors:
                raise AuditorInputError(self.errors[key])
        if "model" in what and self.handle is None:
            raise AuditorInputError("the model was not loaded")
        if "data" in what and self.split is None:
            raise AuditorInputError("no clean data was loaded")

    # ---------------------------------------------------------------- per stage
    def model(self, stage: str):
        if stage == "after":
            return self._after()
        self.require("model")
        return self.handle

    def model_file(self, stage: str) -> Path:
        if stage == "before":
            return Path(self.config.model)
        self._after()
        from .outputs import repaired_model_file

        return Path(repaired_model_file(self.defense.outputs))

    def scan(self, stage: str):
        if stage not in self._scans:
            from .registry import SCANS
            from . import scans  # noqa: F401  (registers the scans)

            handle = self.model(stage)
            self.require("data", *(["reference_model"] if self.config.reference_model else []))
            entry = SCANS.get(self.config.scan)
            self.progress(f"{entry.name} scan of the {stage} model ({handle.num_classes} classes)")
            result = entry.factory(handle, self.split, self.config.scan_params, self.config.seed, self.progress)
            self.timings[f"scan_{stage}"] = result.seconds
            if self.reference is not None:
                self._carry_over[id(result)] = self._carry_over_rates(handle, result)
            flagged = self.flagged(result)
            self.progress(f"{entry.name} done in {result.seconds:.1f}s: flagged classes {flagged or 'none'}")
            self._scans[stage] = result
        return self._scans[stage]

    def scan_result(self, stage: str):
        """The stage's scan result if it has run, else None (renderers must not start a scan)."""
        return self._scans.get(stage)

    def flagged(self, result) -> list[int]:
        """The classes a scan result points at under this audit's thresholds, most suspicious first."""
        return result.flagged(self.thresholds)

    def carry_over(self, result) -> dict[int, dict]:
        """With a reference model: per flagged class, its recovered triggers' ASR on the scanned model
        and on the reference. Evidence for a person, not a verdict: a planted patch, blend or warp
        trigger does not carry over to a model trained without it (0-1% on the zoo) while a feature
        of the data does (Fashion-MNIST's Bag: 28-50%), but so does much of SIG's (7-44%, by
        reference): no share separates the two (docs/benchmarks.md, "A clean reference model")."""
        return self._carry_over.get(id(result), {})

    def _carry_over_rates(self, handle, result) -> dict[int, dict]:
        """Per flagged class: its recovered triggers' mean ASR on the scanned model and on the
        reference, both on the audit's clean fit samples."""
        rates = {}
        for c in self.flagged(result):
            triggers = self.recovered_triggers(result, c)
            rates[c] = {"asr": self._mean_fit_asr(handle, triggers, c), "reference_asr": self._mean_fit_asr(self.reference, triggers, c)}
        return rates

    def _mean_fit_asr(self, handle, triggers, target) -> float:
        return sum(self._fit_asr(handle, t, target) for t in triggers) / len(triggers)

    def _fit_asr(self, handle, trigger, target) -> float:
        """The share of the audit's clean fit samples (not of `target`) that `trigger` sends to `target`."""
        from .metrics import attack_success_rate

        fit = self.split.fit
        return attack_success_rate(handle.predict(trigger.apply(fit.x)), fit.y, target)

    def metrics(self, stage: str) -> dict:
        """C-ACC and per-class accuracy; ASR too once a trigger is known or recovered (else None)."""
        if stage not in self._metrics:
            handle = self.model(stage)
            self.require("data")
            self._metrics[stage] = self.measure(handle, with_attack=False)
        metrics = self._metrics[stage]
        if metrics["asr_trigger"] is None and self.reference_trigger() is not None:
            metrics.update(self.measure_attack(self.model(stage), self.reference_trigger()))
        return metrics

    def measure(self, handle, with_attack: bool = True) -> dict:
        ev = self.split.eval
        pred = self._predict_clean(handle)
        out = {
            "c_acc": accuracy(pred, ev.y),
            "per_class_acc": per_class_accuracy(pred, ev.y, handle.num_classes),
            "eval_per_class": torch.bincount(ev.y, minlength=handle.num_classes).tolist(),
            "asr": None, "asr_trigger": None, "target": None, "r_acc": None, "eval_samples": len(ev),
        }
        trigger = self.reference_trigger()
        if with_attack and trigger is not None:
            out.update(self.measure_attack(handle, trigger))
        return out

    def measure_attack(self, handle, trigger) -> dict:
        """ASR, and what it is made of: `asr_no_trigger`, the share of the same images the model sends to
        the target WITHOUT the trigger (its own confusion, which a defense that keeps the class leaves in
        place), and `asr_trigger_flips`, those the trigger itself moves there."""
        ev = self.split.eval
        triggered = handle.predict(trigger.apply(ev.x))
        clean = self._predict_clean(handle)
        targets = trigger.target_labels(ev.y, handle.num_classes)
        keep = ev.y != targets
        return {"asr": attack_success_rate(triggered, ev.y, targets), "asr_trigger": trigger.source,
                "target": trigger.target, "r_acc": accuracy(triggered[keep], ev.y[keep]),
                "asr_no_trigger": attack_success_rate(clean, ev.y, targets),
                "asr_trigger_flips": trigger_flip_rate(clean, triggered, ev.y, targets)}

    def _predict_clean(self, handle):
        """handle's predictions on the evaluation split, once per model (measure and measure_attack both need them)."""
        if id(handle) not in self._clean_predictions:  # the handle is kept with them, so its id is not reused
            self._clean_predictions[id(handle)] = (handle, handle.predict(self.split.eval.x))
        return self._clean_predictions[id(handle)][1]

    def reference_trigger(self):
        """The trigger ASR is measured with: the known one, else the top recovered one from the BEFORE scan."""
        if self.known_trigger is not None:
            return self.known_trigger
        result = self._scans.get("before")
        if result is None:
            return None
        flagged = self.flagged(result)
        if not flagged:
            return None
        if self._strongest is None:
            self._strongest = self._strongest_trigger(self.recovered_triggers(result, flagged[0]))
        return self._strongest

    def _strongest_trigger(self, triggers):
        """Of a class's recovered triggers (16 sampled patches, a warp, a mask), the one that works best on
        the delivered model, judged on the fit samples (the evaluation split chooses nothing): the first
        sampled patch was an arbitrary pick, 75% on the ResNet-18 whose patches averaged 91%."""
        return max(triggers, key=lambda t: self._fit_asr(self.handle, t, t.target))

    def recovered_triggers(self, result, cls) -> list:
        """The scan's stand-ins for class `cls`'s trigger (what the defense unlearns)."""
        return result.triggers(cls, self.handle.input_shape, self.thresholds)

    # ---------------------------------------------------------------- defense
    def decide_defense(self, backdoor_failed: bool) -> None:
        self.defense_needed = backdoor_failed
        if self.handle is None or self.split is None:
            self.skip_reason = "the model or the data could not be loaded: nothing to repair"
        elif not backdoor_failed:
            self.skip_reason = "no backdoor check failed: no defense applied"
        elif self.config.defense == "none":
            self.skip_reason = "a backdoor check failed but --defense none was chosen"

    def _after(self):
        if self.defense_needed is None:
            raise StageSkipped("the before stage has not run")
        if self.skip_reason:
            raise StageSkipped(self.skip_reason)
        if self._after_error is not None:
            raise self._after_error
        if self._after_handle is None:
            try:
                self._after_handle = self._run_defense()
            except BaseException as exc:
                self._after_error = exc
                raise
        return self._after_handle

    def _run_defense(self):
        from .defenses import unlearn
        from .loading import load_model
        from .outputs import repaired_metadata, repaired_model_file, write_repaired
        from .registry import DEFENSES

        cfg = self.config
        self.require("model", "data")
        entry = DEFENSES.get(cfg.defense)
        before_scan = self._scans.get("before")
        flagged = self.flagged(before_scan) if before_scan is not None else []
        # A known trigger is the real thing: unlearn it, plus what the scan found for OTHER classes.
        known = [self.known_trigger] if self.known_trigger is not None else []
        known_targets = {t.target for t in known}
        triggers = known + [t for c in flagged if c not in known_targets for t in self.recovered_triggers(before_scan, c)]
        if not triggers:
            raise RuntimeError("a backdoor check failed but no trigger (recovered or known) is available to unlearn")
        kinds = {(t.target_name, t.source, t.kind): 0 for t in triggers}
        for t in triggers:
            kinds[(t.target_name, t.source, t.kind)] += 1
        record = DefenseRecord(entry.name, [{"target": k[0], "source": k[1], "kind": k[2], "count": n} for k, n in kinds.items()])
        self.defense = record
        targets = [str(c) for c in sorted({t.target for t in triggers if t.target is not None})]
        targets += ["all-to-all"] if any(t.target is None for t in triggers) else []
        self.progress(f"defense {entry.name}: unlearning the triggers for target(s) {', '.join(targets)} ({len(triggers)} known or "
                      "recovered)")
        done = unlearn(self.handle, self.split.fit, triggers, entry.name, cfg.defense_params, cfg.repair, cfg.repair_params,
                       cfg.seed, self.progress)
        edit_metrics = self.measure(done.edited)
        record.after_edit = {k: edit_metrics[k] for k in ("c_acc", "per_class_acc", "asr", "asr_no_trigger", "asr_trigger_flips")
                             if k in edit_metrics}
        record.samples_used, record.stats, record.repair = done.outcome.samples_used, done.outcome.stats, done.repair_stats
        record.seconds = done.seconds
        self.timings["defense"] = record.seconds
        final = done.final
        info = self.handle.info
        arch = cfg.arch or (info.metadata.get("arch", {}) or {}).get("callable")
        kwargs = dict(cfg.arch_kwargs) or dict((info.metadata.get("arch", {}) or {}).get("kwargs", {}))
        protected = tuple(p for p in (cfg.model, cfg.paired_model, cfg.reference_model, cfg.trigger, cfg.metadata) if p)
        provenance = {"defense": entry.name, "defense_params": dict(cfg.defense_params), "repair": cfg.repair,
                      "triggers": record.triggers, "seed": cfg.seed}
        written = write_repaired(final, self.handle, cfg.output_dir, protected,
                                 metadata=repaired_metadata(info, arch, kwargs, provenance))
        record.outputs = {k: str(v) for k, v in written.items()}
        self.progress(f"repaired model written: {', '.join(record.outputs.values())}")
        # The after stage audits the files as written, loaded back through the same fail-closed loader.
        reload_path = repaired_model_file(written)
        request = self._request(reload_path, arch=arch, arch_kwargs=kwargs, input_shape=info.input_shape,
                                mean=info.mean, std=info.std, metadata_path=None)
        after = load_model(replace(request, path=Path(reload_path)))
        after.info = replace(after.info, metadata=info.metadata)
        self.repaired_module_for_parity = final.module
        return after
