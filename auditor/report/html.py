"""pytest-html hooks: the verdict, numbers and trigger pictures above pytest-html's own tables.

Registered only when pytest-html is active (pytest validates hook names against loaded plugins).
"""

from __future__ import annotations

from html import escape

import pytest

from . import charts


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
            _verdict(result), _metrics_table(result), charts.asr_chart(result), _checks_table(result),
            _scan_section(result), charts.anomaly_chart(result), _pictures(result), _per_class(result),
            charts.per_class_accuracy_chart(result), _facts(result), _provenance(result), "</div>",
        ]
        prefix.extend(p for p in parts if p)


def stage_counts(result: dict, stage: str) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for c in result["checks"]:
        if c["stage"] == stage:
            counts[c["outcome"]] += 1
    return counts


def _counts_line(result: dict) -> str:
    """The verdict's honest arithmetic: how many checks passed, failed, were skipped or could not run, per stage."""
    parts = []
    for stage, label in (("before", "as delivered"), ("after", "repaired model")):
        n = stage_counts(result, stage)
        if sum(n.values()) == 0 or (stage == "after" and n["skipped"] == sum(n.values())):
            continue
        parts.append(f"{label}: {_counts_line_stage(result, stage)}")
    return " · ".join(parts)


def _verdict(result: dict) -> str:
    verdict, code = result["verdict"], result["exit_code"]
    skipped = stage_counts(result, "before")["skipped"]
    headline = {
        "pass": "PASS: no check failed on the model as delivered" + (f" ({skipped} not applicable, skipped)" if skipped else ""),
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
    reasons += _natural_notes(result)
    if budget := _budget_summary(result, reduced_only=True):
        reasons.append(escape(budget))
    items = "".join(f"<li>{r}</li>" for r in reasons)
    sha = result["model"].get("sha256")
    when = (result.get("provenance") or {}).get("timestamp")
    return (f'<div class="verdict v-{verdict}" role="status">{headline}<small>exit code {code} · gate: {result["gate"]} stage · '
            f'{_counts_line(result)}</small><small>model {escape(result["model"]["path"])}'
            + (f' · SHA-256 <span class="hash">{sha}</span>' if sha else "") + (f" · audited {escape(when)}" if when else "")
            + f'</small></div><ul class="reasons">{items}</ul>')


def _natural_notes(result: dict) -> list[str]:
    """A flagged class whose triggers also work on the clean reference model is probably a feature of the
    data, not a planted backdoor: the summary says so where the flag is read, not only in the scan table."""
    scan = result.get("scan") or {}
    notes = []
    before = (result.get("metrics") or {}).get("before") or {}
    known = before.get("target") if before.get("asr_trigger") == "known" else None
    extra = [c for c in scan.get("flagged_classes") or [] if known is not None and c != known]
    if extra:
        treated = (result.get("defense") or {}).get("applied")
        notes.append(f"Flagged besides the known trigger's target ({_class_label(result, known)}): "
                     f"{', '.join(_class_label(result, c) for c in extra)}. The scan cannot tell a second backdoor from a "
                     "class the task makes easy to reach (clean models of the project's zoo had such classes flagged, "
                     "docs/limits.md); " + ("the defense unlearned its recovered trigger too, as a target." if treated
                                            else "look at its recovered trigger before calling it a backdoor."))
    for c, rates in (scan.get("carry_over") or {}).items():
        if rates.get("reference_asr", 0) >= 0.2:
            notes.append(f"Class {_class_label(result, int(c))} is flagged, but its recovered triggers also send "
                         f"{_pct(rates['reference_asr'])} of clean samples to it on the clean reference model: probably a "
                         "natural feature of the data rather than a planted trigger (it was still treated as a target).")
    return notes


def _metrics_table(result: dict) -> str:
    m = result["metrics"]
    before, after, edit = m.get("before") or {}, m.get("after") or {}, m.get("after_edit") or {}
    if not before or "error" in before:
        return ""
    source = before.get("asr_trigger") or after.get("asr_trigger")
    asr_label = {"known": "True ASR (the known trigger)", "recovered": "Estimated ASR (the scan's recovered trigger, not the true ASR)"}.get(
        source, "ASR (no trigger known or recovered)")
    target = before.get("target")
    rows = [("C-ACC (clean accuracy)", before.get("c_acc"), edit.get("c_acc"), after.get("c_acc")),
            (asr_label + (f", target class {target}" if target is not None else ", all-to-all: y → y+1" if source == "known"
                       else ", all-to-all: each class to its recovered destination" if source else ""),
             before.get("asr"), edit.get("asr"), after.get("asr"))]
    if before.get("asr_no_trigger") is not None:
        rows += [("The same images sent to the target WITHOUT the trigger (the model's own confusion)",
                  before.get("asr_no_trigger"), edit.get("asr_no_trigger"), after.get("asr_no_trigger")),
                 ("Moved to the target BY the trigger (there with it, elsewhere without)",
                  before.get("asr_trigger_flips"), edit.get("asr_trigger_flips"), after.get("asr_trigger_flips"))]
    if before.get("r_acc") is not None:
        rows.append(("R-ACC (triggered samples classified correctly)", before.get("r_acc"), None, after.get("r_acc")))
    defended = any(e is not None or a is not None for _, _, e, a in rows)
    body = "".join(f"<tr><th>{escape(name)}</th><td>{_pct(b)}</td>" + (f"<td>{_pct(e)}</td><td>{_pct(a)}</td>" if defended else "")
                   + "</tr>" for name, b, e, a in rows)
    head = (f'<th scope="col">{_edit_column(result)}</th><th scope="col">After repair (the repaired model)</th>' if defended else "")
    split = ("ASR counts every non-target image the triggered input sends to the target, including those the model sends "
             "there without any trigger (its own confusion, which a defense that keeps the class leaves in place); "
             "the row \"moved to the target BY the trigger\" is what the trigger itself does."
             if before.get("asr_no_trigger") is not None else "")
    return ("<h3>Attack success and accuracy</h3>"
            f'<div class="scroll"><table class="grid"><tr><th></th><th scope="col">Before (as delivered)</th>{head}</tr>{body}</table></div>'
            f"<p>Measured on {before.get('eval_samples', '?')} held-out evaluation samples never used by the scan or the defense.{' ' + split if split else ''}</p>")


def _number(value, unit) -> str:
    if value is None:
        return ""
    if unit == "share":
        return f"{value:.2%}"
    return f"{value:.3g}" if isinstance(value, float) else escape(str(value))


def _edit_column(result: dict) -> str:
    """The middle column: the defense's own result, before repair restored what it cost."""
    name = (result.get("defense") or {}).get("name") or "the defense"
    return f"After {escape(str(name))} (before repair)"


def _checks_table(result: dict) -> str:
    """Every check that ran, per stage: the rule it applies, the measured value against its threshold, the
    margin (how far inside; negative = outside), the outcome and the check's own words."""
    rows = []
    for stage, label in (("before", "As delivered"), ("after", "Repaired model")):
        checks = [c for c in result["checks"] if c["stage"] == stage]
        if not checks:
            continue
        reasons = {c["message"] for c in checks}
        if stage == "after" and all(c["outcome"] == "skipped" for c in checks) and len(reasons) == 1:
            # nothing ran on a repaired model: one row says why instead of one per check
            rows.append(f'<tr class="stage"><th colspan="6">{label}: not audited ({len(checks)} checks skipped): '
                        f"{escape(reasons.pop())}</th></tr>")
            continue
        rows.append(f'<tr class="stage"><th colspan="6">{label} ({_counts_line_stage(result, stage)})</th></tr>')
        for c in checks:
            p = c.get("properties") or {}
            unit = p.get("unit")
            margin = p.get("margin")
            margin_cell = "" if margin is None else f'<span class="{"neg" if margin < 0 else ""}">{_number(margin, unit)}</span>'
            rule = escape(str(p.get("condition") or "")) or (f"<i>{escape(c['message'])}</i>" if c["outcome"] == "skipped" else "")
            detail = escape(c["message"]) if c["message"] and c["outcome"] != "skipped" else ""
            rows.append(f'<tr class="{"flag" if c["outcome"] in ("failed", "error") else ""}"><th scope="row">{escape(c["name"])}</th>'
                        f'<td><span class="o-{c["outcome"]}">{OUTCOME_WORD[c["outcome"]]}</span></td><td>{rule}'
                        + (f"<br><small>{detail}</small>" if detail else "")
                        + f'</td><td class="num">{_number(p.get("measured"), unit)}</td><td class="num">{_number(p.get("threshold"), unit)}</td>'
                        f'<td class="num">{margin_cell}</td></tr>')
    return ('<h3>Checks</h3><div class="scroll"><table class="grid checks"><tr><th scope="col">Check</th><th scope="col">Outcome</th>'
            '<th scope="col">Passes when (and what the check said)</th><th scope="col">Measured</th><th scope="col">Threshold</th>'
            f'<th scope="col">Margin</th></tr>{"".join(rows)}</table></div>')


def _counts_line_stage(result: dict, stage: str) -> str:
    n = stage_counts(result, stage)
    return f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped, {n['error']} errors"


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
        # a scheduled scan searched only some classes (None for the others)
        order = sorted((c for c, a in enumerate(warp["asr"]) if a is not None), key=lambda c: -warp["asr"][c])
        hit_w = [a is not None and a >= result["config"]["min_generative_asr"] for a in warp["asr"]]
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
    a2a = scan.get("all_to_all")
    if a2a:
        limit = result["config"].get("max_all_to_all_ratio", 0.3)
        flagged = a2a["ratio"] is not None and a2a["ratio"] <= limit and a2a["destinations"] >= 3 and a2a["flip_rate"] >= 0.5
        found = ("No mask met that" if a2a["ratio"] is None else
                 f"Smallest such mask: L1 {a2a['norm']:.1f}, {a2a['ratio']:.2f} of the per-class Neural Cleanse median "
                 f"({a2a['reference_norm']:.1f}); on held-out samples it moves {_pct(a2a['flip_rate'])} of them, "
                 f"{_pct(a2a['sink_share'])} of those to one class, {a2a['destinations']} classes receiving at least 5%")
        mapping = ", ".join(f"{_class_label(result, s_)} → {_class_label(result, d)}" for s_, d in enumerate(a2a["mapping"]) if d is not None)
        para = "<p class='flag'>" if flagged else "<p>"
        generative += (f"{para}All-to-all search: the smallest single trigger (mask and pattern) that moves most samples away from "
                       "their own class to many different classes, as an all-to-all backdoor does (each class to its own target). "
                       "A step counts when 80% of a batch leaves its class and no destination takes half of them; the trigger is "
                       f"flagged when its mask is at most {limit:g} of the per-class median. {found}."
                       + (f" <b>FLAGGED</b>: where it sends each class: {escape(mapping)}." if flagged else "") + "</p>")
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
    # a scheduled scan leaves its screened-out classes without an index (null)
    top = max([abs(a) for a in scan["anomaly_index"] if a is not None] + [threshold, 1e-9])
    rows = []
    schedule = scan.get("class_schedule")
    shown = range(len(scan["norms"])) if not schedule else sorted(
        set(schedule["full_search"]) | set(scan["flagged_classes"]) | set(scan.get("suspected_classes", [])))
    for c in shown:
        norm, index = scan["norms"][c], scan["anomaly_index"][c]
        flagged = c in scan["flagged_classes"]
        width = int(120 * max(index, 0) / top)
        bar = f'<span class="bar{" hot" if flagged else ""}" style="width:{width}px"></span>'
        asr = scan["recovered_asr"][c] if scan.get("recovered_asr") else None
        after_index = after["anomaly_index"][c] if after else None
        after_cells = (f"<td>{after['norms'][c]:.1f}</td><td>{'not searched in full' if after_index is None else f'{after_index:.2f}'}</td>"
                       if after else "")
        mark = "FLAGGED" if flagged else ("suspected (not flagged)" if c in scan.get("suspected_classes", []) else "")
        rows.append(f'<tr class="{"flag" if flagged else ""}"><td>{_class_label(result, c)}</td><td>{norm:.1f}</td>'
                    f"<td>{index:.2f} {bar}</td><td>{_pct(asr)}</td><td>{mark}</td>{after_cells}</tr>")
    after_head = "<th>after: mask L1</th><th>after: anomaly index</th>" if after else ""
    generative = _generative_tables(result, scan)
    # the generative scan only ranks classes by this index; its flags come from the tables below
    verdict = (f"flagged above {threshold:g} when the mask is also at most {result['config']['max_mask_ratio']:g} × "
               f"the median mask" if not generative else
               ("here it ranks the classes and never flags one by itself (a head this large has ordinary classes far out): "
                if schedule else
                f"here it ranks the classes, and flags one by itself only above {result['config'].get('nc_alone_threshold', 6.0):g}: ")
               + 
               "the generative scan flags a class by its sampled triggers, its warp, its blend or an all-to-all trigger (below). "
               "When some class is flagged, "
               f"a class above {threshold:g} with a small mask that is not flagged is suspected, and the defense unlearns its trigger too")
    return (f"<h3>Trigger scan: {escape(scan['method'])}</h3>"
            f"<p>For every class, the smallest mask that turns clean images into that class. A backdoor target needs a much "
            f"smaller mask than the others: anomaly index = (median − log L1) / (1.4826 · MAD) over the classes' log mask "
            f"norms (the log scale keeps a few huge masks from hiding a small one); {verdict}. "
            f"Scan time {scan['seconds']:.1f}s on {scan['fit_samples']} fit samples.</p>{_schedule_paragraph(result, schedule)}"
            '<table class="grid"><tr><th>Class</th><th>Mask L1</th><th>Anomaly index</th><th>Reach of its mask<sup>*</sup></th>'
            f"<th></th>{after_head}</tr>{''.join(rows)}</table><p><small><sup>*</sup> Share of held-out images that class's smallest "
            "mask sends to it. Every class has such a mask, a clean model's too: this measures the scan's search, not an attack; "
            f"the true ASR needs the real trigger (--trigger).</small></p>{generative}{_reference_paragraph(result, scan)}"
            + (f'<p class="limits"><b>What this scan cannot see:</b> {escape(scan["limits"])}</p>' if scan.get("limits") else ""))


def _schedule_paragraph(result: dict, schedule: dict | None) -> str:
    if not schedule:
        return ""
    return (f"<p>Class scheduling: this model has {schedule['classes']} classes. Every class had a "
            f"{schedule['screen_steps']}-step screen; {len(schedule['full_search'])} ran the full search (the table): the "
            f"{len(schedule['shortlist'])} with the smallest screening masks, {len(schedule['logit_shortlist'])} most often "
            f"second-highest on clean images, and {len(schedule['reference'])} drawn at random, the reference the anomaly index "
            "and the blend ratio are measured against. Only those are ranked, flagged or suspected: a class screened out keeps "
            "its screening mask, which is not comparable (an unconverged screen leaves a small, unsuccessful mask); the screen's "
            "numbers are in the JSON (<code>class_schedule</code>).</p>")


def _figure(label: str, b64: str, group: str) -> str:
    # the alt text names the group too: "mask" alone does not say whose mask it is
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{escape(group)}: {escape(label)}">'
            f"<figcaption>{escape(label)}</figcaption></figure>")


def _pictures(result: dict) -> str:
    blocks = [f"<h4>{escape(group['title'])}</h4><div class='pics'>"
              f"{''.join(_figure(k, v, group['title']) for k, v in group['images'])}</div>"
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
    def mark(c):
        return " · known target" if c == known else " · flagged by the scan" if c in targets else ""

    rows = "".join(
        f'<tr class="{"flag" if c in first else ""}"><td>{_class_label(result, c)}{mark(c)}</td>'
        f"<td>{_pct(before[c])}</td><td>{_pct(edit[c])}</td><td>{_pct(after[c])}</td></tr>"
        for c in order)
    return ('<h3>Per-class accuracy</h3><div class="scroll"><table class="grid"><tr><th scope="col">Class</th><th scope="col">Before</th>'
            f'<th scope="col">{_edit_column(result)}</th><th scope="col">After repair</th></tr>{rows}</table></div>')


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
    for cls, moved in (stats.get("anywhere") or {}).items():
        rates = ", ".join(f"{kind} {rate:.0%}" for kind, rate in moved["moved_asr"].items())
        parts.append(f"class {cls}'s recovered patches moved elsewhere still sent fit samples there ({rates}): "
                     + (f"works anywhere, {moved['added']} moved copies unlearned too" if moved["added"] else "only where found"))
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
        ("Scan compute", _compute_summary((result.get("scan") or {}).get("compute"))),
        ("Scan budget", _budget_summary(result)),
        ("Seed", result["seed"]), ("Defense", _defense_summary(defense) if defense.get("applied") else "not applied"),
        ("Repair", _repair_summary(defense.get("repair")) if defense.get("applied") else None),
        ("Repaired files", ", ".join((defense.get("outputs") or {}).values()) or None),
        ("Timings", ", ".join(f"{k} {v:.1f}s" for k, v in result["timings"].items())),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td class='mono'>{escape(str(v))}</td></tr>" for k, v in rows if v is not None)
    return f'<h3>Model and run</h3><table class="grid">{body}</table>'


def _budget_summary(result: dict, reduced_only: bool = False) -> str | None:
    """What --budget did to each scan, and what that fraction cost in detection on the zoo."""
    seconds = result["config"].get("budget_seconds")
    scan = result.get("scan") or {}
    plans = [p for p in (scan.get("budget"), (scan.get("after") or {}).get("budget")) if p]
    if not seconds or not plans or (reduced_only and all(p["fraction"] >= 1 for p in plans)):
        return None
    from ..budget import fraction_text

    parts, costs = [], {}
    for p in plans:
        text = (f"the {'delivered' if p['stage'] == 'before' else 'repaired'} model's scan ran at {fraction_text(p['fraction'])} "
                f"of its optimisation steps (its full budget priced at {p['full_seconds']:.0f}s here, its share {p['share_seconds']:.0f}s)")
        if not p["fits"]:
            text += ", still over its share: the least this tool runs"
        parts.append(text)
        if p.get("detection"):
            costs[fraction_text(p["fraction"])] = p["detection"]
    cost = "".join(f" At {f} on the project's zoo: {d}." for f, d in costs.items())
    return (f"--budget {seconds:g}s: " + "; ".join(parts) + "." + cost
            + " The defense unlearns what the shortened scan recovered.")


def _compute_summary(compute: dict | None) -> str | None:
    if not compute:
        return None
    from ..compute import rates_text

    rates = rates_text(compute.get("measured") or {})
    mode = compute["precision"] + (" + channels-last" if compute.get("channels_last") else "")
    return f"{mode} (--scan-precision {compute.get('requested')}); forward+backward images/s here: {rates}; predictions float32"


def _provenance(result: dict) -> str:
    """Who ran what, when, where, on which exact bytes: the evidence block, plain HTML (no script needed)."""
    prov = result.get("provenance")
    if not prov:
        return ""
    ci = prov.get("ci") or {}
    ci_text = (", ".join(f"{k} {v}" for k, v in ci.items() if v) if ci else "not in CI (no GitHub Actions or GitLab CI variables)")
    rows = [("Tool", f"{prov['tool']['name']} {prov['tool'].get('version') or ''}"), ("Started (UTC)", prov.get("timestamp")),
            ("Finished (UTC)", prov.get("finished")), ("Command line", " ".join(prov.get("command_line") or [])),
            ("User", prov.get("user")), ("Host", prov.get("host")), ("CI", ci_text), ("Seed", prov.get("seed")),
            ("Device", prov.get("device")),
            ("Library versions", ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items()))]
    body = "".join(f"<tr><th scope='row'>{escape(k)}</th><td class='mono'>{escape(str(v))}</td></tr>" for k, v in rows if v is not None)
    files = []
    for direction, entries in (("input", prov.get("inputs") or []), ("written", prov.get("outputs") or [])):
        for e in entries:
            size = f"{e['size_bytes']:,} bytes" if e.get("size_bytes") is not None else ""
            kind = {"folder": f"folder of {e.get('files', '?')} files (hash of its sha256sum listing)",
                    "bundled": f"bundled set {e.get('name', '')}"}.get(e.get("kind"), "")
            files.append(f"<tr><td>{direction}: {escape(e['role'].replace('_', ' '))}</td><td class='mono'>{escape(e['path'])}</td>"
                         f"<td class='mono hash'>{e.get('sha256') or 'not readable'}</td><td>{escape(', '.join(x for x in (size, kind) if x))}</td></tr>")
    table = ('<div class="scroll"><table class="grid"><tr><th scope="col">File</th><th scope="col">Path</th><th scope="col">SHA-256</th>'
             f'<th scope="col">Size</th></tr>{"".join(files)}</table></div>') if files else ""
    return f'<section id="provenance"><h3>Provenance</h3><table class="grid">{body}</table>{table}</section>'


def finish_html(path, result: dict) -> None:
    """pytest-html writes the page; this makes it auditor's: the document language, a viewport for phones,
    and the credit line naming the tool and the UTC time (pytest-html's names its local time and itself)."""
    import re
    from pathlib import Path

    page = Path(path)
    text = page.read_text(encoding="utf-8")
    prov = result.get("provenance") or {}
    text = text.replace("<html>", '<html lang="en">', 1)
    text = text.replace('<meta charset="utf-8"/>', '<meta charset="utf-8"/>\n    <meta name="viewport" content="width=device-width, initial-scale=1"/>', 1)
    credit = (f"<p>Written by auditor {escape(str((prov.get('tool') or {}).get('version') or ''))} at "
              f"{escape(str(prov.get('timestamp') or ''))} (UTC); page layout by pytest-html.</p>")
    text = re.sub(r"<p>Report generated on .*?</p>", lambda _: credit, text, count=1, flags=re.S)
    # pytest-html puts its environment table (empty without JavaScript; the provenance block holds the
    # same facts) above the summary: move it below, so the source order is the reading order (verdict first)
    env = re.search(r'\s*<div id="environment-header">.*?</div>\s*<table id="environment"></table>', text, flags=re.S)
    if env and '<table id="results-table">' in text:
        text = text.replace(env.group(0), "", 1)
        text = text.replace('<table id="results-table">', env.group(0).strip() + '\n    <table id="results-table">', 1)
    page.write_text(text, encoding="utf-8")
