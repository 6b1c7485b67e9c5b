"""The audit as a CycloneDX 1.6 ML-BOM (JSON), built and serialised with cyclonedx-python-lib.

What maps where, and why:

- metadata.timestamp: provenance.timestamp (when the audit started), else the time the BOM is made.
- metadata.tools: auditor itself, with its version (the 1.5+ `tools.components` form).
- metadata.component: the model as delivered (type machine-learning-model, name = its file name,
  version = the first 12 hex digits of its SHA-256, a SHA-256 hash, bom-ref "model:<sha256>"). It is what
  the BOM is about.
- components: the repaired model a defense wrote (machine-learning-model, its own hash, pedigree.ancestors =
  the delivered model, which it was derived from), its metadata sidecar (file), and the data set the audit
  measured on (data). None of them is a runtime dependency of the delivered model, so the dependency graph
  stays empty on purpose: the links are the pedigree and the model card's dataset reference.
- modelCard of each model: task and input/output formats, the numbers measured on THAT model (C-ACC, ASR,
  R-ACC; the slice says "as delivered" or "after defense+repair", and whether ASR used the known trigger or
  a recovered one), and considerations: the verdict and what failed as an ethical consideration (a risk
  with its mitigation), the scan's stated blind spots as technical limitations. cyclonedx-python-lib
  11.12 has no model-card class (Component.model_card is a TODO there), so the card is added to the
  serialised JSON, which is then checked against the strict 1.6 schema like the rest.
- the audit record has no CycloneDX field of its own, so it goes into properties in the "auditor:"
  namespace: on metadata, auditor:schema_version, auditor:verdict, auditor:exit_code, auditor:gate,
  auditor:error, auditor:check:<stage>:<check name> = outcome, auditor:flagged_classes, auditor:defense,
  auditor:input:<role>:path / :sha256; on each model, auditor:role, auditor:format, auditor:path, ...,
  and auditor:metric:<stage>:<name> (the model card's numbers, for readers that ignore model cards).
- externalReferences of type "evidence": the JSON/HTML/SARIF/JUnit reports provenance.reports names
  (relative to the BOM's folder when written), with their SHA-256 when the file exists then; the CI
  run's URL as "build-system".

A hash is written only where the result holds one (or, for a report, where the file was read): nothing is
guessed. A folder's hash in the provenance is a hash of a file list, not of one file, so it stays a property.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from datetime import datetime
from pathlib import Path

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType, Pedigree
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

NS = "auditor:"
REPORT_KINDS = {"json": "auditor JSON result", "html": "auditor HTML report", "sarif": "SARIF log",
                "junitxml": "JUnit XML"}
STAGE_SLICE = {"before": "as delivered", "after": "after defense+repair"}
METRICS = (("c_acc", "clean accuracy (C-ACC)"), ("asr", "attack success rate (ASR)"),
           ("r_acc", "accuracy on triggered inputs (R-ACC)"))


class InvalidBomError(RuntimeError):
    """The BOM does not validate against the CycloneDX schema: a bug here, never the user's input."""


def _props(items) -> list[Property]:
    return [Property(name=NS + k, value=json.dumps(v) if isinstance(v, bool) else str(v))
            for k, v in items if v is not None and v != ""]


def _sha(value) -> str | None:
    return value.lower() if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value) else None


def _hashes(sha: str | None) -> list[HashType]:
    return [HashType(alg=HashAlgorithm.SHA_256, content=sha)] if sha else []


def _class_label(result: dict, c) -> str:
    names = (result.get("model") or {}).get("class_names") or []
    return f"{c} ({names[c]})" if isinstance(c, int) and 0 <= c < len(names) else str(c)


def _prov(result: dict) -> dict:
    return result.get("provenance") or {}


def _stage_metrics(result: dict, stage: str) -> dict:
    m = (result.get("metrics") or {}).get(stage)
    return m if isinstance(m, dict) and "error" not in m else {}


def _metric_rows(result: dict, stage: str, note: str = "") -> list[tuple[str, str, str]]:
    """(type, value, slice) for each number measured at `stage`; nothing for a number not measured."""
    m = _stage_metrics(result, stage)
    data = (result.get("data") or {})
    rows = []
    for key, label in METRICS:
        if not isinstance(m.get(key), (int, float)):
            continue
        where = STAGE_SLICE[stage] + note
        if m.get("eval_samples"):
            where += f"; {m['eval_samples']} held-out samples of {data.get('source') or 'the audit data'}"
        if key != "c_acc":
            trigger = {"known": "the known trigger (--trigger)", "recovered": "a trigger the scan recovered"}.get(
                m.get("asr_trigger"), f"trigger: {m.get('asr_trigger')}")
            where += f"; {trigger}, target class {_class_label(result, m.get('target'))}"
        rows.append((label, str(m[key]), where))
    return rows


def _checks_line(result: dict, stage: str, outcome: str) -> list[str]:
    return [c.get("name", "?") for c in result.get("checks") or [] if c.get("stage") == stage and c.get("outcome") == outcome]


def _risk(result: dict) -> dict:
    """The verdict as a risk of using the delivered model, worded no stronger than the checks allow."""
    scan = result.get("scan") or {}
    flagged = ", ".join(_class_label(result, c) for c in scan.get("flagged_classes") or [])
    failed = _checks_line(result, "before", "failed")
    verdict = f"audit verdict {result.get('verdict')}, exit code {result.get('exit_code')}, gate: {result.get('gate')} stage"
    if result.get("verdict") == "error":
        name = f"Not assessed: {verdict}: " + "; ".join(result.get("errors") or ["the audit did not complete"])
    elif failed:
        name = f"As delivered, checks failed: {', '.join(failed)}"
        name += (f"; classes flagged as possible backdoor targets: {flagged}" if flagged else "") + f"; {verdict}"
    else:
        name = (f"Backdoors the audit's scans cannot detect: no check failed as delivered; {verdict}; "
                "a pass does not rule out a backdoor (see the technical limitations)")
    defense = result.get("defense") or {}
    if defense.get("applied"):
        after_failed = _checks_line(result, "after", "failed")
        mitigation = f"defense {defense.get('name')} applied and the repaired model re-audited: "
        mitigation += f"after repair, checks failed: {', '.join(after_failed)}" if after_failed else "no check failed after repair"
    else:
        mitigation = defense.get("reason") or "no defense applied"
    return {"name": name, "mitigationStrategy": mitigation}


def _card(result: dict, stages: list[tuple[str, str]], data_ref: str | None) -> dict:
    """A model card; `stages`: (stage, slice note) pairs whose measured numbers belong to this model."""
    model = result.get("model") or {}
    params: dict = {"approach": {"type": "supervised"}, "task": "image classification"}
    arch = model.get("arch")
    if arch == "onnx2torch" or not arch:  # an ONNX file is its own graph; onnx2torch is only how it runs here
        arch = model.get("format") and f"{model['format']} graph" + (f" (opset {model['opset']})" if model.get("opset") else "")
    if arch:
        params["modelArchitecture"] = arch
    if data_ref:
        params["datasets"] = [{"ref": data_ref}]
    shape = model.get("input_shape")
    if shape:
        params["inputs"] = [{"format": f"image, {'x'.join(map(str, shape))} (channels x height x width), pixels in [0, 1] "
                                       f"normalised with mean {model.get('mean')} and std {model.get('std')}"}]
    if model.get("num_classes"):
        params["outputs"] = [{"format": f"{model['num_classes']} class scores (logits)"}]
    rows = [row for stage, note in stages for row in _metric_rows(result, stage, note)]
    card: dict = {"modelParameters": params}
    if rows:
        card["quantitativeAnalysis"] = {"performanceMetrics": [{"type": t, "value": v, "slice": s} for t, v, s in rows]}
    considerations: dict = {"ethicalConsiderations": [_risk(result)]}
    limits = (result.get("scan") or {}).get("limits")
    if limits:
        considerations["technicalLimitations"] = [f"What the backdoor scan cannot detect: {limits}"]
    card["considerations"] = considerations
    return card


def _model_props(result: dict, role: str, path, stage: str) -> list[Property]:
    model = result.get("model") or {}
    items = [("role", role), ("path", path)]
    if role == "delivered_model":
        items += [(k, model.get(k)) for k in ("format", "size_bytes", "param_count", "num_classes", "arch", "opset")]
        if model.get("input_shape"):
            items.append(("input_shape", "x".join(map(str, model["input_shape"]))))
    m = _stage_metrics(result, stage)
    items += [(f"metric:{stage}:{k}", m.get(k)) for k in ("c_acc", "asr", "r_acc", "asr_trigger", "target", "eval_samples")]
    return _props(items)


def _outputs(result: dict) -> list[dict]:
    """The files the defense wrote: provenance.outputs (with hashes), else defense.outputs (paths only)."""
    outs = [o for o in _prov(result).get("outputs") or [] if isinstance(o, dict) and o.get("path")]
    if outs:
        return outs
    written = (result.get("defense") or {}).get("outputs") or {}
    return [{"role": "repaired_metadata" if kind == "metadata" else "repaired_model", "path": p, "sha256": None}
            for kind, p in written.items() if p]


def _ref(prefix: str, sha: str | None, fallback: str, used: set[str]) -> str:
    ref = f"{prefix}:{sha}" if sha else f"{prefix}:{fallback}"
    while ref in used:  # two roles, one file (a defense that changed nothing): keep bom-refs unique
        ref += "+"
    used.add(ref)
    return ref


def _report_refs(result: dict, base: Path | None) -> list[ExternalReference]:
    """The reports the audit wrote, as provenance.reports names them (the BOM itself excluded)."""
    reports = _prov(result).get("reports") or {}
    found = [(REPORT_KINDS[kind], value) for kind, value in reports.items() if kind in REPORT_KINDS]
    refs = []
    for comment, value in found:
        path = Path(value)
        sha = None
        if base is not None:  # written now, by the audit's own process: its cwd resolves the paths
            if path.is_file():
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
            try:
                path = Path(os.path.relpath(path.resolve(), base.resolve()))
            except ValueError:  # another drive (Windows): no relative path exists
                path = path.resolve()
        try:
            url = XsUri(path.as_posix())
        except Exception:  # a path that no URI reference can hold is left out, not mangled
            continue
        refs.append(ExternalReference(type=ExternalReferenceType.EVIDENCE, url=url, comment=comment, hashes=_hashes(sha)))
    return refs


def mlbom(result: dict, base: Path | None = None) -> Bom:
    """The audit's BOM as cyclonedx-python-lib's object (without model cards: see the module docstring).
    `base`: the folder the BOM is written to, so report paths become relative to it."""
    model = result.get("model") or {}
    prov = _prov(result)
    used: set[str] = set()
    sha = _sha(model.get("sha256"))
    model_path = model.get("path") or "model"
    delivered_ref = _ref("model", sha, "delivered", used)
    delivered = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL, name=Path(model_path).name, version=sha[:12] if sha else None,
        bom_ref=delivered_ref, hashes=_hashes(sha), description="the model as delivered, audited by auditor",
        properties=_model_props(result, "delivered_model", model_path, "before"))

    components = []
    defense = result.get("defense") or {}
    for out in _outputs(result):
        out_sha = _sha(out.get("sha256"))
        name = Path(out["path"]).name
        props = _props([("role", out.get("role")), ("path", out["path"]), ("size_bytes", out.get("size_bytes"))])
        if out.get("role") == "repaired_model":
            ancestor = Component(type=ComponentType.MACHINE_LEARNING_MODEL, name=delivered.name, version=delivered.version,
                                 hashes=_hashes(sha))
            components.append(Component(
                type=ComponentType.MACHINE_LEARNING_MODEL, name=name, version=out_sha[:12] if out_sha else None,
                bom_ref=_ref("model", out_sha, name, used), hashes=_hashes(out_sha),
                description=f"the delivered model after auditor's {defense.get('name')} defense and repair",
                pedigree=Pedigree(ancestors=[ancestor], notes=f"derived from {delivered.name} by auditor's "
                                  f"{defense.get('name')} defense (+ repair), then re-audited"),
                properties=props + _model_props(result, "repaired_model", None, "after")))
        else:
            components.append(Component(type=ComponentType.FILE, name=name, version=out_sha[:12] if out_sha else None,
                                        bom_ref=_ref("file", out_sha, name, used), hashes=_hashes(out_sha),
                                        description="metadata that loads the repaired model", properties=props))

    inputs = [i for i in prov.get("inputs") or [] if isinstance(i, dict)]
    data_in = next((i for i in inputs if i.get("role") == "data"), None)
    data_source = (result.get("data") or {}).get("source")
    if data_in or data_source:
        file_hash = _sha(data_in.get("sha256")) if data_in and data_in.get("kind") != "folder" else None
        d = result.get("data") or {}
        components.append(Component(
            type=ComponentType.DATA, name=(data_in or {}).get("name") or data_source or Path(data_in["path"]).name,
            bom_ref=_ref("data", file_hash, "audit", used), hashes=_hashes(file_hash),
            description=f"the data the audit measured on: {d.get('eval_samples')} held-out samples for accuracy and "
                        f"attack success, {d.get('fit_samples')} for the scans and the defense",
            properties=_props([("role", "audit_data"), ("source", data_source), ("path", (data_in or {}).get("path")),
                               ("kind", (data_in or {}).get("kind")),
                               ("sha256_of_file_list", (data_in or {}).get("sha256") if not file_hash else None)])))

    scan = result.get("scan") or {}
    meta_items = [("schema_version", result.get("schema_version")), ("verdict", result.get("verdict")),
                  ("exit_code", result.get("exit_code")), ("gate", result.get("gate"))]
    meta_items += [("error", e) for e in result.get("errors") or []]
    meta_items += [(f"check:{c.get('stage')}:{c.get('name')}", c.get("outcome")) for c in result.get("checks") or []]
    flagged = ",".join(map(str, scan.get("flagged_classes") or [])) or "none"
    meta_items += [("flagged_classes", flagged if result.get("scan") else None),
                   ("scan", scan.get("method")), ("defense", defense.get("name")), ("defense:applied", defense.get("applied")),
                   ("seed", result.get("seed")), ("finished", prov.get("finished"))]
    for i in inputs:
        meta_items += [(f"input:{i.get('role')}:path", i.get("path")), (f"input:{i.get('role')}:sha256", _sha(i.get("sha256")))]

    tool = prov.get("tool") or {}
    version = tool.get("version") or (result.get("versions") or {}).get("auditor")
    metadata = BomMetaData(
        tools=ToolRepository(components=[Component(type=ComponentType.APPLICATION, name="auditor", version=version,
                                                   bom_ref="tool:auditor")]),
        component=delivered, properties=_props(meta_items))
    try:
        metadata.timestamp = datetime.fromisoformat(prov["timestamp"])
    except (KeyError, TypeError, ValueError):
        pass  # no (readable) start time: the library's default, now, is when this BOM was made

    refs = _report_refs(result, base)
    ci_url = (prov.get("ci") or {}).get("url")
    if ci_url:
        try:
            refs.append(ExternalReference(type=ExternalReferenceType.BUILD_SYSTEM, url=XsUri(ci_url), comment="CI run of the audit"))
        except Exception:
            pass
    return Bom(metadata=metadata, components=components, external_references=refs)


def _cards(result: dict, bom: Bom) -> dict[str, dict]:
    """Model card per model bom-ref: the delivered model's numbers are "before", the repaired one's "after"."""
    data_ref = next((str(c.bom_ref) for c in bom.components if c.type == ComponentType.DATA), None)
    repaired = [c for c in bom.components if c.type == ComponentType.MACHINE_LEARNING_MODEL]
    # with no repaired model in the BOM, the "after" numbers still belong on record, said to be so
    orphan = [] if repaired else [("after", " (the repaired model is not in this BOM)")]
    cards = {str(bom.metadata.component.bom_ref): _card(result, [("before", ""), *orphan], data_ref)}
    for c in repaired:
        cards[str(c.bom_ref)] = _card(result, [("after", "")], data_ref)
    return cards


def cyclonedx_json(result: dict, base: Path | None = None) -> str:
    """The BOM as CycloneDX 1.6 JSON, checked against the strict schema; InvalidBomError when it fails."""
    bom = mlbom(result, base)
    with warnings.catch_warnings():
        # the root model has no runtime dependencies by design (see the module docstring): not a gap
        warnings.filterwarnings("ignore", message=".*has no defined dependencies.*", category=UserWarning)
        doc = json.loads(JsonV1Dot6(bom).output_as_string())
    cards = _cards(result, bom)
    for comp in [doc.get("metadata", {}).get("component") or {}, *doc.get("components", [])]:
        if comp.get("bom-ref") in cards:
            comp["modelCard"] = cards[comp["bom-ref"]]
    text = json.dumps(doc, indent=2) + "\n"
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text, all_errors=True)
    if errors is not None:
        raise InvalidBomError("CycloneDX BOM does not validate: " + "; ".join(str(e)[:300] for e in list(errors)[:3]))
    return text


def write_cyclonedx(path: Path, result: dict) -> None:
    from ..outputs import atomic_write

    path = Path(path)
    text = cyclonedx_json(result, base=path.parent)  # validated before any file exists
    atomic_write(path, lambda tmp: tmp.write_text(text), protected=())
