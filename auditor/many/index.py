"""scan-many's index of its audits: a JSON summary (--json) and one self-contained HTML page (--html)."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from .audit import write_atomic


def exit_code(audits: list[dict]) -> int:
    codes = {a["exit_code"] for a in audits}
    return 2 if codes - {0, 1} else 1 if 1 in codes else 0


def summary(audits: list[dict], planned: int, **extra) -> dict:
    return {"planned": planned, "finished": len(audits),
            "passed": sum(a["exit_code"] == 0 for a in audits), "failed": sum(a["exit_code"] == 1 for a in audits),
            "errored": sum(a["exit_code"] not in (0, 1) for a in audits), "cached": sum(a["cached"] for a in audits),
            "audit_seconds": round(sum(a["seconds"] or 0 for a in audits), 3), "exit_code": exit_code(audits), **extra}


def write_json(path: Path, audits: list[dict], summ: dict) -> None:
    keep = ("model", "name", "verdict", "exit_code", "result", "report", "seconds", "cached", "attempts", "host", "sha256", "error")
    doc = {"schema_version": "1.0", "audits": [{k: a[k] for k in keep if k in a} for a in audits], "summary": summ}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(doc, indent=2) + "\n")


def _result(a: dict) -> dict:
    try:
        return json.loads(Path(a["result"]).read_text()) if a.get("result") else {}
    except (OSError, ValueError):
        return {}


def _pct(stage: dict, key: str) -> str:
    v = stage.get(key)
    return f"{v:.1%}" if isinstance(v, (int, float)) else "–"


CSS = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}td.n{text-align:right}
.pass{background:#e6f4ea}.fail{background:#fde7e7}.error{background:#fff4d6}small{color:#666}"""


def write_html(path: Path, audits: list[dict], summ: dict) -> None:
    rows = []
    for a in sorted(audits, key=lambda a: (-a["exit_code"] if a["exit_code"] in (0, 1) else -9, a["name"])):
        r = _result(a)
        m = r.get("metrics") or {}
        before, after = m.get("before") or {}, m.get("after") or {}
        flagged = (r.get("scan") or {}).get("flagged_classes")
        verdict = a["verdict"] if a["verdict"] in ("pass", "fail") else "error"
        report = a.get("report")
        link = (f'<a href="{html.escape(os.path.relpath(report, path.parent))}">report</a>'
                if report and Path(report).is_file() else "–")
        note = f"<br><small>{html.escape(a['error'])}</small>" if a.get("error") else ""
        time = f"{a['seconds']:.1f}s" + (" (cached)" if a["cached"] else "")
        rows.append(f'<tr class="{verdict}"><td>{html.escape(a["name"])}<br><small>{html.escape(a["model"])}</small></td>'
                    f'<td>{a["verdict"].upper()} (exit {a["exit_code"]}){note}</td>'
                    f'<td>{html.escape(", ".join(map(str, flagged))) if flagged else "none" if flagged == [] else "–"}</td>'
                    + "".join(f'<td class="n">{_pct(s, k)}</td>' for k in ("asr", "c_acc") for s in (before, after))
                    + f'<td class="n">{time}</td><td>{link}</td></tr>')
    s = summ
    head = (f"{s['finished']} of {s['planned']} audits: {s['passed']} passed, {s['failed']} failed, {s['errored']} errors"
            f" ({s['cached']} from the cache){'; interrupted' if s.get('interrupted') else ''}. Exit code {s['exit_code']}.")
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>auditor scan-many</title>
<style>{CSS}</style></head><body><h1>auditor scan-many</h1><p>{html.escape(head)}</p>
<table><thead><tr><th>Model</th><th>Verdict</th><th>Flagged classes</th><th>ASR before</th><th>ASR after</th>
<th>C-ACC before</th><th>C-ACC after</th><th>Time</th><th>Report</th></tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table><p><small>ASR and C-ACC as each audit's result reports them (metrics.before, metrics.after: the repaired model); – where not measured.</small></p>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)
