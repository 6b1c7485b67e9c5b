"""`auditor scan-many`: folder and manifest planning (fast), and real runs on the local pool and on an
embedded Ray cluster (slow): same verdicts as `auditor scan`, the cache, a killed audit retried, an
unreadable model an error for that model only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from auditor.errors import AuditorInputError
from auditor.many import plan
from auditor.many.plan import discover
from conftest import AUDITOR_BIN, BADNETS_PT, BADNETS_TRIGGER, CHEAP_SCAN, CLEAN_PT, run_auditor

OPTIONS = ["--trigger", str(BADNETS_TRIGGER), *CHEAP_SCAN, "--defense", "none"]


def ray_or_skip():
    if os.environ.get("AUDITOR_REQUIRE_RAY"):
        import ray  # noqa: F401  (must be there: fail, do not skip)
    else:
        pytest.importorskip("ray")


def scan_many(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(AUDITOR_BIN), "scan-many", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def models_folder(root: Path) -> Path:
    folder = root / "models"
    folder.mkdir(parents=True)
    for model in (CLEAN_PT, BADNETS_PT):
        shutil.copy(model, folder / model.name)
        shutil.copy(model.with_suffix(".json"), folder / model.with_suffix(".json").name)
    return folder


# ----------------------------------------------------------------------------- planning (no audits)
def test_folder_discovery_takes_models_and_hub_folders_only(tmp_path):
    for name in ("a.pt", "b.onnx", "b.onnx.data", "a.json", "a.repaired.pt", "t.trigger.json", "notes.txt", "c.safetensors", ".hidden.pt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_text("{}")
    (tmp_path / "plain_dir").mkdir()
    assert [p.name for p in discover(tmp_path)] == ["a.pt", "b.onnx", "c.safetensors", "hub"]
    audits = plan(tmp_path, ["--seed", "3"])
    assert [a.name for a in audits] == ["a.pt", "b.onnx", "c.safetensors", "hub"]
    assert all(a.args == ("--seed", "3") and a.model.is_absolute() for a in audits)


def test_manifest_lines_become_scan_options_with_paths_resolved(tmp_path):
    sub = tmp_path / "m"
    sub.mkdir()
    (sub / "x.pt").write_bytes(b"x")
    (sub / "t.json").write_text("{}")
    (sub / "m.jsonl").write_text(
        '{"model": "x.pt", "trigger": "t.json", "scan_param": ["max_steps=1", "lr=0.1"], "mean": [0.5], "repair": false}\n'
        '\n{"model": "x.pt", "clean_samples": 5, "data": "fashion-mnist"}\n')
    first, second = plan(sub / "m.jsonl", ["--scan", "neural-cleanse"])
    assert first.args == ("--scan", "neural-cleanse", "--trigger", str(sub / "t.json"), "--scan-param", "max_steps=1",
                          "--scan-param", "lr=0.1", "--mean", "0.5", "--no-repair")
    assert second.args == ("--scan", "neural-cleanse", "--clean-samples", "5", "--data", "fashion-mnist")
    assert (first.name, second.name) == ("x.pt", "x.pt-2")  # two audits of one model keep separate folders
    (sub / "m.csv").write_text("model,trigger,scan_param,gate\nx.pt,t.json,max_steps=1;lr=0.1,after\n")
    (row,) = plan(sub / "m.csv", [])
    assert row.args == ("--trigger", str(sub / "t.json"), "--scan-param", "max_steps=1", "--scan-param", "lr=0.1", "--gate", "after")


@pytest.mark.parametrize("lines, shared, message", [
    ('{"model": "x.pt", "triggr": "t.json"}', [], "unknown key 'triggr'"),
    ('{"data": "fashion-mnist"}', [], "no 'model'"),
    ('{"model": "missing.pt"}', [], "does not exist"),
    ('{"model": "x.pt", "html": "r.html"}', [], "set by scan-many itself"),
    ('{"model": "x.pt", "gate": "sometimes"}', [], "'sometimes' is not one of"),
    ('{"model": "x.pt"}', ["--no-such-option"], "No such option"),
    ('not json', [], "not JSON"),
])
def test_bad_manifest_is_one_line_exit_2_and_nothing_starts(tmp_path, lines, shared, message):
    (tmp_path / "x.pt").write_bytes(b"x")
    (tmp_path / "m.jsonl").write_text(lines + "\n")
    with pytest.raises(AuditorInputError, match=message):
        plan(tmp_path / "m.jsonl", shared)
    proc = scan_many("m.jsonl", "--output-dir", "out", "--", *shared, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_source_is_exit_2(tmp_path):
    (tmp_path / "list.txt").write_text("x.pt\n")
    for source, message in (("nowhere", "does not exist"), ("list.txt", "folder of models or a .jsonl/.csv"), (".", "no model in")):
        proc = scan_many(source, "--output-dir", "out", cwd=tmp_path, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    """Each fixture model audited by a plain `auditor scan` with the same options."""
    root = tmp_path_factory.mktemp("direct")
    return {m.name: run_auditor(root / m.stem, m, *OPTIONS).data for m in (CLEAN_PT, BADNETS_PT)}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("many_local")
    models_folder(root)
    start = time.monotonic()
    proc = scan_many("models", "--jobs", "2", "--output-dir", "out", "--json", "index.json", "--html", "index.html", "--", *OPTIONS, cwd=root)
    return root, proc, time.monotonic() - start


def assert_same_as_direct(index: dict, direct: dict) -> None:
    audits = {a["name"]: a for a in index["audits"]}
    assert sorted(audits) == sorted(direct)
    for name, single in direct.items():
        mine = json.loads(Path(audits[name]["result"]).read_text())
        assert (audits[name]["verdict"], audits[name]["exit_code"]) == (single["verdict"], single["exit_code"]), name
        assert mine["metrics"] == single["metrics"], name
        assert mine["scan"]["flagged_classes"] == single["scan"]["flagged_classes"]
        assert [(c["name"], c["stage"], c["outcome"]) for c in mine["checks"]] == [(c["name"], c["stage"], c["outcome"]) for c in single["checks"]]
    assert {n: d["verdict"] for n, d in direct.items()} == {"clean_cnn.pt": "pass", "badnets_cnn.pt": "fail"}  # the test can tell them apart


@pytest.mark.slow
def test_local_run_gives_the_verdicts_of_single_scans(local_run, direct):
    root, proc, _ = local_run
    assert proc.returncode == 1, proc.stderr  # one model failed
    index = json.loads((root / "index.json").read_text())
    assert index["schema_version"] == "1.0" and index["summary"]["failed"] == 1 and index["summary"]["passed"] == 1
    assert_same_as_direct(index, direct)
    for a in index["audits"]:
        folder = root / "out" / a["name"]
        assert {"report.html", "result.json", "junit.xml"} <= {p.name for p in folder.iterdir()}
        assert a["cached"] is False and a["attempts"] == 1
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("[")]
    assert len(progress) == 2 and any("badnets_cnn.pt: FAIL (exit 1) in" in ln for ln in progress)
    page = (root / "index.html").read_text()
    assert 'href="out/badnets_cnn.pt/report.html"' in page and "FAIL (exit 1)" in page and "<script" not in page
    assert "99." in page  # the badnets model's known-trigger ASR before


@pytest.mark.slow
def test_cache_skips_a_second_run_and_force_reruns(local_run):
    root, first, first_seconds = local_run
    start = time.monotonic()
    again = scan_many("models", "--jobs", "2", "--output-dir", "out", "--json", "again.json", "--", *OPTIONS, cwd=root)
    assert again.returncode == first.returncode
    assert time.monotonic() - start < first_seconds / 2
    index = json.loads((root / "again.json").read_text())
    assert all(a["cached"] for a in index["audits"]) and index["summary"]["cached"] == 2
    assert "(cached)" in again.stderr
    changed = scan_many("models", "--output-dir", "out", "--json", "changed.json", "--", *OPTIONS, "--seed", "1", cwd=root)
    assert not any(a["cached"] for a in json.loads((root / "changed.json").read_text())["audits"])  # other settings: other key
    forced = scan_many("models", "--jobs", "2", "--output-dir", "out", "--json", "forced.json", "--force", "--", *OPTIONS, "--seed", "1", cwd=root)
    assert forced.returncode == changed.returncode == 1
    assert not any(a["cached"] for a in json.loads((root / "forced.json").read_text())["audits"])


@pytest.mark.slow
def test_ray_run_gives_the_verdicts_of_single_scans(tmp_path, direct):
    ray_or_skip()
    models_folder(tmp_path)
    proc = scan_many("models", "--executor", "ray", "--jobs", "2", "--output-dir", "out", "--json", "index.json", "--", *OPTIONS, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["summary"]["executor"] == "ray"
    assert_same_as_direct(index, direct)


def _audit_pids(model: Path) -> list[int]:
    """The `python -m auditor scan MODEL` processes now running for this model."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and b"scan" in argv and str(model).encode() in argv and b"auditor" in argv:
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_killed_audit_is_retried_and_an_unreadable_model_errors_alone(tmp_path, executor):
    if executor == "ray":
        ray_or_skip()
    folder = models_folder(tmp_path)
    (folder / "badnets_cnn.pt").unlink()
    (folder / "broken.pt").write_bytes(b"this is not a model")
    model = folder / "clean_cnn.pt"
    proc = subprocess.Popen([str(AUDITOR_BIN), "scan-many", "models", "--executor", executor, "--jobs", "2", "--output-dir", "out",
                             "--json", "index.json", "--", *OPTIONS], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.monotonic() + 300, None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        pids = _audit_pids(model)
        if pids:
            time.sleep(2)  # well into the audit, not at its first instruction
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.1)
    _, stderr = proc.communicate(timeout=600)
    assert killed is not None, "never saw the audit's process"
    assert proc.returncode == 2, stderr  # the broken model errored
    audits = {a["name"]: a for a in json.loads((tmp_path / "index.json").read_text())["audits"]}
    assert audits["clean_cnn.pt"]["attempts"] == 2 and audits["clean_cnn.pt"]["verdict"] == "pass", audits
    assert audits["clean_cnn.pt"]["exit_code"] == 0
    assert audits["broken.pt"]["exit_code"] == 2 and audits["broken.pt"]["verdict"] == "error" and audits["broken.pt"]["error"]
    assert "after 2 attempts" in stderr
