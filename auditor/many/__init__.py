"""`auditor scan-many SOURCE`: audit every model of a folder or manifest, each as its own `auditor
scan` process, on this machine (local) or on a Ray cluster (ray), with a result cache and an index.

plan.py decides what runs, audit.py runs one audit (and keys the cache), executors.py schedules
them, index.py writes the summary JSON and HTML."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .. import __version__
from .audit import cache_key, sha256_of, write_atomic
from .executors import run_local, run_ray
from .index import summary, write_html, write_json
from .plan import Audit, plan

__all__ = ["scan_many", "plan", "Audit"]


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def scan_many(source: Path, shared_args: list[str], output_dir: Path, *, executor: str = "local", jobs: int | None = None,
              cpus_per_audit: float | None = None, gpus_per_audit: float = 0, ray_address: str | None = None,
              force: bool = False, json_path: Path | None = None, html_path: Path | None = None, echo=_echo) -> int:
    """Run the audits; returns the exit code (0 all passed, 1 any failed, 2 any errored, 130 interrupted)."""
    audits = plan(Path(source), list(shared_args))  # every input error surfaces here, before anything starts
    output_dir = Path(output_dir).resolve()  # the cache and index hold absolute paths: valid from any cwd
    cache = output_dir / ".scan-many-cache"
    cache.mkdir(parents=True, exist_ok=True)
    started, finished, jobs_list, slots = time.monotonic(), [], [], []
    total = len(audits)

    def record(audit: Audit, outcome: dict, cached: bool, key: str | None, sha: str | None) -> None:
        folder = output_dir / audit.name
        for name, data in (outcome.pop("files", None) or {}).items():  # reports a remote worker could not write here
            if not (folder / name).is_file():
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
        result = folder / "result.json"
        entry = {"model": str(audit.model), "name": audit.name, "verdict": outcome["verdict"], "exit_code": outcome["exit_code"],
                 "result": str(result) if result.is_file() else None,
                 "report": str(folder / "report.html") if (folder / "report.html").is_file() else None,
                 "seconds": outcome.get("seconds"), "cached": cached, "attempts": outcome.get("attempts", 0),
                 "host": outcome.get("host"), "sha256": sha}
        if outcome.get("error"):
            entry["error"] = outcome["error"]
        if key and not cached and entry["exit_code"] in (0, 1) and entry["result"]:
            write_atomic(cache / f"{key}.json", json.dumps({**entry, "args": list(audit.args)}, indent=1))
        finished.append(entry)
        how = "(cached)" if cached else f"(exit {entry['exit_code']}) in {entry['seconds']:.1f}s"
        retried = f" after {entry['attempts']} attempts" if entry["attempts"] > 1 else ""
        tail = f": {entry['error']}" if entry.get("error") else ""
        echo(f"[{len(finished)}/{total}] {audit.name}: {entry['verdict'].upper()} {how}{retried}{tail}")

    for audit in audits:
        try:
            sha = sha256_of(audit.model)
        except OSError as exc:  # unreadable: an error for this model only
            record(audit, {"exit_code": 2, "verdict": "error", "seconds": 0.0, "error": f"cannot read {audit.model}: {exc.strerror or exc}"},
                   False, None, None)
            continue
        key = cache_key(audit.model, sha, audit.args, __version__)
        hit = cache / f"{key}.json"
        if not force and hit.is_file():
            entry = json.loads(hit.read_text())
            if entry.get("result") and Path(entry["result"]).is_file():
                record(audit, {**entry, "seconds": entry.get("seconds") or 0.0}, True, key, sha)
                continue
        slots.append((audit, key, sha))
        jobs_list.append({"model": str(audit.model), "args": list(audit.args), "out": str((output_dir / audit.name).resolve()), "sha256": sha})

    workers = max(1, jobs or 1)
    interrupted = False
    on_done = lambda i, outcome: record(slots[i][0], outcome, False, slots[i][1], slots[i][2])  # noqa: E731
    try:
        if jobs_list and executor == "ray":
            run_ray(jobs_list, ray_address, jobs, cpus_per_audit, gpus_per_audit, on_done)
        elif jobs_list:
            threads = max(1, int(cpus_per_audit or (os.cpu_count() or 1) // workers))
            run_local([{**j, "threads": threads} for j in jobs_list], workers, on_done)
    except KeyboardInterrupt:
        interrupted = True
        echo(f"scan-many: interrupted; {len(finished)} of {total} audits finished and kept")
    finally:
        summ = summary(finished, total, interrupted=interrupted, executor=executor, jobs=jobs,
                       wall_seconds=round(time.monotonic() - started, 3))
        if json_path:
            write_json(Path(json_path), finished, summ)
        if html_path:
            write_html(Path(html_path), finished, summ)
    return 130 if interrupted else summ["exit_code"]
