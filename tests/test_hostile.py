"""The hostile corpus (tests/hostile/corpus.py) through the real CLI.

For every case: nothing from the file runs (its marker file never appears), the exit code is 2, the
first stderr line is `auditor: error: <file>: <what is wrong>`, the inputs keep their bytes and mtimes,
the output folder holds exactly the finished HTML and JSON reports, and the JSON marks the
serialization-safety check failed or errored when the file itself is the problem.

Most cases run in-process through click's CliRunner (the torch import is paid once); a few run as
real `auditor` processes.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.errors import AuditorInputError, UnsafeModelError
from hostile import corpus

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SUBPROCESS_CASES = {"os_system", "polyglot_no_proto_header", "data_npz_pickled_objects"}
AUDITOR_BIN = Path(sys.executable).with_name("auditor")


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    corpus.build(root)
    yield root
    (root / "data_unreadable_folder" / "data").chmod(0o755)  # let pytest remove it


def snapshot(*paths: Path) -> dict[str, tuple]:
    """Bytes (hashed, up to 64 MiB), size and mtime of every file under `paths`; symlinks as links."""
    out = {}
    for top in paths:
        for entry in [top, *top.rglob("*")] if top.is_dir() else [top]:
            st = entry.lstat()
            if entry.is_symlink():
                out[str(entry)] = ("link", os.readlink(entry), st.st_mtime_ns)
            elif entry.is_file():
                digest = hashlib.sha256(entry.read_bytes()).hexdigest() if st.st_size <= 64 * 2**20 else None
                out[str(entry)] = (digest, st.st_size, st.st_mtime_ns)
    return out


def run_auditor(args: list[str], real_process: bool) -> tuple[int, str, str]:
    if real_process:
        command = [str(AUDITOR_BIN)] if AUDITOR_BIN.exists() else [sys.executable, "-m", "auditor.cli"]
        proc = subprocess.run(command + args, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda c: c.name)
def test_hostile_case_fails_closed(case, corpus_root, tmp_path, monkeypatch):
    if case.name == "data_unreadable_folder" and IS_ROOT:
        pytest.skip("running as root: chmod 000 does not stop root from reading (covered in-process below)")
    monkeypatch.chdir(tmp_path)  # no ./auditor.toml, and nothing lands in the repository
    out = tmp_path / "out"
    inputs = (case.folder(corpus_root), corpus_root / "secret.bin")
    before = snapshot(*inputs)

    code, stdout, stderr = run_auditor(case.cli_args(corpus_root, out), case.name in SUBPROCESS_CASES)

    if case.live:
        time.sleep(0.2)  # a payload that spawned a process would need a moment
    assert not case.marker(corpus_root).exists(), "a payload ran"
    assert code == 2, f"exit {code}\n{stdout}\n{stderr}"
    first = stderr.splitlines()[0] if stderr else ""
    assert first.startswith("auditor: error: "), stderr
    assert str(case.named(corpus_root)) in first, first
    assert case.expect in first.lower(), first
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr
    assert snapshot(*inputs) == before, "an input file changed"
    assert sorted(p.name for p in out.iterdir()) == ["r.html", "r.json"], "stray or half-written output"

    html = (out / "r.html").read_text()
    assert "ERROR" in html or "FAIL" in html
    result = json.loads((out / "r.json").read_text())
    assert (result["verdict"], result["exit_code"]) == ("error", 2)
    assert result["errors"] and all("\n" not in line for line in result["errors"])
    serialization = {c["outcome"] for c in result["checks"]
                     if c["name"] == "check_serialization_safety" and c["stage"] == "before"}
    if case.file_problem:
        assert serialization and serialization <= {"failed", "error"}, serialization


def test_payloads_are_live(tmp_path):
    """The corpus bites: unpickling the files (what torch.load(weights_only=False) or
    np.load(allow_pickle=True) would do), or loading a TorchScript archive with torch.jit.load and
    running its methods, creates the markers. Harmless: each only touches a file."""
    live = corpus.build(tmp_path, {c.name for c in corpus.CASES if c.live})
    script = (
        "import pickle, sys, numpy, torch, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "for path in sys.argv[1:]:\n"
        "    kind, path = path.split(':', 1)\n"
        "    if kind == 'torchscript':\n"
        "        try:\n"
        "            m = torch.jit.load(path)\n"  # __setstate__ runs here
        "            m(torch.zeros(1, 1, 28, 28))\n"
        "            if hasattr(m, 'calibrate'):\n"
        "                m.calibrate(torch.zeros(1))\n"
        "        except RuntimeError:\n"
        "            pass\n"  # a __setstate__ payload leaves the module half-built, after it ran
        "    elif kind == 'hub':\n"  # what a user's own code would do with the folder
        "        import glob, transformers\n"
        "        for pickled in glob.glob(path + '/*.bin'):\n"
        "            try:\n"
        "                torch.load(pickled, weights_only=False)\n"
        "            except Exception:\n"
        "                pass\n"
        "        try:\n"
        "            transformers.AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True)\n"
        "        except Exception:\n"
        "            pass\n"
        "    elif path.endswith('.npz'):\n"
        "        numpy.load(path, allow_pickle=True)['x']\n"
        "    else:\n"
        "        with open(path, 'rb') as fh:\n"
        "            pickle.load(fh)\n"
    )
    files = [f"{c.group}:{c.folder(tmp_path) / (c.data or c.filename)}" for c in live]
    subprocess.run([sys.executable, "-c", script, *files], cwd=tmp_path, check=True, timeout=120,
                   capture_output=True)
    deadline = time.monotonic() + 10  # Popen and spawnv return before their child has run
    while time.monotonic() < deadline and not all(c.marker(tmp_path).exists() for c in live):
        time.sleep(0.1)
    assert [c.name for c in live if not c.marker(tmp_path).exists()] == []


@pytest.mark.parametrize("case", [c for c in corpus.CASES if c.group in ("pickle", "zip", "torchscript")],
                         ids=lambda c: c.name)
def test_static_scan_refuses(case, corpus_root):
    """The serialization check's static pass alone (container, pickles, TorchScript code) refuses every
    case: what the loader refuses, the report's first check already says, before anything is loaded."""
    from auditor.loading.pickle_scan import scan_file
    from auditor.loading.safety import inspect_file

    report = inspect_file(case.model(corpus_root))
    assert not report.ok, report
    try:
        result = scan_file(case.model(corpus_root))
    except AuditorInputError:
        return
    if case.name in ("zip_uppercase_data_pkl", "polyglot_no_proto_header"):  # scanner bypasses, now fixed
        assert "os.system" in {f.qualname for f in result.unsafe}


# ---------------------------------------------------------------- resource limits, in-process

def _forbid_opening(monkeypatch, path: Path) -> None:
    """Any attempt to open `path` for reading fails the test."""
    for module in (builtins, io):
        real = module.open

        def guarded(file, *args, _real=real, **kwargs):
            if isinstance(file, (str, os.PathLike)) and Path(file) == path:
                raise AssertionError(f"{path} was opened")
            return _real(file, *args, **kwargs)

        monkeypatch.setattr(module, "open", guarded)


def test_oversized_file_is_refused_unread(tmp_path, monkeypatch):
    from auditor.loading import LoadRequest, load_model
    from auditor.loading.safety import inspect_file

    big = tmp_path / "big.pt"
    with open(big, "wb") as fh:
        fh.truncate(corpus.SPARSE_SIZE)  # sparse: 5 GiB declared, nothing on disk
    _forbid_opening(monkeypatch, big)
    for call in (lambda: load_model(LoadRequest(big, arch="auditor.zoo:small_cnn")), lambda: inspect_file(big)):
        with pytest.raises(AuditorInputError, match="over the limit"):
            call()


def test_huge_declared_onnx_tensor_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    import onnx

    from auditor.loading import LoadRequest, load_model
    from auditor.loading.safety import inspect_file

    (case,) = corpus.build(tmp_path, {"onnx_huge_declared_tensor"})
    path = case.model(tmp_path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("went past the size check")

    monkeypatch.setattr(onnx.checker, "check_model", must_not_run)
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", must_not_run)
    with pytest.raises(UnsafeModelError, match="declares 4,000,000,000,000 bytes"):
        load_model(LoadRequest(path))
    assert any("declares" in f for f in inspect_file(path).findings)


# ---------------------------------------------------------------- regressions for the hardening fixes

def test_unreadable_data_folder_is_an_input_error(tmp_path, monkeypatch):
    """chmod 000 does not bind root, so the permission error is simulated."""
    from auditor.data import load_data

    (tmp_path / "data" / "cat").mkdir(parents=True)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(AuditorInputError, match="cannot list the data folder: Permission denied"):
        load_data(str(tmp_path / "data"))


def test_safetensors_with_many_tensors_is_not_refused(tmp_path):
    """The end-of-data bound came from re-serialising the header, which is longer than the file's
    compact header: a valid file with a few hundred tensors was refused as 'past the end'."""
    import torch
    from safetensors.torch import save_file

    from auditor.loading import files
    from auditor.loading.torch_files import load_safetensors_file

    path = tmp_path / "many.safetensors"
    save_file({f"layer{i}.weight": torch.full((2,), float(i)) for i in range(300)}, str(path))
    size = path.stat().st_size
    state = load_safetensors_file(path, files.safetensors_header(path, size), size)
    assert len(state) == 300 and state["layer299.weight"][0] == 299
