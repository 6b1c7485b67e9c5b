"""The self-contained HTML report of `auditor train`: no JavaScript, no external requests; pictures
are inline SVG (the loss trajectories, the isolation scores) and PNG thumbnails of the suspects."""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

import torch

from .images import png_base64

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:1100px;padding:0 1rem;color:#111;line-height:1.45}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
.banner{padding:.8rem 1rem;border-radius:6px;font-weight:600;font-size:1.1rem}
.pass{background:#e3f4e6;border:2px solid #1b7a32}.fail{background:#fbe4e4;border:2px solid #a31d1d}
.error{background:#fff1d6;border:2px solid #9a6200}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #bbb;padding:.25rem .5rem;text-align:left;color:#111}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.thumbs{display:flex;flex-wrap:wrap;gap:.6rem}.thumbs figure{margin:0;width:104px;font-size:.8rem;overflow-wrap:anywhere}
.thumbs img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #888}
svg text{font-size:11px;fill:#111}code{overflow-wrap:anywhere}
@media (max-width:600px){table{display:block;overflow-x:auto}}
"""


def _pct(v) -> str:
    return "not measured" if v is None else f"{100 * v:.2f}%"


def _label(c: int, names) -> str:
    return f"{c} ({names[c]})" if names else str(c)


def _line_chart(series: list[tuple[str, str, list[float]]], xs: list[float], title: str) -> str:
    """series: (name, colour, log10 values per x). Axes in data units, legend below."""
    w, h, left, bottom, top = 640, 260, 50, 30, 12
    values = [v for _, _, vals in series for v in vals]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def px(x):
        return left + (x - x0) / (x1 - x0) * (w - left - 10)

    def py(v):
        return top + (hi - v) / (hi - lo) * (h - top - bottom)

    parts = [f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {w} {h + 20 * len(series)}" width="100%" style="max-width:{w}px">']
    parts.append(f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="#444"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#444"/>')
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<text x="{left - 4}" y="{py(v) + 4:.1f}" text-anchor="end">1e{v:.1f}</text>'
                     f'<line x1="{left}" y1="{py(v):.1f}" x2="{w - 10}" y2="{py(v):.1f}" stroke="#ddd"/>')
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{h - bottom + 14}" text-anchor="middle">{x:g}</text>')
    parts.append(f'<text x="{(w + left) / 2}" y="{h - 2}" text-anchor="middle">epoch of stage 1</text>')
    for i, (name, colour, vals) in enumerate(series):
        points = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in zip(xs, vals))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2.5" points="{points}"/>')
        y = h + 14 + 20 * i
        parts.append(f'<line x1="{left}" y1="{y - 4}" x2="{left + 24}" y2="{y - 4}" stroke="{colour}" stroke-width="3"/>'
                     f'<text x="{left + 30}" y="{y}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(scores: torch.Tensor, suspect_mask: torch.Tensor, threshold: float, title: str) -> str:
    w, h, left, bottom = 640, 200, 50, 30
    lo, hi = float(scores.min()), float(scores.max())
    hi = hi if hi > lo else lo + 1
    bins = 60
    edges = torch.linspace(lo, hi, bins + 1)
    idx = ((scores - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)
    rest = torch.bincount(idx[~suspect_mask], minlength=bins).float()
    sus = torch.bincount(idx[suspect_mask], minlength=bins).float()
    top = float((rest + sus).max().clamp_min(1).log10())
    bw = (w - left - 10) / bins

    def bar_h(count):
        return 0 if count <= 0 else (float(torch.log10(count + 1)) / (top + 0.3)) * (h - bottom - 10)

    parts = [f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {w} {h + 40}" width="100%" style="max-width:{w}px">']
    for b in range(bins):
        x = left + b * bw
        hr, hs = bar_h(rest[b]), bar_h(rest[b] + sus[b])
        if hs > hr:
            parts.append(f'<rect x="{x:.1f}" y="{h - bottom - hs:.1f}" width="{bw - 1:.1f}" height="{hs - hr:.1f}" fill="#c0392b"/>')
        if hr > 0:
            parts.append(f'<rect x="{x:.1f}" y="{h - bottom - hr:.1f}" width="{bw - 1:.1f}" height="{hr:.1f}" fill="#7f8c8d"/>')
    tx = left + (threshold - lo) / (hi - lo) * (w - left - 10)
    if left <= tx <= w:
        parts.append(f'<line x1="{tx:.1f}" y1="8" x2="{tx:.1f}" y2="{h - bottom}" stroke="#111" stroke-dasharray="4 3"/>'
                     f'<text x="{tx + 4:.1f}" y="18">isolation threshold</text>')
    parts.append(f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="#444"/>')
    for k in range(0, bins + 1, 15):
        parts.append(f'<text x="{left + k * bw:.1f}" y="{h - bottom + 14}" text-anchor="middle">{float(edges[k]):.1f}</text>')
    parts.append(f'<text x="{(w + left) / 2}" y="{h - 2}" text-anchor="middle">isolation score (robust z of the log-loss fall; log-scale counts)</text>'
                 f'<rect x="{left}" y="{h + 12}" width="14" height="10" fill="#c0392b"/><text x="{left + 20}" y="{h + 21}">samples whose labels stage 3 dropped</text>'
                 f'<rect x="{left + 280}" y="{h + 12}" width="14" height="10" fill="#7f8c8d"/><text x="{left + 300}" y="{h + 21}">the rest</text></svg>')
    return "".join(parts)


def _trajectory_chart(summary: dict, result, suspects_local: torch.Tensor, poison_local) -> str:
    traj = result.trajectory.cpu().clamp_min(1e-8).log10()
    n = traj.shape[1]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[suspects_local] = True
    series = []
    if mask.any():
        series.append(("median, samples whose labels were dropped", "#c0392b", traj[:, mask].median(1).values.tolist()))
    series.append(("median, the rest", "#34495e", traj[:, ~mask].median(1).values.tolist()))
    if poison_local is not None and poison_local.any():
        series.append(("median, planted (the data's poison flags)", "#e67e22", traj[:, poison_local].median(1).values.tolist()))
    return _line_chart(series, result.recorded_at, "per-sample training loss over stage 1")


def write_train_report(path: Path, summary: dict, data, result, suspects, train_idx: torch.Tensor, poison_local, class_names,
                       num_classes: int) -> None:
    from ..outputs import atomic_write

    names = class_names
    verdict = summary["verdict"]
    css_class = {"pass": "pass", "fail": "fail"}.get(verdict, "error")
    ds, sus, val = summary["dataset"], summary["suspects"], summary["validation"]
    audit = summary["audit"]
    lines = [f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>",
             f"<title>auditor train: {escape(summary['data'])}</title><style>{CSS}</style></head><body>",
             f"<h1>auditor train — DLP on <code>{escape(summary['data'])}</code></h1>"]
    audit_line = {"pass": "the trained model passed every check that ran",
                  "fail": "a check failed on the trained model"}.get(verdict, "the audit of the trained model could not run")
    lines.append(f"<p class='banner {css_class}'>{escape(verdict.upper())} (exit {summary['exit_code']}): {audit_line}. "
                 f"{sus['count']} of {ds['training_samples']} training samples lost their labels as suspects; "
                 f"{sus['named']} are named as planted. Validation accuracy {_pct(val['accuracy'])}.</p>")
    iso = summary.get("isolation")
    if iso:
        lines.append("<p>The data carries poison flags: isolation measured against them "
                     f"({iso['planted_in_training_share']} planted samples in the training share).</p><table><tr><th>list</th>"
                     "<th class=n>samples</th><th class=n>planted among them</th><th class=n>precision</th><th class=n>recall</th></tr>")
        for key, label in (("named", "named as planted"), ("suspects", "suspects (labels dropped)")):
            r = iso[key]
            lines.append(f"<tr><td>{label}</td><td class=n>{r['selected']}</td><td class=n>{r['true_positives']}</td>"
                         f"<td class=n>{_pct(r['precision'])}</td><td class=n>{_pct(r['recall'])}</td></tr>")
        lines.append("</table>")

    lines.append("<h2>Data set</h2><table>")
    for k, v in (("samples", ds["samples"]), ("classes", ds["classes"]), ("input (C×H×W)", "×".join(map(str, ds["input"]))),
                 ("training share", ds["training_samples"]), ("validation share", f"{ds['validation_samples']} ({ds['validation_share']:.0%}, stratified, seed {summary['seed']})"),
                 ("normalisation", f"mean {summary['normalisation']['mean']}, std {summary['normalisation']['std']} (from {summary['normalisation']['from']})")):
        lines.append(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>")
    lines.append("</table>")

    lines.append("<h2>Suspects per label</h2><table><tr><th>label</th><th class=n>samples</th><th class=n>suspects</th>"
                 "<th class=n>named as planted</th><th class=n>validation accuracy</th></tr>")
    for c in range(num_classes):
        acc = val["per_class"][c]
        lines.append(f"<tr><td>{escape(_label(c, names))}</td><td class=n>{ds['per_class'][c]}</td><td class=n>{sus['per_label'][c]}</td>"
                     f"<td class=n>{sus['named_per_label'][c]}</td><td class=n>{_pct(acc)}</td></tr>")
    lines.append("</table>")

    shown = summary["suspects"].get("most_suspicious", [])
    if shown:
        lines.append(f"<h2>The {len(shown)} most suspicious samples</h2><p>Named samples first, fastest-learned first: "
                     "the given label, and what the trained model predicts.</p><div class=thumbs>")
        for item in shown:
            img = png_base64(data.x[item["index"]], scale=1)
            caption = f"#{item['index']}: labelled {_label(item['label'], names)}, predicted {_label(item['predicted'], names)}"
            if "file" in item:
                caption += f" — {os.path.basename(item['file'])}"
            lines.append(f"<figure><img alt='{escape(caption)}' src='data:image/png;base64,{img}'><figcaption>{escape(caption)}</figcaption></figure>")
        lines.append("</div>")

    lines.append("<h2>How they were separated</h2><p>Stage 1 trains on everything and records every sample's loss "
                 f"{len(result.recorded_at)} times. A sample's isolation score is how far its loss fell from its early peak, "
                 "in robust standard deviations (the lower of its z-score against all samples and against its own label); "
                 f"scores below -{summary['dlp']['params']['isolation_z']} are suspects "
                 f"({sus['isolated_by_learning_speed']}). Unlearning them made {sus['isolated_by_loss_rise']} more samples contradict "
                 "the model (their loss rose by a robust outlier and the model now gives them another class); those joined the suspects.</p>")
    local = torch.searchsorted(train_idx, suspects) if len(suspects) else torch.zeros(0, dtype=torch.long)
    lines.append(_trajectory_chart(summary, result, local, poison_local))
    mask = torch.zeros(result.scores.shape[0], dtype=torch.bool)
    mask[local] = True
    lines.append(_histogram(result.scores.cpu(), mask, summary["dlp"]["isolation_threshold"], "isolation scores"))

    lines.append("<h2>Training</h2><table>")
    d = summary["dlp"]
    for k, v in (("architecture", summary["arch"]), ("epochs", d["params"]["epochs"]),
                 ("stage 1 (supervised)", f"{d['params']['supervised_epochs']} epochs, {d['stage1_seconds']} s"),
                 ("stage 2 (unlearning)", f"{len(d.get('unlearn_rounds', []))} rounds, {d['stage2_seconds']} s"),
                 ("stage 3 (semi-supervised)", f"{d['params']['epochs'] - d['params']['supervised_epochs']} epochs, {d['stage3_seconds']} s, "
                                               f"{d['pseudo_labels_used']} pseudo-labels used"),
                 ("wall time", f"{summary['seconds']} s")):
        lines.append(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>")
    lines.append("</table>")

    lines.append("<h2>Audit of the trained model</h2>")
    rel = os.path.relpath(audit["html"], Path(path).parent) if audit.get("html") else None
    if rel:
        lines.append(f"<p>Full report: <a href='{escape(rel)}'>{escape(rel)}</a>. Validation share as clean data.</p>")
    lines.append("<table><tr><th>check</th><th>stage</th><th>outcome</th><th>message</th></tr>")
    for c in audit["checks"]:
        lines.append(f"<tr><td>{escape(c['name'])}</td><td>{c['stage']}</td><td>{c['outcome']}</td><td>{escape(c['message'] or '')}</td></tr>")
    lines.append("</table><h2>Files written</h2><ul>")
    for kind, p in summary["outputs"].items():
        lines.append(f"<li>{escape(kind)}: <code>{escape(str(p))}</code></li>")
    lines.append("</ul></body></html>")
    text = "\n".join(lines)
    atomic_write(Path(path), lambda p: p.write_text(text), ())
