"""Backdoor checks: a trigger-recovery scan over every class, and the true ASR when the trigger is known."""

import pytest

from auditor.conditions import record_condition, scan_rule


@pytest.mark.backdoor
def check_trigger_scan(scan, audit_session, record_property):
    flagged = audit_session.flagged(scan)
    record_property("most_suspicious_classes", scan.ranking()[:5])
    record_property("flagged_classes", flagged)
    record_condition(record_property, f"no class flagged by the {scan.method} scan; a class is flagged when "
                     f"{scan_rule(scan.method, audit_session.thresholds)}", len(flagged), 0)
    if flagged:
        worst = flagged[0]
        names = audit_session.handle.info.metadata.get("class_names") or []
        label = f"{worst} ({names[worst]})" if worst < len(names) else str(worst)
        raise AssertionError(
            f"possible backdoor: {scan.evidence(worst, audit_session.thresholds, label)}; flagged classes: {flagged}"
            + _compared_with_delivered(scan, audit_session, worst) + _carry_over_note(audit_session.carry_over(scan))
            + _suspects_note(scan, audit_session.thresholds)
        )


def _suspects_note(scan, thresholds) -> str:
    """Classes the scan does not flag but the defense will also unlearn, named so the person reading
    the failure knows the flag may not be the whole story."""
    from auditor.defense_stage import classes_to_unlearn

    flagged = scan.flagged(thresholds)
    suspects = [c for c in classes_to_unlearn(scan, thresholds) if c not in flagged]
    if not suspects:
        return ""
    return f"; also suspected (unlearned by the defense, not flagged): {'; '.join(f'class {c}: its {scan.describe_class(c)})' for c in suspects)}"


def _carry_over_note(rates: dict) -> str:
    """With --reference-model: how far each flagged class's triggers also work on the clean reference."""
    if not rates:
        return ""
    parts = [f"class {c} {100 * r['reference_asr']:.0f}% (here {100 * r['asr']:.0f}%)" for c, r in rates.items()]
    return f"; the same triggers on the reference model: {', '.join(parts)}"


def _compared_with_delivered(scan, audit_session, cls: int) -> str:
    """On the repaired model: what the same class looked like in the delivered one. A class flagged
    only now, with the numbers it had before, was moved over the threshold by the other classes
    changing (the unlearned target's most of all), not by the defense; the check still fails, since a
    scan cannot tell a class that is naturally easy to reach from a second backdoor."""
    before = audit_session.scan_result("before")
    if before is None or before is scan or cls in audit_session.flagged(before):
        return ""
    return f"; in the delivered model this class's {before.describe_class(cls)}, not flagged)"


@pytest.mark.backdoor
def check_known_trigger_asr(metrics, known_trigger, audit_config, record_property):
    if known_trigger is None:
        pytest.skip("no --trigger given: the true attack success rate cannot be measured")
    record_property("asr", round(metrics["asr"], 4))
    record_property("asr_no_trigger", round(metrics["asr_no_trigger"], 4))
    record_condition(record_property, f"true ASR with the known trigger <= {audit_config.max_asr:.0%} (--max-asr)",
                     metrics["asr"], audit_config.max_asr, share=True)
    assert metrics["asr"] <= audit_config.max_asr, (
        f"the known trigger sends {metrics['asr']:.1%} of non-target samples to class {known_trigger.target_name} "
        f"(ASR > {audit_config.max_asr:.0%}; without the trigger {metrics['asr_no_trigger']:.1%} go there, "
        f"the trigger moves {metrics['asr_trigger_flips']:.1%})"
    )
