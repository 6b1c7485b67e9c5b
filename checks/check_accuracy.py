"""Clean accuracy on the held-out evaluation split, and what the defense cost."""

import pytest


def check_clean_accuracy(metrics, audit_config, record_property):
    record_property("c_acc", round(metrics["c_acc"], 4))
    assert metrics["c_acc"] >= audit_config.min_accuracy, (
        f"clean accuracy {metrics['c_acc']:.2%} is below the minimum {audit_config.min_accuracy:.0%}"
    )


def check_accuracy_kept(stage, metrics, audit_session, audit_config):
    if stage == "before":
        pytest.skip("compares the repaired model with the delivered one")
    before = audit_session.metrics("before")["c_acc"]
    drop = before - metrics["c_acc"]
    assert drop <= audit_config.max_accuracy_drop, (
        f"the defense cost {drop:.2%} clean accuracy ({before:.2%} -> {metrics['c_acc']:.2%}), "
        f"over the allowed {audit_config.max_accuracy_drop:.0%}"
    )
