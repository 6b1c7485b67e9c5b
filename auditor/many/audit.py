"""One audit of `auditor scan-many`: an `auditor scan` subprocess (a crash cannot take the other
audits, and the verdict is by construction the one `scan` gives), retried once when it is killed;
plus the hashes and the result cache that let a re-run skip what is done.

run_one() is also the Ray task, so it takes and returns plain dicts."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPORTS = ("report.html", "result.json", "junit.xml", "scan.log")
STOPPING = threading.Event()       # set on Ctrl-C: no retry, no new subprocess
RUNNING: set[subprocess.Popen] = set()


def sha256_of(path: Path) -> str:
    """A file's SHA-256; a hub folder's is provenance's folder hash, so the index and each audit's
    provenance name a folder by the same hash."""
    from ..report.provenance import file_sha256, folder_sha256

    path = Path(path)
    return folder_sha256(path)[0] if path.is_dir() else file_sha256(path)


def cache_key(model: Path, model_sha: str, args: tuple[str, ...], version: str) -> str:
    """The model's bytes, every option, the bytes of every file an option names (trigger, metadata,
    an .npz data set) and of the model's metadata sidecar, and the auditor version. Data folders enter
    by path only: hashing a whole image folder would cost more than a cheap audit."""
    files = {a for a in args if os.path.isabs(a) and os.path.isfile(a)}
    if model.is_file() and model.with_suffix(".json").is_file():
        files.add(str(model.with_suffix(".json")))
    inputs = {f: sha256_of(Path(f)) for f in sorted(files)}
    blob = json.dumps({"model": model_sha, "args": list(args), "inputs": inputs, "version": version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so Ctrl-C or a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the process that started it dies, so a killed Ray
    worker leaves no orphan audit writing into the folder its retry uses (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    mine = [ln for ln in lines if ln.startswith("auditor:")]
    return (mine or lines or ["no output"])[-1][:500]


def run_one(job: dict) -> dict:
    """Run one audit. job: model, args, out (its folder), threads, sha256 (checked here, where the
    audit runs, before the model is loaded), ship (return the report files' bytes: the driver
    writes those it cannot see, when the workers' disks are not shared), die_with_parent."""
    out, model = Path(job["out"]), Path(job["model"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    outcome = {"exit_code": 2, "verdict": "error", "attempts": 0, "host": os.uname().nodename}
    if job.get("sha256"):
        try:
            here = sha256_of(model)
        except OSError as exc:
            here = f"unreadable ({exc.strerror or exc})"
        if here != job["sha256"]:
            return {**outcome, "seconds": round(time.monotonic() - start, 3),
                    "error": f"model on this worker is not the driver's: SHA-256 {here[:16]} here, {job['sha256'][:16]} there"}
    for name in REPORTS:  # a stale result from an earlier run must never be read as this one's
        (out / name).unlink(missing_ok=True)
    threads = str(max(1, int(job.get("threads") or 1)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    cmd = [sys.executable, "-m", "auditor", "scan", str(model), *job["args"], "--output-dir", str(out),
           "--html", str(out / "report.html"), "--json", str(out / "result.json"), "--junitxml", str(out / "junit.xml"), "-q"]
    rc = None
    for attempt in (1, 2):
        if STOPPING.is_set():
            break
        outcome["attempts"] = attempt
        with open(out / "scan.log", "a") as log:
            log.write(f"# attempt {attempt}: {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=out,
                                    preexec_fn=_die_with_parent if job.get("die_with_parent") else None)
            RUNNING.add(proc)
            try:
                rc = proc.wait()
            finally:
                RUNNING.discard(proc)
            if rc < 0:
                log.write(f"# attempt {attempt} killed by signal {-rc}\n")
        if rc >= 0:
            break
    outcome["seconds"] = round(time.monotonic() - start, 3)
    result = out / "result.json"
    if rc is not None and rc >= 0:
        outcome["exit_code"] = rc if result.is_file() else 2  # no result: nothing to trust, whatever the code
        if result.is_file():
            outcome["verdict"] = json.loads(result.read_text()).get("verdict", "error")
        if outcome["exit_code"] not in (0, 1):
            outcome["error"] = _error_line(out / "scan.log")
    else:
        outcome["error"] = "interrupted" if STOPPING.is_set() else f"killed by signal {-rc} on both attempts"
    if job.get("ship"):
        outcome["files"] = {n: (out / n).read_bytes() for n in REPORTS if (out / n).is_file()}
    return outcome
