"""The audit's result model: one dict that every renderer reads (HTML, JSON, JUnit), and the exit code.

Its `pictures` (base64 PNGs) are for the HTML report; the JSON file leaves them out."""

from __future__ import annotations

import platform

from ..registry import SCANS
from .provenance import build_provenance

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2

# The JSON result's format (result.schema.json beside this file). Bump the minor number for added
# keys, the major one for a removed or changed key.
SCHEMA_VERSION = "1.0"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("auditor", "torch", "torchvision", "onnx", "onnxruntime-gpu", "onnxruntime", "onnx2torch", "numpy",
                 "safetensors", "pytest", "pytest-html"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _round(value, digits=4):
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** -digits:  # a p-value of 3e-6 is not 0: keep three significant digits
            return float(f"{value:.3g}")
        return round(value, digits)
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    return value


def verdict_and_exit(records, session, pytest_exit: int | None, collected: int, gate: str) -> tuple[str, int, list[str]]:
    errors = list(session.errors.values())
    for r in records:  # one line per distinct cause: a model that did not load errors every check
        if r.outcome == "error" and r.message not in errors and f"{r.name}: {r.message}" not in errors:
            errors.append(r.message if r.message.startswith("cannot collect") else f"{r.name}: {r.message}")
    if collected == 0:
        errors.append("no checks were collected")
    if pytest_exit is not None and pytest_exit not in (0, 1):
        errors.append(f"pytest ended with exit status {pytest_exit}")
    if errors:
        return "error", EXIT_ERROR, errors
    after_ran = any(r.stage == "after" and r.outcome != "skipped" for r in records)
    stage = "after" if gate == "after" and after_ran else "before"
    failed = [r for r in records if r.outcome == "failed" and r.stage == stage]
    return ("fail", EXIT_FAIL, []) if failed else ("pass", EXIT_PASS, [])


def _scan_dict(session, result, stage: str) -> dict:
    flagged = session.flagged(result)
    from ..defense_stage import classes_to_unlearn

    suspected = [c for c in classes_to_unlearn(result, session.thresholds) if c not in flagged]  # only when something is flagged
    out = {"flagged_classes": flagged, "suspected_classes": suspected, **result.summary(), "limits": SCANS.limits(result.method)}
    if session.compute_mode is not None:
        out["compute"] = session.compute_mode.summary()
    if stage in session.budget_plans:
        out["budget"] = session.budget_plans[stage].summary()
    if session.reference is not None:
        out["reference_model"] = str(session.config.reference_model)
        out["carry_over"] = {str(c): r for c, r in session.carry_over(result).items()}
    return _round(out)


def _class_label(names: list, c: int) -> str:
    return f"{c} ({names[c]})" if c < len(names) else str(c)


def _pictures(session, result: dict) -> list[dict]:
    """The report's pictures as data (titles and base64 PNGs), so renderers need no live tensors: what
    the before scan recovered for its flagged classes (or its most suspicious one), and the known trigger."""
    if session.split is None or session.handle is None:
        return []
    from .images import applied_pictures, predicted_labels

    example = session.split.eval.x[0]
    names = (result.get("model") or {}).get("class_names") or []
    groups = []
    handle = session.handle

    def predict(image) -> str:
        return _class_label(names, int(handle.logits(image.unsqueeze(0)).argmax(1)[0]))

    with predicted_labels(predict):
        scan = session.scan_result("before")
        if scan is not None:
            shown = session.flagged(scan) or scan.ranking()[:1]
            groups += scan.pictures(shown[:4], session.thresholds, example, lambda c: _class_label(names, c))
        trigger = session.known_trigger
        if trigger is not None:
            target = trigger.target_name if trigger.target is None else _class_label(names, trigger.target)
            # beside the first recovered trigger, so the two can be compared at a glance
            groups.insert(min(1, len(groups)), (f"Known trigger (--trigger, {trigger.kind}), target class {target}",
                                                list(applied_pictures(trigger, example).items())))
    return [{"title": title, "images": [list(pair) for pair in images]} for title, images in groups]


def build_result(plugin, pytest_exit: int | None = None) -> dict:
    session = plugin.session
    cfg = session.config
    records = list(plugin.records.values())
    verdict, code, errors = verdict_and_exit(records, session, pytest_exit, plugin.collected, cfg.gate)
    out: dict = {
        "schema_version": SCHEMA_VERSION,
        "verdict": verdict,
        "exit_code": code,
        "gate": cfg.gate,
        "errors": errors,
        "model": {"path": str(cfg.model), "sha256": None, "format": None},
        "checks": [
            {"id": r.id, "name": r.name, "stage": r.stage, "outcome": r.outcome, "message": r.message,
             "seconds": r.seconds, "backdoor": r.backdoor, "properties": _round(r.properties)}
            for r in records
        ],
        "scan": None,
        "defense": None,
        "metrics": {"before": None, "after": None},
        "seed": cfg.seed,
        "config": {"data": cfg.data, "clean_samples": cfg.clean_samples, "scan": cfg.scan, "scan_precision": cfg.scan_precision, "budget_seconds": cfg.budget, "defense": cfg.defense,
                   "repair": cfg.repair, "min_accuracy": cfg.min_accuracy, "max_accuracy_drop": cfg.max_accuracy_drop,
                   "max_class_drop": cfg.max_class_drop,
                   "anomaly_threshold": cfg.anomaly_threshold, "max_mask_ratio": cfg.max_mask_ratio, "min_generative_asr": cfg.min_generative_asr, "nc_alone_threshold": cfg.nc_alone_threshold, "max_blend_ratio": cfg.max_blend_ratio, "max_all_to_all_ratio": cfg.max_all_to_all_ratio, "max_margin_p": cfg.max_margin_p, "max_asr": cfg.max_asr,
                   "reference_model": str(cfg.reference_model) if cfg.reference_model else None,
                   "trigger": str(cfg.trigger) if cfg.trigger else None},
        "versions": versions(),
        "timings": _round(dict(session.timings), 2),
    }
    if session.handle is not None:
        info = session.handle.info
        out["model"] = {
            "path": info.path, "sha256": info.sha256, "format": info.format, "size_bytes": info.size_bytes,
            "param_count": info.param_count, "input_shape": list(info.input_shape), "num_classes": info.num_classes,
            "arch": info.arch, "opset": info.opset, "mean": list(info.mean), "std": list(info.std), "notes": list(info.notes),
            "class_names": info.metadata.get("class_names"), "device": info.device,
            "onnxruntime_providers": list(info.ort_providers), "external_files": list(info.external_files),
        }
    if session.split is not None:
        out["data"] = {"source": session.split.fit.source, "fit_samples": len(session.split.fit),
                       "eval_samples": len(session.split.eval)}
    before_scan = session.scan_result("before")
    if before_scan is not None:
        out["scan"] = _scan_dict(session, before_scan, "before")
        if session.scan_result("after") is not None:
            out["scan"]["after"] = _scan_dict(session, session.scan_result("after"), "after")
    for stage in session.measured_stages():
        try:
            out["metrics"][stage] = _round(session.metrics(stage))
        except Exception as exc:  # a metric that cannot be computed must not hide the verdict
            out["metrics"][stage] = {"error": str(exc)}
    out["pictures"] = _pictures(session, out)
    if session.defense is not None:
        d = session.defense
        out["defense"] = _round({
            "name": d.name, "applied": True, "seconds": d.seconds, "outputs": d.outputs, "triggers": d.triggers,
            "samples_used": d.samples_used, "repair": d.repair, "stats": d.stats,
        })
        out["metrics"]["after_edit"] = _round(d.after_edit) or None  # none measured without data
    else:
        out["defense"] = {"name": cfg.defense, "applied": False, "reason": session.skip_reason, "seconds": 0.0,
                          "outputs": {}}
    out["provenance"] = build_provenance(session, out)
    return out
