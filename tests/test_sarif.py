"""The --sarif output: valid against the official OASIS SARIF 2.1.0 schema (vendored, no network), with
stable rules and fingerprints, the model's hash in the artifacts, and findings only where checks failed."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import jsonschema
import pytest

from auditor.report.sarif import FINGERPRINT_KEY, sarif_log, write_sarif

SCHEMA_PATH = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
SCHEMA_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"
SHA_A, SHA_B = "a" * 64, "b" * 64


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)  # the schema's own $schema (draft-04)
    cls.check_schema(schema)
    # Formats (uri, uri-reference, date-time) are checked too, where jsonschema has a checker installed.
    return cls(schema, format_checker=jsonschema.FormatChecker())


def assert_valid(validator, log: dict) -> None:
    errors = sorted(validator.iter_errors(log), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def strict_json(text: str) -> dict:
    def reject(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=reject)


def fingerprints(log: dict) -> dict:
    return {(r["ruleId"], r["properties"]["stage"]): r["partialFingerprints"][FINGERPRINT_KEY] for r in log["runs"][0]["results"]}


def check(name, stage, outcome, message="", backdoor=False, **properties):
    return {"id": f"check_x.py::{name}[{stage}]", "name": name, "stage": stage, "outcome": outcome, "message": message,
            "seconds": 0.1, "backdoor": backdoor, "properties": properties}


def small_result(model_path="models/my model.pt", sha=SHA_A) -> dict:
    """A backdoored audit in miniature: fails before, repaired, passes after; one check errored."""
    repaired = "/abs/out/my_model.repaired.onnx"
    return {
        "schema_version": "1.0", "verdict": "error", "exit_code": 2, "gate": "after",
        "errors": ["check_clean_accuracy: data set could not be read"],
        "model": {"path": model_path, "sha256": sha, "format": "state_dict", "size_bytes": 1234},
        "checks": [
            check("check_serialization_safety", "before", "passed"),
            check("check_trigger_scan", "before", "failed", "possible backdoor: class 7", True,
                  condition="no class is reached by a small trigger", threshold=2.5, measured=7.1),
            check("check_known_trigger_asr", "before", "skipped", "no --trigger given", True),
            check("check_clean_accuracy", "after", "error", "data set could not be read"),
            check("check_trigger_scan", "after", "passed", backdoor=True),
        ],
        "scan": {"flagged_classes": [7]},
        "defense": {"name": "activation-edit", "applied": True, "outputs": {"metadata": "/abs/out/my_model.repaired.json",
                                                                             "onnx": repaired}},
        "metrics": {"before": {"c_acc": 0.9, "asr": float("nan")}, "after": {"c_acc": 0.89, "asr": 0.01}},
        "versions": {"auditor": "0.0.9"},
        "provenance": {
            "tool": {"name": "auditor", "version": "0.1.0"},
            "timestamp": "2026-12-02T05:40:12Z", "finished": "2026-12-02T05:41:02Z",
            "command_line": ["auditor", "scan", model_path, "--gate", "after"],
            "outputs": [{"role": "repaired_model", "path": repaired, "sha256": SHA_B, "size_bytes": 99},
                        {"role": "repaired_metadata", "path": "/abs/out/my_model.repaired.json", "sha256": "c" * 64,
                         "size_bytes": 10}],
        },
    }


# ----------------------------------------------------------------------------- schema and unit tests (fast)
def test_vendored_schema_is_the_official_one():
    text = SCHEMA_PATH.read_bytes()
    assert hashlib.sha256(text).hexdigest() == SCHEMA_SHA256
    schema = json.loads(text)
    assert schema["id"] == "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
    assert schema["properties"]["version"]["enum"] == ["2.1.0"]


def test_schema_rejects_broken_logs(validator):
    """The validation below can fail: a result without a message, or a bad level, is caught."""
    log = sarif_log(small_result())
    broken = copy.deepcopy(log)
    del broken["runs"][0]["results"][0]["message"]
    assert list(validator.iter_errors(broken))
    broken = copy.deepcopy(log)
    broken["runs"][0]["results"][0]["level"] = "fatal"
    assert list(validator.iter_errors(broken))


def test_small_result(validator, tmp_path):
    result = small_result()
    out = tmp_path / "nested" / "dir" / "audit.sarif"
    write_sarif(out, result)
    assert [p.name for p in out.parent.iterdir()] == ["audit.sarif"]  # no temp file left behind
    log = strict_json(out.read_text())  # NaN metrics must not leak out as invalid JSON
    assert_valid(validator, log)
    assert log == json.loads(json.dumps(sarif_log(result)))

    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "auditor" and driver["version"] == "0.1.0" and "informationUri" not in driver
    rules = {r["id"]: r for r in driver["rules"]}
    assert len(rules) == len(driver["rules"]) == 4
    scan_rule = rules["auditor/check_trigger_scan"]
    assert scan_rule["shortDescription"]["text"] == "Trigger scan"
    assert scan_rule["fullDescription"]["text"] == "no class is reached by a small trigger"
    assert scan_rule["properties"]["tags"] == ["security", "ml-supply-chain", "backdoor"]
    assert "backdoor" not in rules["auditor/check_serialization_safety"]["properties"]["tags"]

    # Failed and errored checks only; passed and skipped ones are in run.properties.
    by_key = {(r["ruleId"], r["properties"]["stage"]): r for r in run["results"]}
    assert set(by_key) == {("auditor/check_trigger_scan", "before"), ("auditor/check_clean_accuracy", "after")}
    assert all(r["level"] == "error" and r["kind"] == "fail" for r in run["results"])
    assert {(c["ruleId"], c["stage"], c["outcome"]) for c in run["properties"]["checks"]} >= {
        ("auditor/check_trigger_scan", "after", "passed"), ("auditor/check_known_trigger_asr", "before", "skipped")}
    for r in run["results"]:
        assert driver["rules"][r["ruleIndex"]]["id"] == r["ruleId"]

    before = by_key[("auditor/check_trigger_scan", "before")]
    assert "possible backdoor: class 7" in before["message"]["text"] and "(before)" in before["message"]["text"]
    assert before["properties"]["details"]["threshold"] == 2.5
    loc = before["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": "models/my%20model.pt", "uriBaseId": "%SRCROOT%", "index": 0}
    after = by_key[("auditor/check_clean_accuracy", "after")]
    loc = after["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc["uri"] == "file:///abs/out/my_model.repaired.onnx"  # the repaired model, not its metadata
    assert run["artifacts"][loc["index"]]["hashes"] == {"sha-256": SHA_B}
    assert run["artifacts"][0]["hashes"] == {"sha-256": SHA_A} and run["artifacts"][0]["length"] == 1234
    assert {a["location"]["uri"] for a in run["artifacts"]} == {
        "models/my%20model.pt", "file:///abs/out/my_model.repaired.onnx", "file:///abs/out/my_model.repaired.json"}

    (inv,) = run["invocations"]
    assert inv["executionSuccessful"] is False and inv["exitCode"] == 2
    assert inv["commandLine"] == "auditor scan 'models/my model.pt' --gate after"
    assert (inv["startTimeUtc"], inv["endTimeUtc"]) == ("2026-12-02T05:40:12Z", "2026-12-02T05:41:02Z")
    assert [n["message"]["text"] for n in inv["toolExecutionNotifications"]] == result["errors"]

    props = run["properties"]
    assert (props["verdict"], props["gate"], props["schema_version"], props["flagged_classes"]) == ("error", "after", "1.0", [7])
    assert props["metrics"]["after"] == {"asr": 0.01, "c_acc": 0.89}


def test_old_result_without_provenance(validator):
    """A result from before provenance existed (or a model that never loaded) still gives a valid log."""
    result = small_result(model_path="/models/m.onnx", sha=None)
    for key in ("provenance", "schema_version", "scan", "metrics", "defense"):
        result.pop(key)
    log = sarif_log(result)
    assert_valid(validator, log)
    run = log["runs"][0]
    assert run["tool"]["driver"]["version"] == "0.0.9"  # from result["versions"]
    assert "commandLine" not in run["invocations"][0]
    assert run["artifacts"] == [{"location": {"uri": "file:///models/m.onnx"}, "description": {"text": "model as delivered"},
                                 "roles": ["analysisTarget"], "length": 1234}]
    # No repaired model: an after-stage finding points at the delivered one.
    after = [r for r in run["results"] if r["properties"]["stage"] == "after"]
    assert after[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "file:///models/m.onnx"
    assert_valid(validator, sarif_log({}))


def test_fingerprints_are_stable():
    result = small_result()
    first = fingerprints(sarif_log(result))
    assert len(set(first.values())) == len(first) == 2
    assert fingerprints(sarif_log(result)) == first
    later = copy.deepcopy(result)
    later["provenance"].update(timestamp="2027-01-01T00:00:00Z", finished="2027-01-01T00:10:00Z")
    later["provenance"]["outputs"][0]["sha256"] = "d" * 64  # a repaired file need not be byte-identical twice
    later["checks"][1]["message"] = "possible backdoor: class 7 (reworded)"
    assert fingerprints(sarif_log(later)) == first
    new_model = small_result(sha=SHA_B)
    assert set(fingerprints(sarif_log(new_model)).values()).isdisjoint(first.values())


# ----------------------------------------------------------------------------- the end-to-end runs' files
def e2e_log(run, validator) -> dict:
    path = run.workdir / "result.sarif"
    assert path.is_file(), run.stderr
    log = strict_json(path.read_text())
    assert_valid(validator, log)
    rule_ids = [r["id"] for r in log["runs"][0]["tool"]["driver"]["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    assert {c["name"] for c in run.data["checks"]} == {i.removeprefix("auditor/") for i in rule_ids}
    return log


def test_badnets_sarif(badnets_e2e, validator):
    assert badnets_e2e.returncode == 1, badnets_e2e.stderr
    log = e2e_log(badnets_e2e, validator)
    run = log["runs"][0]
    sha = badnets_e2e.data["model"]["sha256"]
    scan = [r for r in run["results"] if r["ruleId"] == "auditor/check_trigger_scan" and r["properties"]["stage"] == "before"]
    assert len(scan) == 1 and scan[0]["level"] == "error"
    artifact = run["artifacts"][scan[0]["locations"][0]["physicalLocation"]["artifactLocation"]["index"]]
    assert artifact["hashes"]["sha-256"] == sha
    assert artifact["location"]["uri"] == Path(badnets_e2e.data["model"]["path"]).as_uri()
    assert run["invocations"][0]["executionSuccessful"] is True and run["invocations"][0]["exitCode"] == 1
    assert run["properties"]["verdict"] == "fail"
    assert 7 in run["properties"]["flagged_classes"]
    # The repair worked: nothing failed after, and the repaired file is listed.
    assert not [r for r in run["results"] if r["properties"]["stage"] == "after"]
    repaired = [a for a in run["artifacts"] if "repaired model (" in a["description"]["text"]]
    assert len(repaired) == 1
    assert fingerprints(sarif_log(badnets_e2e.data)) == fingerprints(log)


def test_clean_sarif(clean_e2e, validator):
    assert clean_e2e.returncode == 0, clean_e2e.stderr
    run = e2e_log(clean_e2e, validator)["runs"][0]
    assert not [r for r in run["results"] if r["level"] == "error"]
    assert run["artifacts"][0]["hashes"]["sha-256"] == clean_e2e.data["model"]["sha256"]
    assert run["properties"]["verdict"] == "pass" and run["properties"]["flagged_classes"] == []
