"""Shared fixtures: paths to the committed fixtures, loaded models, the bundled data set, and the
end-to-end CLI runs that several tests read (each run once per session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
MODELS = FIXTURES / "models"
CLEAN_PT = MODELS / "clean_cnn.pt"
CLEAN_ONNX = MODELS / "clean_cnn.onnx"
BADNETS_PT = MODELS / "badnets_cnn.pt"
BADNETS_ONNX = MODELS / "badnets_cnn.onnx"
BADNETS_TRIGGER = MODELS / "badnets_cnn.trigger.json"
FMNIST_NPZ = FIXTURES / "data" / "fashion_mnist_eval.npz"
AUDITOR_BIN = Path(sys.executable).parent / "auditor"
TARGET = 7  # the badnets fixture's true target class (badnets_cnn.trigger.json)

# A scan budget that keeps the CLI runs that do not test the scan itself cheap: one step, so no class
# converges and no class is flagged; with --trigger the known-trigger check still fails the model.
CHEAP_SCAN = ["--scan", "neural-cleanse", "--scan-param", "max_steps=1"]


def file_state(path: Path) -> tuple[bytes, int]:
    """Bytes and mtime (ns) of a file: loading or auditing it must leave both unchanged."""
    return Path(path).read_bytes(), os.stat(path).st_mtime_ns


# ----------------------------------------------------------------------------- in-process objects
@pytest.fixture(scope="session")
def fast_nc_params():
    from auditor.scans.neural_cleanse import NeuralCleanseParams

    return NeuralCleanseParams(max_steps=150, early_stop_patience=20, batch_size=16, asr_eval_samples=200)


@pytest.fixture(scope="session")
def load():
    from auditor.loading import LoadRequest, load_model

    def _load(path, **kwargs):
        return load_model(LoadRequest(path=Path(path), **kwargs))

    return _load


@pytest.fixture(scope="session")
def clean_handle(load):
    return load(CLEAN_PT)


@pytest.fixture(scope="session")
def badnets_handle(load):
    return load(BADNETS_PT)


@pytest.fixture(scope="session")
def badnets_onnx_handle(load):
    return load(BADNETS_ONNX)


@pytest.fixture(scope="session")
def fmnist():
    """The bundled data set, conformed to the fixtures' input (1 x 28 x 28, 10 classes)."""
    from auditor.data import conform, load_data

    return conform(load_data("fashion-mnist"), 1, 28, 28, 10)


@pytest.fixture(scope="session")
def fmnist_split(fmnist):
    from auditor.data import split

    return split(fmnist, 50, 0, 10)


@pytest.fixture(scope="session")
def fmnist_split10(fmnist):
    """The default budget: 10 clean samples per class."""
    from auditor.data import split

    return split(fmnist, 10, 0, 10)


@pytest.fixture(scope="session")
def known_trigger():
    from auditor.triggers import load_trigger

    return load_trigger(BADNETS_TRIGGER, 1, 28, 28)


# ----------------------------------------------------------------------------- CLI runs
@dataclass
class CliRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    workdir: Path
    json_path: Path
    html_path: Path
    junit_path: Path
    output_dir: Path
    data: dict | None = field(default=None)
    inputs_unchanged: bool | None = None

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def schema_violations(data: dict) -> None:
    """Every JSON result any test produces must match the published schema (auditor/report/result.schema.json)."""
    from importlib import resources

    from jsonschema import Draft202012Validator, FormatChecker

    schema = json.loads(resources.files("auditor.report").joinpath("result.schema.json").read_text())
    errors = sorted(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "JSON result violates result.schema.json: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '<top>'}: {e.message[:200]}" for e in errors[:5])


def run_auditor(workdir: Path, model, *extra: str, quiet: bool = True, timeout: float = 900) -> CliRun:
    """`auditor scan MODEL` as a user runs it (the installed console script, cwd = workdir), with every
    output (repaired models, HTML, JSON, JUnit) under workdir."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "out"
    html, js, junit = workdir / "report.html", workdir / "result.json", workdir / "junit.xml"
    args = [str(AUDITOR_BIN), "scan", str(model), "--output-dir", str(out), "--html", str(html), "--json", str(js),
            "--junitxml", str(junit), "--sarif", str(workdir / "result.sarif"), "--cyclonedx", str(workdir / "bom.cdx.json"),
            *extra]
    if quiet:
        args.append("-q")
    env = {k: v for k, v in os.environ.items() if k != "AUDITOR_DEBUG"}
    candidates = [Path(str(a)) for a in (model, *extra)] + [Path(model).with_suffix(".json")]
    inputs = [p for p in candidates if p.is_absolute() and p.is_file()]
    before = {p: file_state(p) for p in inputs}
    proc = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    data = json.loads(js.read_text()) if js.is_file() else None
    if data is not None:
        schema_violations(data)
    unchanged = all(file_state(p) == state for p, state in before.items())
    return CliRun(args, proc.returncode, proc.stdout, proc.stderr, workdir, js, html, junit, out, data, unchanged)


@pytest.fixture(scope="session")
def badnets_e2e(tmp_path_factory):
    """badnets_cnn.pt with its known trigger and the DEFAULT scan/defense/repair budgets (~30 s)."""
    return run_auditor(tmp_path_factory.mktemp("badnets_e2e"), BADNETS_PT, "--trigger", str(BADNETS_TRIGGER))


@pytest.fixture(scope="session")
def clean_e2e(tmp_path_factory):
    """clean_cnn.pt with the default budgets: the scan must not flag anything."""
    return run_auditor(tmp_path_factory.mktemp("clean_e2e"), CLEAN_PT)


@pytest.fixture(scope="session")
def badnets_onnx_e2e(tmp_path_factory):
    return run_auditor(tmp_path_factory.mktemp("badnets_onnx_e2e"), BADNETS_ONNX, "--trigger", str(BADNETS_TRIGGER),
                       *CHEAP_SCAN)
