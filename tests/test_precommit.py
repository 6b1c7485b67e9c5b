"""The pre-commit hook: staged model files are audited one by one and the commit fails with the worst code."""

from __future__ import annotations

import shutil

import pytest
import yaml
from hostile import corpus

from auditor.precommit import main, split_arguments
from conftest import CHEAP_SCAN, CLEAN_PT, REPO


def test_options_come_before_the_staged_files(tmp_path):
    model, other = tmp_path / "m.onnx", tmp_path / "notes.txt"
    model.write_bytes(b"x")
    other.write_text("x")
    assert split_arguments(["--data", "clean/", "-q", str(model)]) == (["--data", "clean/", "-q"], [str(model)])
    # an option value that is not a model file stays an option; a missing file is not a model
    assert split_arguments(["--trigger", str(other), str(tmp_path / "gone.pt")]) == (
        ["--trigger", str(other), str(tmp_path / "gone.pt")], [])


def test_hook_definition_matches_the_module():
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "auditor-scan")
    assert hook["entry"] == "python -m auditor.precommit" and hook["pass_filenames"] is True


@pytest.mark.slow
def test_worst_exit_code_wins_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (case,) = corpus.build(tmp_path / "corpus", {"os_system"})  # a pickle that runs a shell command if loaded
    evil, marker = case.model(tmp_path / "corpus"), case.marker(tmp_path / "corpus")
    clean = tmp_path / "clean.pt"
    shutil.copy(CLEAN_PT, clean)
    shutil.copy(CLEAN_PT.with_suffix(".json"), tmp_path / "clean.json")
    args = [*CHEAP_SCAN, "--output-dir", str(tmp_path / "out"), "-q"]
    assert main([*args, str(clean)]) == 0
    assert main([*args, str(clean), str(evil)]) == 2
    assert not marker.exists()
