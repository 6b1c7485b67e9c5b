"""Serialization safety: read the file statically, never load it."""

from auditor.conditions import record_condition
from auditor.loading.safety import inspect_file


def check_serialization_safety(model_file, audit_config, record_property):
    report = inspect_file(model_file, audit_config.max_file_bytes)
    record_property("format", report.format)
    for line in report.info:
        record_property("info", line)
    record_condition(record_property, "a static read of the file finds nothing that could run code or cannot be read",
                     len(report.findings) + len(report.problems), 0)
    assert not report.findings, f"{model_file.name}: " + "; ".join(report.findings)
    assert not report.problems, f"{model_file.name}: cannot be read safely: " + "; ".join(report.problems)
