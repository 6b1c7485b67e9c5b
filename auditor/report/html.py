"""pytest-html hooks: the verdict, numbers and trigger pictures above pytest-html's own tables.

Registered only when pytest-html is active (pytest validates hook names against loaded plugins).
"""

from __future__ import annotations

from html import escape

import pytest


OUTCOME_WORD = {"passed": "passed", "failed": "FAILED", "error": "ERROR", "skipped": "skipped"}


def _pct(value) -> str:
    return "—" if value is None else f"{value:.2%}"


def _class_label(result: dict, c: int) -> str:
    names = (result.get("model") or {}).get("class_names") or []
    return f"{c} ({escape(names[c])})" if c < len(names) else str(c)


class HtmlHooks:
    def __init__(self, plugin):
        self.plugin = plugin

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus):
        from pytest_metadata.plugin import metadata_key

        result = self.plugin.finalise(int(exitstatus))
        env = session.config.stash[metadata_key]
        env.clear()
        model = result["model"]
        env.update({
            "Model": model["path"], "SHA-256": model.get("sha256") or "—", "Format": model.get("format") or "—",
            "Seed": str(result["seed"]), "Gate": result["gate"],
            **{k: v for k, v in result["versions"].items()},
        })

    def pytest_html_report_title(self, report):
        report.title = f"auditor report: {self.plugin.session.config.model.name}"

    def pytest_html_results_summary(self, prefix, summary, postfix):
        result = self.plugin.result
        if result is None:
            return
        parts = [
            '<div class="auditor">',
            _verdict(result), _metrics_table(result), _checks_matrix(result), _scan_section(result),
            _pictures(result), _per_class(result), _facts(result), "</div>",
        ]
        prefix.extend(p for p in parts if p)


def _verdict(result: dict) -> str:
    verdict, code = result["verdict"], result["exit_code"]
    headline = {
        "pass": "PASS: every check passed on the model as delivered",
        "fail": "FAIL: the model did not pass the audit" if result["gate"] == "before"
        else "FAIL: the repaired model did not pass the audit",
        "error": "ERROR: the audit could not be completed; the verdict is not trustworthy",
    }[verdict]
    gated = "after" if result["gate"] == "after" and any(c["stage"] == "after" and c["outcome"] != "skipped" for c in result["checks"]) else "before"
    reasons = [f"{escape(c['name'])}: {escape(c['message'])}" for c in result["checks"]
               if c["outcome"] == "failed" and c["stage"] == gated]
    reasons += [escape(e) for e in result["errors"]]
    defense = result.get("defense") or {}
    if defense.get("applied"):
        after_failed = [c for c in result["checks"] if c["stage"] == "after" and c["outcome"] in ("failed", "error")]
        outputs = ", ".join(escape(p) for p in defense.get("outputs", {}).values())
        skipped = sum(c["stage"] == "after" and c["outcome"] == "skipped" for c in result["checks"])
        state = (f"every check that ran passed on it ({skipped} skipped)" if skipped else "every check passed on it") \
            if not after_failed else f"{len(after_failed)} check(s) still fail on it"
        reasons.append(f"Defense <b>{escape(defense['name'])}</b>{' + repair' if defense.get('repair') is not None else ''} "
                       f"was applied; the repaired model ({outputs}) was re-audited: {state}.")
    elif defense.get("reason"):
        reasons.append(escape(defense["reason"]))
    if result["config"].get("data") == "none":
        data = result.get("data") or {}
        reasons.append(f"No data (--data none): accuracy and ASR were not measured; the scans ran on "
                       f"{data.get('fit_samples', 0)} inputs synthesized from the model itself. A data-free verdict is weaker: "
                       "a repaired model can pass its after-stage scan with most of the backdoor left (docs/limits.md).")
    items = "".join(f"<li>{r}</li>" for r in reasons)
    return (f'<div class="verdict v-{verdict}">{headline}<small>exit code {code} · gate: {result["gate"]} stage · '
            f'model {escape(result["model"]["path"])}</small></div><ul class="reasons">{items}</ul>')


def _metrics_table(result: dict) -> str:
    m = result["metrics"]
    before, after, edit = m.get("before") or {}, m.get("after") or {}, m.get("after_edit") or {}
    if not before or "error" in before:
        return ""
    source = before.get("asr_trigger") or after.get("asr_trigger")
    asr_label = {"known": "ASR (true, with the known trigger)", "recovered": "ASR (recovered trigger: an estimate)"}.get(
        source, "ASR (no trigger known or recovered)")
    target = before.get("target")
    rows = [("C-ACC (clean accuracy)", before.get("c_acc"), edit.get("c_acc"), after.get("c_acc")),
            (asr_label + (f", target class {target}" if target is not None else ", all-to-all: y → y+1" if source else ""),
             before.get("asr"), edit.get("asr"), after.get("asr"))]
    if before.get("asr_no_trigger") is not None:
        rows += [("The same images sent to the target WITHOUT the trigger (the model's own confusion)",
                  before.get("asr_no_trigger"), edit.get("asr_no_trigger"), after.get("asr_no_trigger")),
                 ("Moved to the target BY the trigger (there with it, elsewhere without)",
                  before.get("asr_trigger_flips"), edit.get("asr_trigger_flips"), after.get("asr_trigger_flips"))]
    if before.get("r_acc") is not None:
        rows.append(("R-ACC (triggered samples classified correctly)", before.get("r_acc"), None, after.get("r_acc")))
    body = "".join(f"<tr><th>{escape(name)}</th><td>{_pct(b)}</td><td>{_pct(e)}</td><td>{_pct(a)}</td></tr>" for name, b, e, a in rows)
    split = ("ASR counts every non-target image the triggered input sends to the target, including those the model sends "
             "there without any trigger (its own confusion, which a defense that keeps the class leaves in place); "
             "the row \"moved to the target BY the trigger\" is what the trigger itself does."
             if before.get("asr_no_trigger") is not None else "")
    return ("<h3>Attack success and accuracy</h3>"
            f'<table class="grid"><tr><th></th><th>Before (as delivered)</th><th>After unlearning</th><th>After repair</th></tr>{body}</table>'
            f"<p>Measured on {before.get('eval_samples', '?')} held-out evaluation samples never used by the scan or the defense.{' ' + split if split else ''}</p>")


def _checks_matrix(result: dict) -> str:
    names: dict[str, dict] = {}
    for c in result["checks"]:
        names.setdefault(c["name"], {})[c["stage"]] = c
    rows = []
    for name, stages in names.items():
        cells = []
        for stage in ("before", "after"):
            c = stages.get(stage)
            if c is None:
                cells.append("<td></td>")
                continue
            msg = f"<br><small>{escape(c['message'])}</small>" if c["message"] else ""
            cells.append(f'<td><span class="o-{c["outcome"]}">{OUTCOME_WORD[c["outcome"]]}</span>{msg}</td>')
        rows.append(f"<tr><th>{escape(name)}</th>{''.join(cells)}</tr>")
    return ('<h3>Checks</h3><table class="grid"><tr><th>Check</th><th>Before (as delivered)</th><th>After defense + repair</th></tr>'
            + "".join(rows) + "</table>")


def _generative_tables(result: dict, scan: dict) -> str:
    """The generative scan's patch candidates and warp search; "" for other scans."""
    generative = ""
    if scan.get("generative"):
        hit = {g["target"]: g["sample_asr_mean"] >= result["config"]["min_generative_asr"] for g in scan["generative"]}
        rows_g = "".join(
            f"<tr class='{'flag' if hit[g['target']] else ''}'><td>{_class_label(result, g['target'])}</td>"
            f"<td>{g['patch_size']}×{g['patch_size']} at ({g['top']}, {g['left']})</td><td>{_pct(g['sample_asr_mean'])}</td>"
            f"<td>{_pct(g['sample_asr_min'])} – {_pct(g['sample_asr_max'])}</td><td>{g['diversity']:.3f}</td>"
            f"<td>{'FLAGGED' if hit[g['target']] else ''}</td></tr>" for g in scan["generative"])
        generative = ("<p>Generative recovery learned a distribution of patch triggers for the top-ranked classes; a class is "
                      f"flagged when its sampled triggers reach {result['config']['min_generative_asr']:.0%} ASR on held-out samples.</p>"
                      '<table class="grid"><tr><th>Candidate class</th><th>Patch</th><th>Mean ASR of samples</th>'
                      f"<th>Range</th><th>Diversity</th><th></th></tr>{rows_g}</table>")
    warp = scan.get("warp")
    if warp:
        order = sorted(range(len(warp["asr"])), key=lambda c: -warp["asr"][c])
        hit_w = [a >= result["config"]["min_generative_asr"] for a in warp["asr"]]
        rows_w = "".join(
            f"<tr class='{'flag' if hit_w[c] else ''}'><td>{_class_label(result, c)}</td><td>{_pct(warp['asr'][c])}</td>"
            f"<td>{'FLAGGED' if hit_w[c] else ''}</td></tr>" for c in order[:3])
        generative += (f"<p>Warp search: for every class, the smooth warp of at most {warp['strength']:g} px (each direction) "
                       "that sends the most held-out samples to it (a WaNet-style trigger is a warp, not a patch); flagged "
                       "at the same share. The three classes reached most:</p>"
                       f'<table class="grid"><tr><th>Class</th><th>Warp ASR</th><th></th></tr>{rows_w}</table>')
    blend = scan.get("blend")
    if blend:
        limit = result["config"].get("max_blend_ratio", 0.4)
        ratio = [r if r is not None else float("inf") for r in blend["ratio"]]
        order = sorted(range(len(ratio)), key=lambda c: ratio[c])
        rows_b = "".join(
            f"<tr class='{'flag' if ratio[c] <= limit else ''}'><td>{_class_label(result, c)}</td>"
            f"<td>{'not reached' if blend['alpha'][c] is None else format(blend['alpha'][c], '.3f')}</td>"
            f"<td>{'—' if blend['ratio'][c] is None else format(blend['ratio'][c], '.2f')}</td>"
            f"<td>{'FLAGGED' if ratio[c] <= limit else ''}</td></tr>" for c in order[:3])
        generative += (f"<p>Blend search: for every class, the weakest image-wide blend x' = (1 − alpha) x + alpha p (one "
                       f"pattern p per class) that sends {blend['min_asr']:.0%} of held-out samples to it; a class is flagged when "
                       f"its alpha is at most {limit:g} of the other classes' median (a Blended-style trigger needs a fraction of "
                       "what the task's own classes need). The three classes reached with the weakest blend:</p>"
                       '<table class="grid"><tr><th>Class</th><th>Alpha</th><th>Share of the others\' median</th><th></th></tr>'
                       f"{rows_b}</table>")
    return generative


def _reference_paragraph(result: dict, scan: dict) -> str:
    if not scan.get("reference_model"):
        return ""
    rates = scan.get("carry_over") or {}
    lines = "".join(f"<li>{_class_label(result, int(c))}: its recovered triggers send {_pct(r['reference_asr'])} of the clean "
                    f"samples to it on the reference model, {_pct(r['asr'])} on this one</li>" for c, r in rates.items())
    return (f"<p>Reference model <code>{escape(scan['reference_model'])}</code> (a clean model of the same task). A planted "
            "patch, blend or warp trigger hardly works on a model trained without it (0–1% on our zoo); a feature of the "
            "data does (28–50%), and so, by reference, did much of a SIG trigger (7–44%): evidence to weigh, not a verdict. "
            + (f"</p><ul>{lines}</ul>" if lines else "No class was flagged.</p>"))


def _other_scan_section(result: dict, scan: dict) -> str:
    """A scan whose summary is not Neural Cleanse's per-class masks: its flagged classes and numbers."""
    flagged = ", ".join(_class_label(result, c) for c in scan["flagged_classes"]) or "none"
    numbers = {k: v for k, v in scan.items() if k not in ("method", "flagged_classes", "limits", "after", "seconds")}
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td class='mono'>{escape(str(v))}</td></tr>" for k, v in numbers.items())
    return (f"<h3>Trigger scan: {escape(scan['method'])}</h3><p>Flagged classes: {flagged}. "
            f"Scan time {scan.get('seconds', 0):.1f}s.</p><table class=\"grid\">{rows}</table>{_reference_paragraph(result, scan)}"
            + (f'<p class="limits"><b>What this scan cannot see:</b> {escape(scan["limits"])}</p>' if scan.get("limits") else ""))


def _margin_scan_section(result: dict, scan: dict) -> str:
    """The max-margin scan: every class's largest reachable margin as a bar, the top class's p-value."""
    after = (scan.get("after") or {}).get("margins")
    top = max(scan["margins"] + (after or []) + [1e-9])
    rows = []
    for c, margin in enumerate(scan["margins"]):
        flagged = c in scan["flagged_classes"]
        bar = f'<span class="bar{" hot" if flagged else ""}" style="width:{int(120 * max(margin, 0) / top)}px"></span>'
        after_cell = f"<td>{after[c]:.1f}</td>" if after else ""
        rows.append(f'<tr class="{"flag" if flagged else ""}"><td>{_class_label(result, c)}</td><td>{margin:.1f} {bar}</td>'
                    f"<td>{'FLAGGED' if flagged else ''}</td>{after_cell}</tr>")
    threshold = result["config"].get("max_margin_p", 0.05)
    return (f"<h3>Trigger scan: {escape(scan['method'])}</h3>"
            "<p>For every class, the largest logit margin over all other classes that any image in the valid pixel range "
            "reaches (gradient ascent from random images; no clean data). A backdoor target is reachable with an unusually "
            f"large margin. The largest class, {_class_label(result, scan['top_class'])}, has p = {scan['p_value']:.2g} under a "
            f"Gamma distribution fitted to the other classes' margins; it is flagged below {threshold:g}. "
            f"Scan time {scan['seconds']:.1f}s.</p>"
            '<table class="grid"><tr><th>Class</th><th>Largest margin</th><th></th>'
            + ("<th>after: largest margin</th>" if after else "") + f"</tr>{''.join(rows)}</table>{_reference_paragraph(result, scan)}"
            + (f'<p class="limits"><b>What this scan cannot see:</b> {escape(scan["limits"])}</p>' if scan.get("limits") else ""))


def _scan_section(result: dict) -> str:
    scan = result.get("scan")
    if not scan:
        return ""
    if "margins" in scan and "p_value" in scan:
        return _margin_scan_section(result, scan)
    if "norms" not in scan or "anomaly_index" not in scan:
        return _other_scan_section(result, scan)
    after = scan.get("after") or {}
    threshold = result["config"]["anomaly_threshold"]
    top = max([abs(a) for a in scan["anomaly_index"]] + [threshold, 1e-9])
    rows = []
    for c, (norm, index) in enumerate(zip(scan["norms"], scan["anomaly_index"])):
        flagged = c in scan["flagged_classes"]
        width = int(120 * max(index, 0) / top)
        bar = f'<span class="bar{" hot" if flagged else ""}" style="width:{width}px"></span>'
        asr = scan["recovered_asr"][c] if scan.get("recovered_asr") else None
        after_cells = (f"<td>{after['norms'][c]:.1f}</td><td>{after['anomaly_index'][c]:.2f}</td>" if after else "")
        mark = "FLAGGED" if flagged else ("suspected (not flagged)" if c in scan.get("suspected_classes", []) else "")
        rows.append(f'<tr class="{"flag" if flagged else ""}"><td>{_class_label(result, c)}</td><td>{norm:.1f}</td>'
                    f"<td>{index:.2f} {bar}</td><td>{_pct(asr)}</td><td>{mark}</td>{after_cells}</tr>")
    after_head = "<th>after: mask L1</th><th>after: anomaly index</th>" if after else ""
    generative = _generative_tables(result, scan)
    # the generative scan only ranks classes by this index; its flags come from the tables below
    verdict = (f"flagged above {threshold:g} when the mask is also at most {result['config']['max_mask_ratio']:g} × "
               f"the median mask" if not generative else
               f"here it ranks the classes, and flags one by itself only above {result['config'].get('nc_alone_threshold', 6.0):g}: "
               "the generative scan flags a class by its sampled triggers or its warp (below). When some class is flagged, "
               f"a class above {threshold:g} with a small mask that is not flagged is suspected, and the defense unlearns its trigger too")
    return (f"<h3>Trigger scan: {escape(scan['method'])}</h3>"
            f"<p>For every class, the smallest mask that turns clean images into that class. A backdoor target needs a much "
            f"smaller mask than the others: anomaly index = (median − log L1) / (1.4826 · MAD) over the classes' log mask "
            f"norms (the log scale keeps a few huge masks from hiding a small one); {verdict}. "
            f"Scan time {scan['seconds']:.1f}s on {scan['fit_samples']} fit samples.</p>"
            '<table class="grid"><tr><th>Class</th><th>Mask L1</th><th>Anomaly index</th><th>Recovered-trigger ASR</th>'
            f"<th></th>{after_head}</tr>{''.join(rows)}</table>{generative}{_reference_paragraph(result, scan)}"
            + (f'<p class="limits"><b>What this scan cannot see:</b> {escape(scan["limits"])}</p>' if scan.get("limits") else ""))


def _figure(label: str, b64: str) -> str:
    return f'<figure><img src="data:image/png;base64,{b64}" alt="{escape(label)}"><figcaption>{escape(label)}</figcaption></figure>'


def _pictures(result: dict) -> str:
    blocks = [f"<h4>{escape(group['title'])}</h4><div class='pics'>{''.join(_figure(k, v) for k, v in group['images'])}</div>"
              for group in result.get("pictures") or []]
    return "<h3>Trigger pictures</h3>" + "".join(blocks) if blocks else ""


def _per_class(result: dict) -> str:
    m = result["metrics"]
    before = (m.get("before") or {}).get("per_class_acc")
    if not before:
        return ""
    edit = (m.get("after_edit") or {}).get("per_class_acc") or [None] * len(before)
    after = (m.get("after") or {}).get("per_class_acc") or [None] * len(before)
    targets = (result.get("scan") or {}).get("flagged_classes") or []
    known = (m.get("before") or {}).get("target")
    first = ([known] if known is not None else []) + [c for c in targets if c != known]
    order = first + [c for c in range(len(before)) if c not in first]
    rows = "".join(
        f'<tr class="{"flag" if c in first else ""}"><td>{_class_label(result, c)}{" · target" if c in first else ""}</td>'
        f"<td>{_pct(before[c])}</td><td>{_pct(edit[c])}</td><td>{_pct(after[c])}</td></tr>"
        for c in order)
    return ('<h3>Per-class accuracy</h3><table class="grid"><tr><th>Class</th><th>Before</th><th>After unlearning</th>'
            f"<th>After repair</th></tr>{rows}</table>")


def _defense_summary(defense: dict) -> str:
    stats = defense.get("stats") or {}
    parts = [f"{defense.get('name')} ({defense.get('seconds', 0):.1f}s with repair)",
             f"{defense.get('samples_used')} clean samples for the defense"]
    rule = (stats.get("params") or {}).get("rule")
    for edit in stats.get("edits") or []:
        parts.append(f"edited layer {edit['layer']} ({rule} rule, {edit['triggers']} trigger(s), {edit['stamped_samples']} "
                     f"stamped inputs{' incl. shifted/mirrored views' if edit.get('views') else ''}, weights changed by {edit['weight_change_relative']:g} of their norm)")
    if "steps" in stats:
        parts.append(f"{stats['steps']} steps")
    if "synthesized_images" in stats:
        parts.append(f"{stats['iterations']} iterations on {stats['synthesized_images']:,} generated images "
                     f"(patch search {stats['patch_side']}×{stats['patch_side']})")
    if recalibrated := _recalibration(stats):
        folds = stats["recalibration"].get("folds")
        parts.append(recalibrated + f" (the target margin the edit took on the fit samples each of {folds} edits left out)")
    return ", ".join(parts)


def _recalibration(stats: dict) -> str:
    shift = (stats.get("recalibration") or {}).get("shift") or {}
    return ("target-class logit shifted by " + ", ".join(f"{v:+.3f} for class {c}" for c, v in shift.items())) if shift else ""


def _repair_summary(repair: dict | None) -> str:
    if repair is None:
        return "off (--no-repair)"
    fallen = repair.get("fallen_classes") or []
    text = (f"classes that fell on the held-out fit samples: {fallen or 'none'}; {repair.get('steps', 0)} steps, "
            f"kept step {repair.get('kept_step', 0)}, still fallen: {repair.get('still_fallen') or 'none'}")
    if recalibrated := _recalibration(repair):
        text += f"; {recalibrated} (the target margin repair took on the held-out samples)"
    return text + (f" ({repair['note']})" if repair.get("note") else "")


def _facts(result: dict) -> str:
    model, data = result["model"], result.get("data") or {}
    defense = result.get("defense") or {}
    rows = [
        ("Model file", model["path"]), ("SHA-256", model.get("sha256")), ("Format", model.get("format")),
        ("Architecture", model.get("arch")), ("Parameters", f"{model.get('param_count'):,}" if model.get("param_count") else None),
        ("Input (C, H, W)", model.get("input_shape")), ("Normalisation", f"mean {model.get('mean')}, std {model.get('std')}" if model.get("mean") else None),
        ("Notes", "; ".join(model.get("notes") or []) or None),
        ("Clean data", f"{data.get('source')}: {data.get('fit_samples')} fit / {data.get('eval_samples')} evaluation samples" if data else None),
        ("Device", (model.get("device") or None) and model["device"] + (
            f" (onnxruntime: {', '.join(model['onnxruntime_providers'])})" if model.get("onnxruntime_providers") else "")),
        ("Seed", result["seed"]), ("Defense", _defense_summary(defense) if defense.get("applied") else "not applied"),
        ("Repair", _repair_summary(defense.get("repair")) if defense.get("applied") else None),
        ("Repaired files", ", ".join((defense.get("outputs") or {}).values()) or None),
        ("Timings", ", ".join(f"{k} {v:.1f}s" for k, v in result["timings"].items())),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td class='mono'>{escape(str(v))}</td></tr>" for k, v in rows if v is not None)
    return f'<h3>Model and run</h3><table class="grid">{body}</table>'
