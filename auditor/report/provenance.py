"""Where an audit's result came from: who ran what, when, where, on which exact files, and what it wrote.

A compliance archive must be able to tie a verdict to the bytes it was about: every input and every
written model file is named with its SHA-256, so a later reader can check the files they hold are
the ones audited.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

CHUNK = 1 << 20


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(root: Path) -> tuple[str, int]:
    """One hash for a folder: SHA-256 over `sha256sum`-style lines ("<hash>  <relative path>"), sorted by
    path, so the same files give the same hash on any machine whatever order the file system lists them in."""
    lines = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()):
        lines.append(f"{file_sha256(path)}  {path.relative_to(root).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest(), len(lines)


def describe_file(role: str, path, sha256: str | None = None) -> dict:
    """An input or output entry: path, kind, SHA-256 and size (null when it cannot be read)."""
    path = Path(path)
    entry = {"role": role, "path": str(path), "kind": "file", "sha256": sha256, "size_bytes": None}
    try:
        if path.is_dir():
            entry["sha256"], entry["files"] = folder_sha256(path)
            entry.update(kind="folder", size_bytes=sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            entry["size_bytes"] = path.stat().st_size
            entry["sha256"] = sha256 or file_sha256(path)
    except OSError as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
    return entry


def ci_context(env=os.environ) -> dict | None:
    """The CI job that ran the audit, from the variables GitHub Actions and GitLab CI set."""
    if env.get("GITHUB_ACTIONS") == "true":
        server, repo, run = env.get("GITHUB_SERVER_URL", "https://github.com"), env.get("GITHUB_REPOSITORY"), env.get("GITHUB_RUN_ID")
        return {"system": "github-actions", "run_id": run, "run_attempt": env.get("GITHUB_RUN_ATTEMPT"), "job": env.get("GITHUB_JOB"),
                "workflow": env.get("GITHUB_WORKFLOW"), "repository": repo, "commit": env.get("GITHUB_SHA"),
                "ref": env.get("GITHUB_REF"), "url": f"{server}/{repo}/actions/runs/{run}" if repo and run else None}
    if env.get("GITLAB_CI") == "true":
        return {"system": "gitlab-ci", "run_id": env.get("CI_PIPELINE_ID"), "job": env.get("CI_JOB_ID"),
                "workflow": env.get("CI_JOB_NAME"), "repository": env.get("CI_PROJECT_PATH"), "commit": env.get("CI_COMMIT_SHA"),
                "ref": env.get("CI_COMMIT_REF_NAME"), "url": env.get("CI_JOB_URL")}
    if env.get("CI", "").lower() in ("true", "1"):
        return {"system": "ci", "run_id": None, "job": None, "repository": None, "commit": None, "url": None}
    return None


def command_line(argv=None) -> list[str]:
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("auditor", "auditor.exe"):
        argv[0] = "auditor"  # the console script's full path says where the venv is, not what was run
    elif argv and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "auditor":
        argv[:1] = ["python", "-m", "auditor"]
    return argv


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry and no USER variable
        return None


def data_input(spec: str | None) -> dict | None:
    """--data as an input entry: a file or folder is hashed; a bundled set names the file it reads."""
    if spec is None or spec == "none":
        return None
    from ..data import BUNDLED

    if spec in BUNDLED:
        return {**describe_file("data", BUNDLED[spec]), "kind": "bundled", "name": spec}
    return describe_file("data", spec)


def _is_sidecar(path: Path) -> bool:
    """The metadata file read beside the model when no --metadata is given (loading does the same test)."""
    import json

    try:
        return path.is_file() and path.stat().st_size < 1 << 20 and "auditor_metadata" in json.loads(path.read_text())
    except (OSError, ValueError, AttributeError):
        return False


def build_provenance(session, result: dict) -> dict:
    cfg = session.config
    model_hash = (result.get("model") or {}).get("sha256")
    inputs = [describe_file("model", cfg.model, model_hash if Path(cfg.model).is_file() else None)]
    # an ONNX file's weights can live in other files (the torch exporter's `.onnx.data`): they are as much
    # the audited model as the graph is
    inputs += [describe_file("model_external_data", f) for f in (result.get("model") or {}).get("external_files") or ()]
    if (data := data_input(cfg.data)) is not None:
        inputs.append(data)
    for role in ("trigger", "metadata", "paired_model", "reference_model"):
        if getattr(cfg, role, None) is not None:
            inputs.append(describe_file(role, getattr(cfg, role)))
    if cfg.metadata is None and _is_sidecar(Path(cfg.model).with_suffix(".json")):
        inputs.append(describe_file("metadata", Path(cfg.model).with_suffix(".json")))
    outputs = [describe_file("repaired_metadata" if kind == "metadata" else "repaired_model", path)
               for kind, path in ((result.get("defense") or {}).get("outputs") or {}).items()]
    return {
        "tool": {"name": "auditor", "version": result["versions"].get("auditor")},
        "timestamp": session.started_utc, "finished": utc_now(),
        "command_line": command_line(), "user": _user(), "host": socket.gethostname(), "ci": ci_context(),
        "inputs": inputs, "outputs": outputs,
        # the reports this audit writes (their hashes cannot be inside themselves; the ML-BOM hashes those
        # written before it)
        "reports": {kind: str(getattr(cfg, kind)) for kind in ("html", "json", "junitxml", "sarif", "cyclonedx")
                    if getattr(cfg, kind, None) is not None},
        "seed": cfg.seed, "device": (result.get("model") or {}).get("device") or cfg.device,
        "versions": result["versions"],
    }
