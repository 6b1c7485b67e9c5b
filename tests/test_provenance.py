"""Provenance facts: CI ids from the variables CI systems set, folder hashes that do not depend on the
order a file system lists files in, and command lines that say what was run."""

from __future__ import annotations

import hashlib

from auditor.report.provenance import ci_context, command_line, data_input, describe_file, folder_sha256


def test_ci_context_from_github_and_gitlab_variables():
    github = ci_context({"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "7", "GITHUB_JOB": "audit", "GITHUB_REPOSITORY": "o/r",
                         "GITHUB_SHA": "abc", "GITHUB_SERVER_URL": "https://github.example"})
    assert github["system"] == "github-actions" and github["run_id"] == "7" and github["job"] == "audit"
    assert github["url"] == "https://github.example/o/r/actions/runs/7" and github["commit"] == "abc"
    gitlab = ci_context({"GITLAB_CI": "true", "CI_PIPELINE_ID": "9", "CI_JOB_ID": "11", "CI_JOB_URL": "https://gl/j/11"})
    assert (gitlab["system"], gitlab["run_id"], gitlab["job"], gitlab["url"]) == ("gitlab-ci", "9", "11", "https://gl/j/11")
    assert ci_context({"CI": "true"})["system"] == "ci"
    assert ci_context({}) is None


def test_folder_hash_is_the_hash_of_its_sorted_listing(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.png").write_bytes(b"one")
    (tmp_path / "a.png").write_bytes(b"two")
    digest, count = folder_sha256(tmp_path)
    listing = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in (("a.png", b"two"), ("b/x.png", b"one")))
    assert count == 2 and digest == hashlib.sha256(listing.encode()).hexdigest()
    (tmp_path / "b" / "x.png").write_bytes(b"changed")
    assert folder_sha256(tmp_path)[0] != digest
    entry = describe_file("data", tmp_path)
    assert entry["kind"] == "folder" and entry["files"] == 2 and entry["size_bytes"] == len(b"changed") + len(b"two")


def test_file_entries_and_unreadable_paths(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    entry = describe_file("model", model)
    assert entry["sha256"] == hashlib.sha256(b"weights").hexdigest() and entry["size_bytes"] == 7
    missing = describe_file("trigger", tmp_path / "gone.json")
    assert missing["sha256"] is None and missing["size_bytes"] is None
    assert data_input("none") is None and data_input("fashion-mnist")["kind"] == "bundled"


def test_command_line_names_the_tool_not_the_venv():
    assert command_line(["/opt/venv/bin/auditor", "scan", "m.pt"]) == ["auditor", "scan", "m.pt"]
    assert command_line(["/src/auditor/__main__.py", "scan", "m.pt"]) == ["python", "-m", "auditor", "scan", "m.pt"]
