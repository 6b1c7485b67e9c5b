"""Benchmark: `auditor scan-many` throughput and scheduling overhead against a bare loop.

    .venv/bin/python bench/bench_scan_many.py                  # 2 copies of each fixture, every mode
    .venv/bin/python bench/bench_scan_many.py --copies 8 --workers 1 4 8 --modes local ray
    RAY_ADDRESS=ray://head:10001 .venv/bin/python bench/bench_scan_many.py --modes ray --workers 8 16

Audits: copies of fixtures/models/{clean,badnets}_cnn.pt with the cheap scan the tests use
(neural-cleanse, max_steps=1, --defense none, the known trigger). Modes: `bare` runs the audits
one after another as plain `auditor scan` subprocesses; `local` and `ray` run `auditor scan-many
--force` with --jobs W. Overhead per audit = (wall x W - sum of the audits' own seconds) / audits:
the worker-seconds spent on anything but an audit (process start of scan-many, Ray start-up,
scheduling, idle workers at the tail), so 0 is perfect packing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "fixtures" / "models"
TRIGGER = MODELS / "badnets_cnn.trigger.json"
OPTIONS = ["--trigger", str(TRIGGER), "--scan", "neural-cleanse", "--scan-param", "max_steps=1", "--defense", "none"]
AUDITOR = [sys.executable, "-m", "auditor"]


def make_models(folder: Path, copies: int) -> list[Path]:
    folder.mkdir(parents=True)
    out = []
    for i in range(copies):
        for stem in ("clean_cnn", "badnets_cnn"):
            shutil.copy(MODELS / f"{stem}.pt", folder / f"{stem}_{i}.pt")
            shutil.copy(MODELS / f"{stem}.json", folder / f"{stem}_{i}.json")
            out.append(folder / f"{stem}_{i}.pt")
    return out


def bare(models: list[Path], out: Path) -> tuple[float, float, dict]:
    start, own, verdicts = time.monotonic(), 0.0, {}
    for m in models:
        t = time.monotonic()
        proc = subprocess.run([*AUDITOR, "scan", str(m), *OPTIONS, "-q", "--output-dir", str(out / m.name),
                               "--json", str(out / m.name / "result.json")], capture_output=True, text=True)
        own += time.monotonic() - t
        verdicts[m.name] = proc.returncode
    return time.monotonic() - start, own, verdicts


def many(folder: Path, out: Path, executor: str, workers: int) -> tuple[float, float, dict]:
    index = out / "index.json"
    start = time.monotonic()
    proc = subprocess.run([*AUDITOR, "scan-many", str(folder), "--executor", executor, "--jobs", str(workers), "--force",
                           "--output-dir", str(out), "--json", str(index), "--", *OPTIONS], capture_output=True, text=True)
    wall = time.monotonic() - start
    if not index.is_file():
        sys.exit(f"scan-many failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    audits = json.loads(index.read_text())["audits"]
    return wall, sum(a["seconds"] for a in audits), {a["name"]: a["exit_code"] for a in audits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=2, help="copies of each of the two fixtures (audits = 2 x copies)")
    ap.add_argument("--full", action="store_true", help="default audits (scan, defense and repair at full budgets) instead of the cheap scan")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["bare", "local", "ray"], choices=["bare", "local", "ray"])
    args = ap.parse_args()
    if args.full:
        OPTIONS[:] = ["--trigger", str(TRIGGER)]
    with tempfile.TemporaryDirectory(prefix="bench_scan_many_") as tmp:
        models = make_models(Path(tmp) / "models", args.copies)
        n, rows, reference = len(models), [], None
        runs = [("bare", 1)] if "bare" in args.modes else []
        runs += [(mode, w) for mode in ("local", "ray") if mode in args.modes for w in args.workers]
        for mode, w in runs:
            out = Path(tmp) / f"{mode}{w}"
            wall, own, codes = bare(models, out) if mode == "bare" else many(Path(tmp) / "models", out, mode, w)
            reference = reference or codes
            same = "yes" if codes == reference else "NO"
            rows.append((mode, w, wall, own, n * 60 / wall, (wall * w - own) / n, same))
            print(f"  {mode} x{w}: {wall:.1f}s", file=sys.stderr, flush=True)
    base = {r[1]: r[4] for r in rows if r[0] == "local"}.get(1)
    print(f"{n} audits (2 fixtures x {args.copies} copies), {'default budgets' if args.full else 'cheap scan'}; overhead = (wall x workers - audits' own s) / audits\n")
    print("| mode | workers | wall s | audits' own s | audits/min | vs local x1 | overhead s/audit | same exit codes |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for mode, w, wall, own, rate, over, same in rows:
        ratio = f"{rate / base:.2f}x" if base else "–"
        print(f"| {mode} | {w} | {wall:.1f} | {own:.1f} | {rate:.2f} | {ratio} | {over:.2f} | {same} |")


if __name__ == "__main__":
    main()
