"""One audit's state: the loaded model, data split, scans, metrics and the defense, computed lazily
and cached so every check of a stage shares one pass (no check re-runs inference or a scan)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import AuditConfig
from .errors import AuditorInputError
from .defense_stage import DefenseRecord
from .evaluation import Evaluation

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


class AuditSession:
    def __init__(self, config: AuditConfig, progress=None):
        from .scans.base import ScanThresholds

        from .report.provenance import utc_now

        self.config = config
        self.started_utc = utc_now()
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
        self.compute_mode = None  # the auditor.compute.ComputeMode every scan of this audit runs in
        self.budget_plans: dict[str, Any] = {}  # stage -> auditor.budget.StagePlan, with --budget
        self._clock = time.perf_counter()  # --budget counts from here
        self._metrics: dict[str, dict] = {}
        self.evaluation: Evaluation | None = None
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
        if not self.data_free:
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
        if self.data_free:
            self._synthesize()
        try:
            if raw is not None:
                data = conform(raw, c, h, w, self.handle.num_classes)
                self.split = split(data, cfg.clean_samples, cfg.seed, self.handle.num_classes)
                self.evaluation = Evaluation(self.split)
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

    @property
    def data_free(self) -> bool:
        from .config import NO_DATA

        return self.config.data == NO_DATA

    def _synthesize(self) -> None:
        """--data none: inputs inverted from the model stand in where a scan or a comparison needs images."""
        from .synthesis import SynthesisParams, synthesized_split

        t = time.perf_counter()
        params = SynthesisParams(per_class=2 * self.config.clean_samples)
        self.progress(f"--data none: synthesizing {params.per_class} inputs per class from the model")
        self.split = synthesized_split(self.handle, params, self.config.seed, self.progress)
        self.evaluation = Evaluation(self.split)
        self.timings["synthesis"] = time.perf_counter() - t
        if not len(self.split.fit):
            self.errors["data"] = "--data none: no synthesized input was predicted as its class: nothing to scan"

    def agreement(self, stage: str) -> float:
        """Share of the synthesized inputs on which the stage's model predicts what the delivered one does."""
        x = torch.cat([self.split.fit.x, self.split.eval.x])
        return float((self.model(stage).predict(x) == self.handle.predict(x)).float().mean())

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
            mode = self._compute_mode(handle)
            bound = self._say_cost(entry, handle, stage, mode)
            params = self._budgeted_params(entry, handle, stage, bound)
            with handle.optimising(mode):
                result = entry.factory(handle, self.split, params, self.config.seed, self.progress)
            self.timings[f"scan_{stage}"] = result.seconds
            if self.reference is not None:
                self._carry_over[id(result)] = self._carry_over_rates(handle, result)
            flagged = self.flagged(result)
            self.progress(f"{entry.name} done in {result.seconds:.1f}s: flagged classes {flagged or 'none'}")
            self._scans[stage] = result
        return self._scans[stage]

    def _compute_mode(self, handle):
        """Chosen once, on the first model scanned: the repaired one has the same architecture."""
        if self.compute_mode is not None:
            return self.compute_mode
        from .compute import choose_mode, rates_text

        mode = self.compute_mode = choose_mode(handle, self.config.scan_precision)
        rates = rates_text(mode.measured)
        why = (f"--scan-precision {self.config.scan_precision}" if self.config.scan_precision != "auto"
               else "auto: this hardware has bfloat16" if mode.native_bfloat16 else "auto: no bfloat16 in this hardware")
        self.progress(f"scan compute: {mode.name} ({why}; images/s forward + backward measured here: {rates})")
        return mode

    def _budgeted_params(self, entry, handle, stage: str, full: dict | None) -> dict:
        """The scan parameters this stage runs with: the configured ones, or with --budget the step counts
        scaled to fit this stage's share of it (auditor/budget.py), priced at `full`'s rate (`_say_cost`)."""
        if self.config.budget is None:
            return self.config.scan_params
        from .budget import BEFORE_SHARE, AFTER_RESERVE, plan_stage

        if full is None:
            self.progress(f"budget: the {entry.name} scan does not count its steps; it runs at its full budget")
            return self.config.scan_params
        rate, classes = full["images_per_second"], handle.num_classes
        spent = time.perf_counter() - self._clock
        share = BEFORE_SHARE * self.config.budget - spent if stage == "before" else (1 - AFTER_RESERVE) * (self.config.budget - spent)
        plan, params = plan_stage(stage, max(share, 0.0), lambda p: entry.params_type(**p).image_passes(classes) / rate,
                                  entry.params, self.config.scan_params)
        self.budget_plans[stage] = plan
        self.progress(plan.message(entry.name))
        return params

    def _say_cost(self, entry, handle, stage: str, mode=None) -> dict | None:
        """Before a long scan: what its full budget costs in image passes and seconds on this machine (kept in
        timings); returns cost.scan_full_budget's bound, or None for a scan that does not count its passes."""
        from .cost import scan_full_budget

        bound = scan_full_budget(entry.params_type, self.config.scan_params, handle, mode)
        if bound is None:
            return None
        self.timings[f"scan_{stage}_full_budget_estimate"] = bound["seconds"]
        self.progress(f"{entry.name}: full budget {bound['image_passes']:,} image passes at {bound['images_per_second']:,.0f} "
                      f"images/s (forward + backward, measured here): about {bound['seconds']:.0f}s; "
                      "early stopping usually ends it sooner")
        return bound

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
            rates[c] = {"asr": self.evaluation.mean_fit_asr(handle, triggers, c),
                        "reference_asr": self.evaluation.mean_fit_asr(self.reference, triggers, c)}
        return rates

    def metrics(self, stage: str) -> dict:
        """C-ACC and per-class accuracy; ASR too once a trigger is known or recovered (else None)."""
        if stage not in self._metrics:
            handle = self.model(stage)
            self.require("data")
            self._metrics[stage] = self.evaluation.measure(handle)
        metrics = self._metrics[stage]
        if metrics["asr_trigger"] is None and self.reference_trigger() is not None:
            metrics.update(self.evaluation.measure_attack(self.model(stage), self.reference_trigger()))
        return metrics

    def measured_stages(self) -> list[str]:
        """The stages whose metrics a check asked for (renderers report those and start nothing new)."""
        return [s for s in STAGES if s in self._metrics]

    def reference_trigger(self):
        """The trigger ASR is measured with: the known one, else the strongest recovered one (on the fit
        samples) for the BEFORE scan's most suspicious flagged class."""
        if self.known_trigger is not None:
            return self.known_trigger
        result = self._scans.get("before")
        if result is None:
            return None
        flagged = self.flagged(result)
        if not flagged:
            return None
        if self._strongest is None:
            self._strongest = self.evaluation.strongest(self.handle, self.recovered_triggers(result, flagged[0]))
        return self._strongest

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
        from .defense_stage import repair_and_reload, triggers_to_unlearn

        self.require("model", "data")
        triggers = triggers_to_unlearn(self.known_trigger, self._scans.get("before"), self.handle.input_shape, self.thresholds)
        repaired = repair_and_reload(self.config, self.handle, self.split, triggers,
                                     None if self.data_free else self.evaluation, self.reference_trigger(),
                                     self._request(self.config.model), self.progress)
        self.defense = repaired.record
        self.timings["defense"] = repaired.record.seconds
        self.repaired_module_for_parity = repaired.module
        return repaired.handle
