"""Side by side: the auditor's gate, picklescan and ModelScan on the hostile pickle corpus.

    python3 -m venv /tmp/scanners-venv && /tmp/scanners-venv/bin/pip install picklescan modelscan
    .venv/bin/python bench/bench_scanners.py [--scanners-venv /tmp/scanners-venv]

The two scanners are NOT project dependencies: they run from their own virtual environment, one
process per file, exactly as a CI step would call them. The cases are the pickle-based ones of
tests/hostile/corpus.py (raw pickles, PyTorch zip archives and polyglots, TorchScript), generated
into a temporary folder; every payload would only create a marker file there.

Verdicts. auditor: BLOCK when the static serialization inspection (check_serialization_safety)
or the fail-closed loader refuses the file (`scan:` / `loader:` says which caught it first).
picklescan: BLOCK on exit 1 (dangerous globals), `error` on exit 2, `pass` on exit 0. ModelScan:
BLOCK when its JSON report lists issues, `error` when it lists errors, `not scanned` when it
skipped the file (exit 3, "No issues found"), `pass` otherwise. A case counts as refused by a tool
when it is BLOCK or error.

Prints a markdown table, then the cases either tool refuses that our gate lets through (there must
be none: exit 1 otherwise) and the cases our gate blocks that each tool misses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hostile import corpus  # noqa: E402

GROUPS = ("pickle", "zip", "torchscript")
EXTRA = ("legacy_checkpoint_truncated",)


def short(text: str, width: int = 48) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def auditor_verdict(path: Path) -> tuple[bool, str]:
    from auditor.errors import AuditorInputError
    from auditor.loading import LoadRequest, load_model
    from auditor.loading.safety import inspect_file

    try:
        report = inspect_file(path)
        static = [line.replace(f"{path}: ", "") for line in report.findings + report.problems]
    except AuditorInputError as exc:
        static = [str(exc).replace(f"{path}: ", "")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_model(LoadRequest(path, arch="auditor.zoo:small_cnn", input_shape=(1, 28, 28)))
        loader = None
    except AuditorInputError as exc:
        loader = str(exc).replace(f"{path}: ", "")
    if static:
        found = re.match(r"imports (\S+)", static[0])
        return True, "BLOCK scan: " + short(found.group(1) if found else static[0])
    if loader:
        return True, "BLOCK loader: " + short(loader)
    return False, "pass"


def picklescan_verdict(venv: Path, path: Path) -> tuple[bool, str]:
    proc = subprocess.run([str(venv / "bin" / "picklescan"), "-p", str(path)], capture_output=True, text=True,
                          timeout=120)
    found = re.findall(r"dangerous import '([^']+)'", proc.stdout)
    if proc.returncode == 1:
        return True, "BLOCK: " + short(", ".join(sorted({f.replace(" ", ".") for f in found})) or "issues")
    if proc.returncode == 2:
        return True, "error (exit 2)"
    suspicious = re.findall(r"suspicious import '([^']+)'", proc.stdout)
    return False, "pass" + (f" ({len(suspicious)} suspicious)" if suspicious else "")


def modelscan_verdict(venv: Path, path: Path) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as cwd:  # it looks for ./modelscan-settings.toml
        report = Path(cwd) / "report.json"
        proc = subprocess.run([str(venv / "bin" / "modelscan"), "-p", str(path), "-r", "json", "-o", str(report)],
                              capture_output=True, text=True, cwd=cwd, timeout=300)
        data = json.loads(report.read_text()) if report.is_file() else {}
    issues, errors = data.get("issues") or [], data.get("errors") or []
    if issues:
        return True, "BLOCK: " + short(", ".join(sorted({f"{i.get('module')}.{i.get('operator')}" for i in issues})))
    if errors or proc.returncode in (2, 4) or not data:
        return True, f"error (exit {proc.returncode})"
    if not (data.get("summary", {}).get("scanned") or {}).get("total_scanned"):
        return False, f"not scanned (exit {proc.returncode})"
    return False, "pass"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scanners-venv", type=Path,
                        default=Path(os.environ.get("AUDITOR_SCANNERS_VENV", "/tmp/scanners-venv")),
                        help="virtual environment with picklescan and modelscan installed")
    args = parser.parse_args()
    venv = args.scanners_venv
    tools = {name: (venv / "bin" / name).exists() for name in ("picklescan", "modelscan")}
    if not all(tools.values()):
        print(f"picklescan/modelscan not found in {venv}: python3 -m venv {venv} && "
              f"{venv}/bin/pip install picklescan modelscan", file=sys.stderr)

    rows, refused_by_them, missed = [], [], {"picklescan": [], "ModelScan": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cases = corpus.build(root, {c.name for c in corpus.CASES if c.group in GROUPS or c.name in EXTRA})
        for case in cases:
            path = case.model(root)
            ours = auditor_verdict(path)
            theirs = {
                "picklescan": picklescan_verdict(venv, path) if tools["picklescan"] else (False, "not installed"),
                "ModelScan": modelscan_verdict(venv, path) if tools["modelscan"] else (False, "not installed"),
            }
            if any(c.marker(root).exists() for c in cases):
                print(f"a payload ran while scanning {case.name}", file=sys.stderr)
                return 1
            rows.append((case.name, ours, theirs))
            if any(refused for refused, _ in theirs.values()) and not ours[0]:
                refused_by_them.append(case.name)
            for tool, (refused, _) in theirs.items():
                if ours[0] and not refused:
                    missed[tool].append(case.name)

    print("| case | auditor | picklescan | ModelScan |")
    print("|---|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours[1]} | {theirs['picklescan'][1]} | {theirs['ModelScan'][1]} |")
    print()
    blocked = sum(ours[0] for _, ours, _ in rows)
    refused = {tool: sum(theirs[tool][0] for _, _, theirs in rows) for tool in missed}
    print(f"auditor blocks {blocked}/{len(rows)}; picklescan refuses {refused['picklescan']}, "
          f"ModelScan refuses {refused['ModelScan']}.")
    for tool, names in missed.items():
        print(f"blocked by the auditor, missed by {tool} ({len(names)}): {', '.join(names) or 'none'}")
    print(f"refused by picklescan or ModelScan but passed by the auditor: {', '.join(refused_by_them) or 'none'}")
    return 1 if refused_by_them else 0


if __name__ == "__main__":
    sys.exit(main())
