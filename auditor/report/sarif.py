"""The audit as a SARIF 2.1.0 log, for code-scanning dashboards (GitHub code scanning, Azure DevOps, IDE viewers).

Choices a dashboard depends on:

- ruleId is "auditor/" + the check's function name (e.g. "auditor/check_trigger_scan"): the name is what a
  check is known by in reports and --checks-dir plugins, it does not change between runs or releases, and the
  prefix keeps it apart from other tools' rules on a shared dashboard.
- Only checks that failed or errored become results (kind "fail", level "error"). Dashboards treat every
  result as an alert (GitHub does not read `kind`), so passed and skipped checks would be noise there;
  every check's outcome is kept in run.properties["checks"] instead, and an alert closes itself when a
  later upload for the same model no longer reports it.
- A result's location is the file it is about: the model as delivered for stage "before", the repaired
  model file for stage "after" (the delivered model when there is none). Model files are binary, so there
  is no region.
- partialFingerprints["auditorFinding/v1"] is SHA-256 over ruleId, stage, the check's id and the DELIVERED
  model's SHA-256 (also for "after" results: a repaired file's bytes may differ between runs). Re-auditing
  the same model de-duplicates; a new model version is a new finding.
- automationDetails.id is "auditor/<model path>/", so each audited model is its own analysis category and
  one model's upload does not close another model's alerts.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from pathlib import Path, PurePath
from urllib.parse import quote

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
RULE_PREFIX = "auditor/"
FINGERPRINT_KEY = "auditorFinding/v1"
STAGES = {"before": "the model as delivered", "after": "the repaired model"}
TAGS = ["security", "ml-supply-chain"]


def rule_id(check_name: str) -> str:
    return RULE_PREFIX + check_name


ACRONYMS = {"asr": "ASR", "onnx": "ONNX", "nc": "NC"}


def readable(check_name: str) -> str:
    """"check_known_trigger_asr" -> "Known trigger ASR"."""
    words = [ACRONYMS.get(w, w) for w in check_name.removeprefix("check_").split("_") if w] or [check_name]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


def artifact_location(path: str) -> dict:
    """SARIF wants URIs: an absolute path becomes a file URI, a relative one stays relative to %SRCROOT%
    (the folder the audit ran in, which in CI is the checkout)."""
    p = Path(path)
    if p.is_absolute():
        return {"uri": p.as_uri()}
    return {"uri": quote(PurePath(path).as_posix(), safe="/"), "uriBaseId": "%SRCROOT%"}


def fingerprint(check: dict, model_sha256: str | None, model_path: str) -> str:
    parts = [rule_id(check.get("name", "")), check.get("stage", ""), str(check.get("id", "")).split("::")[-1],
             model_sha256 or f"path:{model_path}"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _finite(value):
    """SARIF is strict JSON: NaN and infinities become strings rather than invalid tokens."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _repaired_model(result: dict) -> str | None:
    outputs = (result.get("defense") or {}).get("outputs") or {}
    if outputs.get("onnx"):
        return outputs["onnx"]
    return next((p for kind, p in outputs.items() if kind != "metadata" and p), None)


def _artifacts(result: dict) -> list[dict]:
    """The delivered model first, then the defense's written files, each hashed where the result says how."""
    model = result.get("model") or {}
    provenance = result.get("provenance") or {}
    written = {str(o.get("path")): o for o in provenance.get("outputs") or [] if isinstance(o, dict)}
    entries = []
    if model.get("path"):
        entries.append(("model as delivered", model["path"], model.get("sha256"), model.get("size_bytes"), True))
    repaired = _repaired_model(result)
    for kind, path in ((result.get("defense") or {}).get("outputs") or {}).items():
        if path:
            out = written.get(str(path), {})
            what = "repaired model's metadata" if kind == "metadata" else f"repaired model ({kind})"
            entries.append((what, str(path), out.get("sha256"), out.get("size_bytes"), path == repaired))
    artifacts = []
    for what, path, sha, size, target in entries:
        artifact = {"location": artifact_location(path), "description": {"text": what}}
        if target:
            artifact["roles"] = ["analysisTarget"]
        if sha:
            artifact["hashes"] = {"sha-256": sha}
        if isinstance(size, int):
            artifact["length"] = size
        artifacts.append(artifact)
    return artifacts


def _rules(checks: list[dict]) -> list[dict]:
    rules: dict[str, dict] = {}
    for check in checks:
        name = check.get("name") or "unnamed"
        rule = rules.get(name)
        if rule is None:
            tags = TAGS + (["backdoor"] if check.get("backdoor") else [])
            rule = rules[name] = {
                "id": rule_id(name), "name": name, "shortDescription": {"text": readable(name)},
                "defaultConfiguration": {"level": "error"}, "properties": {"tags": tags},
            }
        condition = (check.get("properties") or {}).get("condition")
        if isinstance(condition, str) and condition and "fullDescription" not in rule:
            rule["fullDescription"] = {"text": condition}
    return list(rules.values())


def _invocation(result: dict) -> dict:
    provenance = result.get("provenance") or {}
    code = result.get("exit_code")
    invocation: dict = {"executionSuccessful": code != 2}
    if isinstance(code, int):
        invocation["exitCode"] = code
    argv = provenance.get("command_line")
    if argv:
        invocation["commandLine"] = shlex.join(str(a) for a in argv)
        invocation["arguments"] = [str(a) for a in argv[1:]]
    for key, field in (("timestamp", "startTimeUtc"), ("finished", "endTimeUtc")):
        if provenance.get(key):
            invocation[field] = provenance[key]
    notes = [{"level": "error", "message": {"text": str(e)}} for e in result.get("errors") or []]
    if notes:
        invocation["toolExecutionNotifications"] = notes
    return invocation


def _run_properties(result: dict) -> dict:
    metrics = result.get("metrics") or {}
    props = {
        "verdict": result.get("verdict"), "gate": result.get("gate"), "schema_version": result.get("schema_version"),
        "metrics": {stage: {k: (metrics.get(stage) or {}).get(k) for k in ("asr", "c_acc")}
                    for stage in ("before", "after") if isinstance(metrics.get(stage), dict)},
        "checks": [{"ruleId": rule_id(c.get("name", "")), "stage": c.get("stage"), "outcome": c.get("outcome")}
                   for c in result.get("checks") or []],
    }
    if result.get("scan"):
        props["flagged_classes"] = result["scan"].get("flagged_classes")
    defense = result.get("defense") or {}
    if defense:
        props["defense"] = {"name": defense.get("name"), "applied": bool(defense.get("applied"))}
    ci = (result.get("provenance") or {}).get("ci")
    if ci:
        props["ci"] = ci
    return props


def sarif_log(result: dict) -> dict:
    model = result.get("model") or {}
    model_path, model_sha = str(model.get("path") or "model"), model.get("sha256")
    checks = [c for c in result.get("checks") or [] if isinstance(c, dict)]
    rules = _rules(checks)
    rule_index = {r["name"]: i for i, r in enumerate(rules)}
    artifacts = _artifacts(result)
    index_of = {a["location"]["uri"]: i for i, a in enumerate(artifacts)}
    repaired = _repaired_model(result)

    results = []
    for check in checks:
        outcome = check.get("outcome")
        if outcome not in ("failed", "error"):
            continue
        name, stage = check.get("name") or "unnamed", check.get("stage") or "before"
        path = repaired if stage == "after" and repaired else model_path
        location = artifact_location(path)
        if location["uri"] in index_of:
            location["index"] = index_of[location["uri"]]
        what = "errored" if outcome == "error" else "failed"
        text = f"{readable(name)} {what} on {STAGES.get(stage, stage)} ({stage}): {check.get('message') or what}"
        results.append({
            "ruleId": rule_id(name), "ruleIndex": rule_index[name], "kind": "fail", "level": "error",
            "message": {"text": text},
            "locations": [{"physicalLocation": {"artifactLocation": location}}],
            "partialFingerprints": {FINGERPRINT_KEY: fingerprint(check, model_sha, model_path)},
            "properties": {"stage": stage, "outcome": outcome, "check_id": check.get("id"),
                           "backdoor": bool(check.get("backdoor")), "seconds": check.get("seconds"),
                           "details": check.get("properties") or {}},
        })

    version = ((result.get("provenance") or {}).get("tool") or {}).get("version") \
        or (result.get("versions") or {}).get("auditor")
    driver = {"name": "auditor", "rules": rules}
    if version:
        driver["version"] = str(version)
    run = {
        "tool": {"driver": driver},
        "automationDetails": {"id": f"auditor/{PurePath(model_path).as_posix().strip('/')}/"},
        "invocations": [_invocation(result)],
        "artifacts": artifacts,
        "results": results,
        "properties": _run_properties(result),
    }
    return _finite({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]})


def write_sarif(path: Path, result: dict) -> None:
    """Written atomically (a temp file in the same folder, then a rename): a dashboard upload never reads half a file."""
    from ..outputs import atomic_write

    text = json.dumps(sarif_log(result), indent=1, allow_nan=False, default=str) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text), protected=())
