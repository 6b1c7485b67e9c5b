"""Clean accuracy on the held-out evaluation split, and what the defense cost."""

import pytest

from auditor.conditions import record_condition


def check_clean_accuracy(metrics, audit_config, record_property):
    record_property("c_acc", round(metrics["c_acc"], 4))
    record_condition(record_property, f"clean accuracy >= {audit_config.min_accuracy:.0%} (--min-accuracy)",
                     metrics["c_acc"], audit_config.min_accuracy, at_most=False, share=True)
    assert metrics["c_acc"] >= audit_config.min_accuracy, (
        f"clean accuracy {metrics['c_acc']:.2%} is below the minimum {audit_config.min_accuracy:.0%}"
    )


def check_accuracy_kept(stage, metrics, audit_session, audit_config, record_property):
    if stage == "before":
        pytest.skip("compares the repaired model with the delivered one")
    before = audit_session.metrics("before")["c_acc"]
    drop = before - metrics["c_acc"]
    record_condition(record_property, f"clean accuracy lost to the defense <= {audit_config.max_accuracy_drop:.0%} "
                     "(--max-accuracy-drop)", drop, audit_config.max_accuracy_drop, share=True)
    assert drop <= audit_config.max_accuracy_drop, (
        f"the defense cost {drop:.2%} clean accuracy ({before:.2%} -> {metrics['c_acc']:.2%}), "
        f"over the allowed {audit_config.max_accuracy_drop:.0%}"
    )


# Below this many held-out images a class's accuracy moves in steps of more than 3 points, and one
# image more or less would decide the verdict.
MIN_EVAL_PER_CLASS = 30


def check_class_accuracy_kept(stage, metrics, audit_session, audit_config, record_property):
    """No class lost more than --max-class-drop accuracy to the defense (the target class included)."""
    if stage == "before":
        pytest.skip("compares the repaired model with the delivered one")
    before = audit_session.metrics("before")
    names = audit_session.handle.info.metadata.get("class_names") or []
    accuracy = {
        c: (b, a)
        for c, (b, a, n) in enumerate(zip(before["per_class_acc"], metrics["per_class_acc"], metrics["eval_per_class"]))
        if b is not None and a is not None and n >= MIN_EVAL_PER_CLASS
    }
    if not accuracy:
        pytest.skip(f"no class has the {MIN_EVAL_PER_CLASS} evaluation samples its accuracy would be judged by")
    drop = {c: b - a for c, (b, a) in accuracy.items()}
    worst = max(drop, key=drop.get)
    record_property("largest_class_drop", {"class": worst, "drop": round(drop[worst], 4)})
    record_condition(record_property, f"no class loses more than {100 * audit_config.max_class_drop:g} points of accuracy "
                     f"(--max-class-drop; worst: class {worst})", drop[worst], audit_config.max_class_drop, share=True)
    over = sorted((c for c in drop if drop[c] > audit_config.max_class_drop), key=lambda c: -drop[c])

    def label(c):
        notes = ([names[c]] if c < len(names) else []) + (["the target"] if c == metrics.get("target") else [])
        return f"class {c}" + (f" ({', '.join(notes)})" if notes else "")

    assert not over, (
        "the defense cost "
        + "; ".join(f"{label(c)} {100 * drop[c]:.1f} points ({accuracy[c][0]:.1%} -> {accuracy[c][1]:.1%})" for c in over)
        + f" of accuracy, over the allowed {100 * audit_config.max_class_drop:g} points per class"
        + f" (from >= {min(metrics['eval_per_class'][c] for c in over)} held-out images each)"
    )


def check_agreement_on_synthesized_inputs(stage, model, audit_session, audit_config, record_property):
    """--data none: the repaired model decides as the delivered one on the inputs synthesized from it
    (the only stand-in for clean accuracy there is without data)."""
    if not audit_session.data_free:
        pytest.skip("runs with --data none (with data, clean accuracy is measured instead)")
    if stage == "before":
        pytest.skip("compares the repaired model with the delivered one")
    agreement = audit_session.agreement(stage)
    record_property("agreement", round(agreement, 4))
    record_condition(record_property, f"decides differently from the delivered model on <= {audit_config.max_accuracy_drop:.0%} "
                     "of synthesized inputs", 1 - agreement, audit_config.max_accuracy_drop, share=True)
    assert 1 - agreement <= audit_config.max_accuracy_drop, (
        f"the repaired model decides differently from the delivered one on {1 - agreement:.1%} of the inputs "
        f"synthesized from it, over the allowed {audit_config.max_accuracy_drop:.0%} (--max-accuracy-drop)"
    )
