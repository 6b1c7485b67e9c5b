"""The after stage's model: which triggers to unlearn, the unlearning pipeline, the repaired files
written next to nothing the user owns, and those files loaded back through the same fail-closed
loader, so the after stage audits what was written rather than a model held in memory."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import AuditConfig
from .data import Split
from .evaluation import Evaluation
from .loading import LoadRequest, load_model
from .model import ModelHandle


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


@dataclass
class Repaired:
    record: DefenseRecord
    handle: ModelHandle  # the repaired files, loaded back
    module: Any  # the repaired torch module as it was exported (the ONNX parity check compares the two)


def classes_to_unlearn(scan_result, thresholds) -> list[int]:
    """The classes whose recovered triggers the defense unlearns: the flagged ones, then, when the scan
    flagged any, its suspects (a flag that may have named the wrong class; a known trigger's failure
    alone does not make a suspect worth unlearning)."""
    if scan_result is None:
        return []
    flagged = scan_result.flagged(thresholds)
    return flagged + [c for c in scan_result.suspects(thresholds) if c not in flagged] if flagged else []


def triggers_to_unlearn(known, scan_result, input_shape, thresholds) -> list:
    """A known trigger is the real thing: unlearn it, plus what the scan found for the OTHER classes it
    flagged or suspects."""
    known_list = [known] if known is not None else []
    known_targets = {t.target for t in known_list}
    classes = [c for c in classes_to_unlearn(scan_result, thresholds) if c not in known_targets]
    out = known_list + [t for c in classes for t in scan_result.triggers(c, input_shape, thresholds)]
    # one all-to-all trigger stands for all the classes it sends images to: unlearned once
    return [t for i, t in enumerate(out) if not any(t is u for u in out[:i])]


def _summarise(triggers: list) -> list[dict]:
    counts: dict[tuple, int] = {}
    for t in triggers:
        key = (t.target_name, t.source, t.kind)
        counts[key] = counts.get(key, 0) + 1
    return [{"target": k[0], "source": k[1], "kind": k[2], "count": n} for k, n in counts.items()]


def repair_and_reload(config: AuditConfig, handle: ModelHandle, split: Split, triggers: list, evaluation: Evaluation | None,
                      measured_trigger, request: LoadRequest, progress) -> Repaired:
    """Unlearn `triggers` from `handle` with the configured defense and repair, write the result in the
    delivered model's format under --output-dir, and load it back. `measured_trigger` is what the
    after-the-defense-alone numbers are measured with; `request` is the audit's load request, which
    the reload reuses with the resolved architecture and input."""
    from .defenses import unlearn
    from .outputs import repaired_metadata, repaired_model_file, write_repaired
    from .registry import DEFENSES

    cfg = config
    entry = DEFENSES.get(cfg.defense)
    if not triggers:
        raise RuntimeError("a backdoor check failed but no trigger (recovered or known) is available to unlearn")
    record = DefenseRecord(entry.name, _summarise(triggers))
    targets = [str(c) for c in sorted({t.target for t in triggers if t.target is not None})]
    targets += ["all-to-all"] if any(t.target is None for t in triggers) else []
    progress(f"defense {entry.name}: unlearning the triggers for target(s) {', '.join(targets)} ({len(triggers)} known or recovered)")
    done = unlearn(handle, split.fit, triggers, entry.name, cfg.defense_params, cfg.repair, cfg.repair_params, cfg.seed, progress)
    if evaluation is not None:  # none without real data: nothing to measure the edit on
        edit_metrics = evaluation.measure(done.edited, measured_trigger)
        record.after_edit = {k: edit_metrics[k] for k in ("c_acc", "per_class_acc", "asr", "asr_no_trigger", "asr_trigger_flips")
                             if k in edit_metrics}
    record.samples_used, record.stats, record.repair = done.outcome.samples_used, done.outcome.stats, done.repair_stats
    record.seconds = done.seconds
    info = handle.info
    arch = cfg.arch or (info.metadata.get("arch", {}) or {}).get("callable")
    kwargs = dict(cfg.arch_kwargs) or dict((info.metadata.get("arch", {}) or {}).get("kwargs", {}))
    protected = tuple(p for p in (cfg.model, cfg.paired_model, cfg.reference_model, cfg.trigger, cfg.metadata) if p)
    provenance = {"defense": entry.name, "defense_params": dict(cfg.defense_params), "repair": cfg.repair,
                  "triggers": record.triggers, "seed": cfg.seed}
    written = write_repaired(done.final, handle, cfg.output_dir, protected, metadata=repaired_metadata(info, arch, kwargs, provenance))
    record.outputs = {k: str(v) for k, v in written.items()}
    progress(f"repaired model written: {', '.join(record.outputs.values())}")
    after = load_model(replace(request, path=Path(repaired_model_file(written)), arch=arch, arch_kwargs=kwargs,
                               input_shape=info.input_shape, mean=info.mean, std=info.std, metadata_path=None))
    after.info = replace(after.info, metadata=info.metadata)
    return Repaired(record, after, done.final.module)
