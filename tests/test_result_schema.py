"""The JSON result's published schema (auditor/report/result.schema.json) against real results: the
two end-to-end runs, and audits that errored before the model loaded. A result the schema rejects, or
a schema that accepts a broken result, is a broken contract with whoever reads the JSON."""

from __future__ import annotations

import copy
import json
from importlib import resources

import pytest
from conftest import run_auditor
from hostile import corpus
from jsonschema import Draft202012Validator, FormatChecker

from auditor.report.result import SCHEMA_VERSION


@pytest.fixture(scope="module")
def schema() -> dict:
    # Read as the installed package ships it (pyproject's package data), not from the source tree.
    return json.loads(resources.files("auditor.report").joinpath("result.schema.json").read_text())


@pytest.fixture(scope="module")
def validator(schema) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=FormatChecker())


@pytest.fixture(scope="module", params=["nonexistent", "malicious_pickle"])
def early_error(request, tmp_path_factory) -> dict:
    """An audit that stopped before the model loaded: no scan, no metrics, a model with only path/sha256/format."""
    work = tmp_path_factory.mktemp(f"schema_{request.param}")
    if request.param == "nonexistent":
        model, extra = work / "ghost.pt", ()
    else:
        (case,) = corpus.build(work / "corpus", {"os_system"})
        model, extra = case.model(work / "corpus"), corpus.ARCH_ARGS
    run = run_auditor(work / "run", model, *extra)
    assert run.data is not None, run.stderr
    assert run.data["verdict"] == "error" and run.data["exit_code"] == 2
    assert run.data["scan"] is None and run.data["metrics"] == {"before": None, "after": None}
    return run.data


def _errors(validator, result) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:200]}" for e in validator.iter_errors(result)]


def test_schema_is_valid_2020_12(schema):
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_version_is_one_number(schema):
    """result.py's SCHEMA_VERSION, the schema's const and its $id must move together."""
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert schema["$id"].endswith(f"/result-{SCHEMA_VERSION}.json")


def test_date_time_format_is_checked():
    # jsonschema checks "date-time" only when rfc3339-validator is installed; without it a bad
    # provenance timestamp would pass silently.
    assert not FormatChecker().conforms("yesterday", "date-time"), "install jsonschema[format-nongpl]"


@pytest.mark.slow
@pytest.mark.parametrize("run", ["badnets_e2e", "clean_e2e"])
def test_e2e_results_validate(run, request, schema, validator):
    data = request.getfixturevalue(run).data
    assert data is not None
    assert data["schema_version"] == schema["properties"]["schema_version"]["const"]
    assert _errors(validator, data) == []


def test_early_error_result_validates(early_error, schema, validator):
    assert early_error["schema_version"] == schema["properties"]["schema_version"]["const"]
    assert set(early_error["model"]) == {"path", "sha256", "format"}
    assert _errors(validator, early_error) == []


def _drop_outcome(r):
    del r["checks"][0]["outcome"]


MUTATIONS = {
    "verdict_maybe": lambda r: r.update(verdict="maybe"),
    "check_without_outcome": _drop_outcome,
    "sha256_xyz": lambda r: r["model"].update(sha256="xyz"),
    "uppercase_sha256": lambda r: r["model"].update(sha256="A" * 64),
    "error_verdict_exit_0": lambda r: r.update(exit_code=0),
    "error_verdict_without_errors": lambda r: r.update(errors=[]),
    "unknown_outcome": lambda r: r["checks"][0].update(outcome="xfailed"),
    "unknown_stage": lambda r: r["checks"][0].update(stage="during"),
    "unknown_gate": lambda r: r.update(gate="both"),
    "undeclared_top_level_key": lambda r: r.update(extra=1),
    "no_provenance": lambda r: r.pop("provenance"),
    "timestamp_not_a_date": lambda r: r["provenance"].update(timestamp="yesterday"),
    "timestamp_not_utc": lambda r: r["provenance"].update(timestamp="2026-12-02T05:40:12+01:00"),
    "input_sha256_short": lambda r: r["provenance"]["inputs"][0].update(sha256="abc123"),
    "schema_version_2": lambda r: r.update(schema_version="2.0"),
    "metrics_before_a_string": lambda r: r["metrics"].update(before="n/a"),
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_broken_result_is_rejected(mutate, early_error, validator):
    assert _errors(validator, early_error) == []  # so the mutation is what the schema rejects
    broken = copy.deepcopy(early_error)
    mutate(broken)
    assert _errors(validator, broken), "the schema accepted a broken result"


@pytest.mark.slow
def test_broken_scan_is_rejected(badnets_e2e, validator):
    """Scans differ in their keys, but every scan names its method and its flagged classes."""
    for key, value in (("method", None), ("flagged_classes", None), ("flagged_classes", ["7"])):
        broken = copy.deepcopy(badnets_e2e.data)
        if value is None:
            del broken["scan"][key]
        else:
            broken["scan"][key] = value
        assert _errors(validator, broken), f"scan.{key} = {value!r} accepted"
