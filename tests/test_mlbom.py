"""The --cyclonedx output: a CycloneDX 1.6 ML-BOM that cyclonedx-python-lib's strict validator accepts
(offline), naming the audited and the repaired model by their hashes and carrying the measured numbers."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from auditor.report import mlbom as mlbom_module
from auditor.report.mlbom import InvalidBomError, mlbom, write_cyclonedx

SHA_A, SHA_B, SHA_D = "a" * 64, "b" * 64, "d" * 64


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test instead of being made."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def validate(text: str) -> dict:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text, all_errors=True)
    assert errors is None, "\n".join(str(e)[:400] for e in list(errors)[:3])
    return json.loads(text)


def all_components(doc: dict) -> list[dict]:
    return [doc["metadata"]["component"], *doc.get("components", [])]


def metrics(component: dict) -> dict[tuple[str, str], str]:
    """(metric name, first word of its slice) -> value: "as" for as delivered, "after" for after repair."""
    rows = component["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
    return {(r["type"].split(" (")[-1].rstrip(")"), r["slice"].split()[0]): r["value"] for r in rows}


def props(entity: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in entity.get("properties", [])}


def small_result() -> dict:
    """A backdoored audit in miniature, with provenance: fails as delivered, repaired, passes after."""
    def check(name, stage, outcome, backdoor=False):
        return {"id": f"c.py::{name}[{stage}]", "name": name, "stage": stage, "outcome": outcome, "message": "",
                "seconds": 0.1, "backdoor": backdoor, "properties": {}}

    def measured(c_acc, asr):
        return {"c_acc": c_acc, "asr": asr, "asr_trigger": "recovered", "target": 3, "r_acc": 0.5, "eval_samples": 200}

    return {
        "schema_version": "1.0", "verdict": "fail", "exit_code": 1, "gate": "before", "errors": [],
        "model": {"path": "models/net.pt", "sha256": SHA_A, "format": "state_dict", "arch": "resnet18",
                  "input_shape": [3, 32, 32], "num_classes": 10, "class_names": None},
        "checks": [check("check_clean_accuracy", "before", "passed"), check("check_trigger_scan", "before", "failed", True),
                   check("check_trigger_scan", "after", "passed", True)],
        "scan": {"flagged_classes": [3], "limits": "patch triggers only"},
        "defense": {"name": "activation-edit", "applied": True, "outputs": {"state_dict": "/o/net.repaired.pt"}},
        "metrics": {"before": measured(0.91, 0.97), "after": measured(0.9, 0.02)},
        "data": {"source": "bundled:cifar10", "fit_samples": 100, "eval_samples": 200},
        "versions": {"auditor": "0.1.0"},
        "provenance": {
            "tool": {"name": "auditor", "version": "0.1.0"}, "timestamp": "2026-12-02T05:40:12Z",
            "command_line": ["auditor", "scan", "models/net.pt", "--json", "r/result.json", "--html=r/report.html"],
            "reports": {"json": "r/result.json", "html": "r/report.html"},
            "ci": {"system": "github-actions", "url": "https://github.com/o/r/actions/runs/1"},
            "inputs": [{"role": "model", "path": "models/net.pt", "sha256": SHA_A, "kind": "file"},
                       {"role": "data", "path": "/x/cifar10.npz", "sha256": SHA_D, "kind": "bundled", "name": "cifar10"}],
            "outputs": [{"role": "repaired_model", "path": "/o/net.repaired.pt", "sha256": SHA_B, "size_bytes": 9}],
        },
    }


def test_small_result_maps_to_a_valid_ml_bom(tmp_path, no_network, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "result.json").write_text("{}\n")
    bom_path = tmp_path / "r" / "bom" / "bom.cdx.json"
    write_cyclonedx(bom_path, small_result())
    doc = validate(bom_path.read_text())
    assert doc["specVersion"] == "1.6" and doc["metadata"]["timestamp"].startswith("2026-12-02T05:40:12")
    assert [(t["name"], t["version"]) for t in doc["metadata"]["tools"]["components"]] == [("auditor", "0.1.0")]
    model = doc["metadata"]["component"]
    assert (model["type"], model["name"], model["version"], model["bom-ref"]) == ("machine-learning-model", "net.pt", "a" * 12, "model:" + SHA_A)
    assert model["hashes"] == [{"alg": "SHA-256", "content": SHA_A}]
    assert model["modelCard"]["modelParameters"]["modelArchitecture"] == "resnet18"
    assert metrics(model) == {("C-ACC", "as"): "0.91", ("ASR", "as"): "0.97", ("R-ACC", "as"): "0.5"}
    assert "a trigger the scan recovered" in model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"][1]["slice"]
    risk = model["modelCard"]["considerations"]["ethicalConsiderations"][0]
    assert "check_trigger_scan" in risk["name"] and "no check failed after repair" in risk["mitigationStrategy"]
    repaired = next(c for c in doc["components"] if c["type"] == "machine-learning-model")
    assert repaired["hashes"] == [{"alg": "SHA-256", "content": SHA_B}] and repaired["bom-ref"] == "model:" + SHA_B
    assert repaired["pedigree"]["ancestors"][0]["hashes"] == model["hashes"]
    assert metrics(repaired) == {("C-ACC", "after"): "0.9", ("ASR", "after"): "0.02", ("R-ACC", "after"): "0.5"}
    data = next(c for c in doc["components"] if c["type"] == "data")
    assert data["hashes"][0]["content"] == SHA_D and model["modelCard"]["modelParameters"]["datasets"] == [{"ref": data["bom-ref"]}]
    meta = props(doc["metadata"])
    assert meta["auditor:verdict"] == "fail" and meta["auditor:exit_code"] == "1" and meta["auditor:schema_version"] == "1.0"
    assert meta["auditor:check:before:check_trigger_scan"] == "failed" and meta["auditor:check:after:check_trigger_scan"] == "passed"
    refs = {r["url"]: r for r in doc["externalReferences"]}
    # report paths are relative to the BOM's folder; a hash only for the report that exists
    assert refs["../result.json"]["type"] == "evidence" and refs["../result.json"]["hashes"][0]["content"] == hashlib.sha256(b"{}\n").hexdigest()
    assert "hashes" not in refs["../report.html"]
    assert refs["https://github.com/o/r/actions/runs/1"]["type"] == "build-system"
    assert [p.name for p in bom_path.parent.iterdir()] == ["bom.cdx.json"]  # no temp file left


def test_unknown_hashes_are_left_out_and_errors_do_not_crash():
    result = small_result()
    del result["provenance"]
    result["model"]["sha256"] = None
    bom = mlbom(result)
    assert not bom.metadata.component.hashes and bom.metadata.component.version is None
    repaired = next(c for c in bom.components if c.type.value == "machine-learning-model")
    assert not repaired.hashes and repaired.pedigree.ancestors[0].name == "net.pt"
    result["defense"]["outputs"] = {}  # repaired but not written: its numbers stay, said to be of a model not here
    model = validate(mlbom_module.cyclonedx_json(result))["metadata"]["component"]
    assert metrics(model)[("ASR", "after")] == "0.02" and "bom-ref" in model and "hashes" not in model
    assert "not in this BOM" in model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"][-1]["slice"]
    broken = validate(mlbom_module.cyclonedx_json({"verdict": "error", "exit_code": 2, "errors": ["cannot load"], "model": {"path": "m.pt"}}))
    risk = broken["metadata"]["component"]["modelCard"]["considerations"]["ethicalConsiderations"][0]
    assert risk["name"].startswith("Not assessed") and "cannot load" in risk["name"]


def test_a_bom_that_does_not_validate_is_never_written(tmp_path, monkeypatch):
    real = mlbom_module._cards
    monkeypatch.setattr(mlbom_module, "_cards", lambda *a: {k: {**v, "madeUp": 1} for k, v in real(*a).items()})
    target = tmp_path / "bom.cdx.json"
    with pytest.raises(InvalidBomError, match="madeUp"):
        write_cyclonedx(target, small_result())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fixture", ["badnets_e2e", "clean_e2e"])
def test_e2e_bom(fixture, request, no_network):
    run = request.getfixturevalue(fixture)
    data = run.data
    doc = validate((run.workdir / "bom.cdx.json").read_text())
    model = doc["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["hashes"] == [{"alg": "SHA-256", "content": data["model"]["sha256"]}]
    before = data["metrics"]["before"]
    got = metrics(model)
    assert got[("C-ACC", "as")] == str(before["c_acc"])
    assert props(doc["metadata"])["auditor:verdict"] == data["verdict"]
    report = next(r for r in doc["externalReferences"] if r["url"] == "result.json")  # the BOM's neighbour
    assert report["type"] == "evidence" and report["hashes"][0]["content"] == hashlib.sha256(run.json_path.read_bytes()).hexdigest()
    repaired = [c for c in doc.get("components", []) if c["type"] == "machine-learning-model"]
    if fixture == "clean_e2e":
        assert data["exit_code"] == 0 and not repaired and ("ASR", "as") not in got  # no trigger: no ASR measured
        return
    assert data["exit_code"] == 1 and got[("ASR", "as")] == str(before["asr"]) and before["asr"] > 0.9
    out = next(o for o in data["provenance"]["outputs"] if o["role"] == "repaired_model")
    assert len(repaired) == 1 and repaired[0]["hashes"] == [{"alg": "SHA-256", "content": out["sha256"]}]
    assert hashlib.sha256((run.workdir / out["path"]).read_bytes()).hexdigest() == out["sha256"]
    assert repaired[0]["pedigree"]["ancestors"][0]["hashes"] == model["hashes"]
    after = data["metrics"]["after"]
    assert metrics(repaired[0]) == {("C-ACC", "after"): str(after["c_acc"]), ("ASR", "after"): str(after["asr"]),
                                    ("R-ACC", "after"): str(after["r_acc"])}
    assert after["asr"] < 0.05
