"""Inline SVG charts for the HTML report: the anomaly index per class, per-class accuracy, attack success rate.

Each function takes the audit's result dict and returns one `<figure class="chart">` (an SVG with a title,
a description that lists every value for screen readers, and a caption), or "" when the result lacks the
data. No script and no external file, so the report stays one self-contained page that prints. Stages differ
by fill pattern as well as colour, and every bar carries its value, so the charts read in grey and in print.
Class names come from model files and are untrusted: every string is escaped."""

from __future__ import annotations

import math
import re
from html import escape

INK, MUTED, GRID = "#222", "#555", "#d9d9d9"
ALARM, ALARM_BG = "#c62828", "#ffebee"  # 5.6:1 on white; the report's .flag row colour behind it
WARN = "#8a4500"  # "suspected": 7.2:1 on white
STAGE_INK = {"before": "#455a64", "after_edit": "#1565c0", "after": "#2e7d32"}  # each >= 4.5:1 on white
STAGE_NAME = {"before": "as delivered", "after_edit": "after the defense's edit", "after": "after repair"}
FONT, SMALL = 13, 11
MAX_ROWS = 30  # a 1000-class model gets its marked classes and the most telling others, not a metre-long chart
CHAR_W = 7.2  # a 13px sans-serif character, on average: enough to size columns without measuring text
HALO = 'stroke="#fff" stroke-width="4" paint-order="stroke" stroke-linejoin="round"'  # text stays legible over lines
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _t(value) -> str:
    """Escaped for text and attribute values; characters XML forbids (a model file may hold any) dropped."""
    return escape(_NOT_XML.sub("", str(value)))


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _nums(values, n: int | None = None) -> list[float | None]:
    values = [_num(v) for v in values] if isinstance(values, (list, tuple)) else []
    return values if n is None else (values + [None] * n)[:n]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _signed(value: float, digits: int = 2) -> str:
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text.replace("-", "\u2212")  # a real minus sign; no "-0.00"


def _ints(values) -> list[int]:
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)] if isinstance(values, list) else []


def _labels(result: dict, n: int) -> list[str]:
    names = (result.get("model") or {}).get("class_names")
    names = names if isinstance(names, list) else []
    return [f"{c} ({names[c]})" if c < len(names) and names[c] not in (None, "") else str(c) for c in range(n)]


def _rows(n: int, marked, score) -> list[int]:
    """Every class, or past MAX_ROWS the marked ones and then those with the highest `score`, in class order."""
    if n <= MAX_ROWS:
        return list(range(n))
    keep = [c for c in marked if 0 <= c < n][:MAX_ROWS]
    rest = sorted((c for c in range(n) if c not in keep), key=lambda c: -score(c))
    return sorted(keep + rest[:MAX_ROWS - len(keep)])


def _short(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else label[:limit - 1] + "\u2026"


def _label_width(labels: list[str], limit: int = 24) -> int:
    """The left column's width for labels cut at `limit` characters."""
    return int(min(max([len(s) for s in labels] + [3]), limit) * CHAR_W + 14)


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: int = FONT, fill: str = INK,
          bold: bool = False, halo: bool = False, full: str | None = None) -> str:
    """One <text>; `full` (the untruncated label) becomes its tooltip."""
    attrs = (f' text-anchor="{anchor}"' * (anchor != "start") + f' font-size="{size}"' * (size != FONT)
             + f' fill="{fill}"' * (fill != INK) + ' font-weight="bold"' * bold + f" {HALO}" * halo)
    tip = f"<title>{_t(full)}</title>" if full and full != text else ""
    return f'<text x="{x:.1f}" y="{y:.1f}"{attrs}>{tip}{_t(text)}</text>'


def _data(data: dict) -> str:
    """data-* attributes naming what a shape stands for (not class=: the page's CSS would style the SVG)."""
    return "".join(f' data-{k}="{_t(v)}"' for k, v in data.items())


def _vline(x: float, y0: float, y1: float, colour: str, dashed: bool = False, width: float = 1, **data) -> str:
    dash = ' stroke-dasharray="5 3"' if dashed else ""
    return (f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="{colour}" stroke-width="{width}"'
            f"{dash}{_data(data)}/>")


def _rect(x: float, y: float, w: float, h: float, fill: str, stroke: str | None = None, **data) -> str:
    edge = f' stroke="{stroke}" stroke-width="1"' if stroke else ""
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" fill="{fill}"{edge}{_data(data)}/>'


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 times a power of ten."""
    raw = (hi - lo) / count or 1.0
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    start, end = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    end = max(end, start + step)
    return [start + i * step for i in range(round((end - start) / step) + 1)]


def _patterns(key: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """Fills per stage, told apart in grey too: light solid, blue hatching, dark green solid; plus their <defs>."""
    hatch = f"auditor-{key}-hatch"
    defs = (f'<defs><pattern id="{hatch}" width="5" height="5" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="5" height="5" fill="#e3f2fd"/>'
            f'<line x1="0" y1="0" x2="0" y2="5" stroke="{STAGE_INK["after_edit"]}" stroke-width="2.5"/></pattern></defs>')
    fills = {"before": ("#b0bec5", STAGE_INK["before"]), "after_edit": (f"url(#{hatch})", STAGE_INK["after_edit"]),
             "after": (STAGE_INK["after"], STAGE_INK["after"])}
    return defs, fills


def _figure(key: str, width: int, height: float, title: str, desc: str, body: str, caption: str) -> str:
    tid, did = f"auditor-{key}-title", f"auditor-{key}-desc"
    return (f'<figure class="chart"><svg xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby="{tid}" '
            f'aria-describedby="{did}" viewBox="0 0 {width} {math.ceil(height)}" width="100%" '
            f'style="max-width:{width}px;height:auto;display:block" font-family="Helvetica, Arial, sans-serif" '
            f'font-size="{FONT}" fill="{INK}"><title id="{tid}">{_t(title)}</title><desc id="{did}">{_t(desc)}</desc>'
            f"{body}</svg><figcaption>{_t(caption)}</figcaption></figure>")


def _threshold_lines(lines: list[tuple[float, str]], scale, bottom: float, right: float) -> str:
    """Dashed lines, each labelled on its own row above the plot so that close thresholds do not collide."""
    out = []
    for row, (value, label) in enumerate(lines):
        x, y = scale(value), 14 + 15 * row
        flip = x + 4 + len(label) * CHAR_W > right  # near the right edge: write it to the left of the line
        colour = ALARM if row == 0 else INK
        out += [_vline(x, y - 10, bottom, colour, dashed=True, width=1.5, role="threshold", value=value),
                _text(x - 4 if flip else x + 4, y, label, anchor="end" if flip else "start", fill=colour, halo=True)]
    return "".join(out)


def _diverging_label(scale, y: float, value: float, text: str, **kw) -> str:
    """A value's label beside its bar: past the bar's end when positive, just right of the zero axis when
    negative (the bar takes the left side), so no label runs into the class names."""
    return _text((scale(value) if value >= 0 else scale(0)) + 4, y, text, halo=True, **kw)


def anomaly_chart(result: dict) -> str:
    """The Neural Cleanse anomaly index per class as bars from zero (negative ones to the left), the flagging
    threshold(s) as dashed lines, flagged classes in the alarm colour, and the repaired model's index as a
    thin bar under each class when the after-stage scan ran."""
    scan = result.get("scan") or {}
    values = _nums(scan.get("anomaly_index"))
    if not any(v is not None for v in values):
        return ""
    n = len(values)
    after = _nums((scan.get("after") or {}).get("anomaly_index"), n)
    has_after = any(v is not None for v in after)
    config = result.get("config") or {}
    lines = []
    threshold = _num(config.get("anomaly_threshold"))
    if threshold is not None:
        lines.append((threshold, f"threshold {_signed(threshold)}"))
    alone = _num(config.get("nc_alone_threshold")) if scan.get("method") == "generative" else None
    if alone is not None:
        lines.append((alone, f"flags alone {_signed(alone)}"))
    flagged, suspected = set(_ints(scan.get("flagged_classes"))), set(_ints(scan.get("suspected_classes")))
    labels = _labels(result, n)
    rows = _rows(n, sorted(flagged | suspected), lambda c: -math.inf if values[c] is None else values[c])

    known = [v for v in values + after + [value for value, _ in lines] if v is not None]
    ticks = _ticks(min(known + [0.0]), max(known + [0.0]))
    width, label_w = 480, _label_width([labels[c] for c in rows], 20)
    x0, x1 = label_w + 10, width - 96  # room on the right for "7.07 flagged"
    scale = lambda v: x0 + (v - ticks[0]) / (ticks[-1] - ticks[0]) * (x1 - x0)  # noqa: E731
    top, band = 18 + 16 * len(lines), 38 if has_after else 26
    bottom = top + band * len(rows)
    parts = [_vline(scale(t), top - 4, bottom, GRID) for t in ticks]
    parts += [_text(scale(t), bottom + 15, f"{round(t, 6) + 0.0:g}".replace("-", "\u2212"), anchor="middle",
                    size=SMALL, fill=MUTED) for t in ticks]
    texts, desc = [], []
    for row, c in enumerate(rows):
        label, value, later = labels[c], values[c], after[c]
        y = top + band * row + 4
        mark = "flagged" if c in flagged else "suspected" if c in suspected else ""
        colour = ALARM if mark == "flagged" else WARN if mark else INK
        if mark == "flagged":
            parts.append(_rect(0, y - 4, width, band - 2, ALARM_BG))
        texts.append(_text(label_w - 6, y + 12, _short(label, 20), anchor="end", fill=colour, bold=bool(mark),
                           full=label))
        if value is not None:
            fill = ALARM if mark == "flagged" else "#78909c"
            parts.append(_rect(min(scale(0), scale(value)), y, abs(scale(value) - scale(0)), 16, fill,
                               series="before", cls=c))
        texts.append(_diverging_label(scale, y + 12, value or 0.0, ("n/a" if value is None else _signed(value))
                                      + (f" {mark}" if mark else ""), fill=colour if value is not None else MUTED,
                                      bold=bool(mark)))
        if later is not None:
            parts.append(_rect(min(scale(0), scale(later)), y + 19, abs(scale(later) - scale(0)), 6, "#263238",
                               series="after", cls=c))
            texts.append(_diverging_label(scale, y + 29, later, f"after {_signed(later)}", size=SMALL, fill=MUTED))
        desc.append(f"{label}: {'n/a' if value is None else _signed(value)}"
                    + (f" ({mark})" if mark else "") + (f", after repair {_signed(later)}" if later is not None else ""))
    parts.append(_vline(scale(0), top - 6, bottom, INK, width=1.5, role="zero"))
    heads = _threshold_lines(lines, scale, bottom, width)
    y = bottom + 32
    foot = [_text(8, y, "anomaly index: 0 = the median class; right = a smaller trigger mask", size=SMALL, fill=MUTED)]
    if has_after:
        foot += [_rect(8, y + 8, 26, 14, "#78909c"), _text(40, y + 19, "as delivered", size=SMALL),
                 _rect(8, y + 30, 26, 6, "#263238"),
                 _text(40, y + 37, "after repair (the repaired model's scan)", size=SMALL)]
        y += 40
    method = str(scan.get("method") or "neural-cleanse")
    title = f"Anomaly index per class ({method} scan)"
    rules = "; ".join(label for _, label in lines)
    flagged_names = ", ".join(labels[c] for c in sorted(flagged) if c < n) or "none"
    desc_text = (f"{title}. Bars start at zero; a negative index is drawn to the left. {rules or 'No threshold'}. "
                 f"Flagged: {flagged_names}. " + "; ".join(desc) + ".")
    caption = (f"{title}: how much smaller than the median class's trigger mask each class's recovered mask is. "
               f"Dashed lines: {rules or 'no threshold'}"
               + (" (the generative scan flags a class by its sampled triggers, warp, blend or all-to-all trigger, or by "
                  "this index alone above the second line)" if alone is not None else "")
               + f". Flagged classes are red and labelled \"flagged\": {flagged_names}."
               + (" Thin dark bars: the same scan on the repaired model." if has_after else "")
               + (f" Showing {len(rows)} of {n} classes: the flagged ones and the highest indexes."
                  if len(rows) < n else ""))
    body = "".join(parts) + heads + "".join(texts) + "".join(foot)
    return _figure("anomaly", width, y + 10, title, desc_text, body, caption)


def _stages(result: dict) -> list[tuple[str, dict]]:
    metrics = result.get("metrics") or {}
    return [(s, metrics[s]) for s in ("before", "after_edit", "after")
            if isinstance(metrics.get(s), dict) and "error" not in metrics[s]]


def _legend(fills: dict, stages: list[str], x: float, y: float) -> tuple[str, float]:
    out = []
    for stage in stages:
        fill, edge = fills[stage]
        out += [_rect(x, y - 10, 24, 11, fill, edge), _text(x + 30, y, STAGE_NAME[stage], size=SMALL)]
        y += 16
    return "".join(out), y


def per_class_accuracy_chart(result: dict) -> str:
    """Accuracy per class before, after the defense's edit and after repair, as grouped horizontal bars on
    a 0-100% scale with the value at each bar's end; the backdoor target and flagged classes marked."""
    stages = [(s, m) for s, m in _stages(result) if isinstance(m.get("per_class_acc"), list)]
    if not stages or stages[0][0] != "before" or not stages[0][1]["per_class_acc"]:
        return ""
    n = len(stages[0][1]["per_class_acc"])
    series = [(s, _nums(m["per_class_acc"], n)) for s, m in stages]
    labels = _labels(result, n)
    target = stages[0][1].get("target")
    target = target if isinstance(target, int) and not isinstance(target, bool) else None
    flagged = set(_ints((result.get("scan") or {}).get("flagged_classes")))
    marks = {c: "target" if c == target else "flagged" for c in flagged | ({target} if target is not None else set())}
    suffix = {c: f" \u00b7 {m}" for c, m in marks.items()}
    shown = [_short(label, 18) + suffix.get(c, "") for c, label in enumerate(labels)]

    def loss(c: int) -> float:  # a big label set keeps the classes the defense cost most (or the weakest)
        first = series[0][1][c]
        if first is None:
            return -math.inf
        if len(series) == 1:
            return 1 - first
        return max([first - v[c] for _, v in series[1:] if v[c] is not None] or [-math.inf])

    rows = _rows(n, sorted(marks), loss)

    defs, fills = _patterns("accuracy")
    width, label_w = 460, _label_width([shown[c] for c in rows], 28)
    x0, x1 = label_w + 6, width - 52  # room on the right for "100.0%"
    scale = lambda v: x0 + max(0.0, min(v, 1.0)) * (x1 - x0)  # noqa: E731
    legend, top = _legend(fills, [s for s, _ in series], 8, 16)
    pitch, gap = 14, 10
    group = pitch * len(series) + gap
    bottom = top + group * len(rows)
    steps = (0, 0.25, 0.5, 0.75, 1)
    parts = [_vline(scale(t), top - 4, bottom - gap + 4, GRID) for t in steps]
    parts += [_text(scale(t), bottom + 12, f"{t:.0%}", anchor="middle", size=SMALL, fill=MUTED) for t in steps]
    texts, desc = [], []
    for row, c in enumerate(rows):
        y = top + group * row
        if c in marks:
            parts.append(_rect(0, y - 4, width, group - gap + 6, ALARM_BG))
        texts.append(_text(label_w - 6, y + pitch * len(series) / 2 + 4, shown[c], anchor="end",
                           fill=ALARM if c in marks else INK, bold=c in marks, full=labels[c] + suffix.get(c, "")))
        for k, (stage, values) in enumerate(series):
            value = values[c]
            if value is not None:
                parts.append(_rect(x0, y + pitch * k, scale(value) - x0, pitch - 2, *fills[stage], series=stage, cls=c))
            texts.append(_text(scale(value or 0.0) + 4, y + pitch * k + 10, _pct(value), size=SMALL,
                               fill=MUTED if value is None else INK, halo=True))
        desc.append(f"{labels[c]}{suffix.get(c, '')}: " + ", ".join(f"{STAGE_NAME[s]} {_pct(v[c])}" for s, v in series))
    parts.append(_vline(x0, top - 4, bottom - gap + 4, INK, width=1.5, role="zero"))
    y = bottom + 30
    axis = _text(8, y, "accuracy on each class's held-out evaluation samples", size=SMALL, fill=MUTED)
    stage_list = ", ".join(STAGE_NAME[s] for s, _ in series)
    title = f"Accuracy per class ({stage_list})"
    marked = ", ".join(labels[c] + suffix[c] for c in sorted(marks)) or "none"
    desc_text = f"{title}. Marked classes: {marked}. " + "; ".join(desc) + "."
    caption = (f"{title}. One bar per stage, in the legend's order, from 0% to 100%, with its value at the end; "
               f"\"n/a\": not measured. Marked in red: {marked}."
               + (f" Showing {len(rows)} of {n} classes: the marked ones and "
                  + ("those that lost the most accuracy." if len(series) > 1 else "the least accurate.")
                  if len(rows) < n else ""))
    return _figure("accuracy", width, y + 10, title, desc_text, defs + legend + "".join(parts) + "".join(texts) + axis,
                   caption)


def asr_chart(result: dict) -> str:
    """Attack success rate as delivered, after the defense's edit and after repair, with the --max-asr limit
    as a dashed line; each bar's label says whether the known trigger (true ASR) or the scan's recovered one
    (an estimate) measured it."""
    stages = _stages(result)
    if not stages or stages[0][0] != "before" or _num(stages[0][1].get("asr")) is None:
        return ""
    before = stages[0][1]
    source = before.get("asr_trigger")
    trigger = {"known": "true ASR, known trigger",
               "recovered": "estimate, recovered trigger"}.get(source, "trigger unknown")
    target = before.get("target")
    labels = _labels(result, target + 1) if isinstance(target, int) and not isinstance(target, bool) and target >= 0 else []
    aim = f"target class {labels[target]}" if labels else "all-to-all (each class sent to another)"
    limit = _num((result.get("config") or {}).get("max_asr"))
    rows = [(s, _num(m.get("asr"))) for s, m in stages]

    defs, fills = _patterns("asr")
    width, band, bar = 480, 46, 18
    x0, x1 = 8, width - 150  # room on the right for "99.9% · above limit"
    scale = lambda v: x0 + max(0.0, min(v, 1.0)) * (x1 - x0)  # noqa: E731
    top = 24 + 18 * (limit is not None)
    heading = _text(8, 16, _short(aim, 60), full=aim)
    bottom = top + band * len(rows)
    steps = (0, 0.25, 0.5, 0.75, 1)
    parts = [_vline(scale(t), top + 16, bottom, GRID) for t in steps]
    parts += [_text(scale(t), bottom + 14, f"{t:.0%}", anchor="middle", size=SMALL, fill=MUTED) for t in steps]
    texts, desc = [], []
    for k, (stage, value) in enumerate(rows):
        y = top + band * k
        texts.append(f'<text x="{x0}" y="{y + 12}" font-weight="bold" {HALO}>{_t(STAGE_NAME[stage])}'
                     f'<tspan font-weight="normal" font-size="{SMALL}" fill="{MUTED}"> \u00b7 {_t(trigger)}</tspan></text>')
        over = value is not None and limit is not None and value > limit
        verdict = "" if value is None or limit is None else " \u00b7 above limit" if over else " \u00b7 within limit"
        if value is not None:
            parts.append(_rect(x0, y + 18, scale(value) - x0, bar, *fills[stage], series=stage))
        texts.append(_text(scale(value or 0.0) + 5, y + 32, _pct(value) + verdict,
                           fill=ALARM if over else INK if value is not None else MUTED, bold=over, halo=True))
        desc.append(f"{STAGE_NAME[stage]}: {_pct(value)}{verdict}")
    parts.append(_vline(x0, top + 16, bottom, INK, width=1.5, role="zero"))
    rule = ""
    if limit is not None:
        rule = f"--max-asr {_pct(limit)}"
        parts.append(_vline(scale(limit), top - 12, bottom, ALARM, dashed=True, width=1.5, role="threshold",
                            value=limit))
        texts.append(_text(scale(limit) + 4, top - 2, rule, fill=ALARM, halo=True))
    y = bottom + 32
    axis = _text(8, y, "share of non-target images that the trigger sends to the target", size=SMALL, fill=MUTED)
    kind = {"known": "true attack success rate, measured with the known trigger (--trigger)",
            "recovered": "estimated attack success rate, measured with the trigger the scan recovered"}.get(
        source, "attack success rate")
    title = f"Attack success rate, {aim}"
    desc_text = f"{title}: {kind}. " + (f"Limit {rule}. " if rule else "") + "; ".join(desc) + "."
    caption = (f"{title}: {kind}; " + ", ".join(STAGE_NAME[s] for s, _ in rows) + "."
               + (f" Dashed line: the {rule} limit; a bar past it fails the check." if rule else ""))
    body = defs + heading + "".join(parts) + "".join(texts) + axis
    return _figure("asr", width, y + 10, title, desc_text, body, caption)
