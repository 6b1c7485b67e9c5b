"""The all-to-all search (scans/all_to_all.py) on the zoo's all-to-all BadNets model and a clean one, and
the whole default audit of that model with no trigger given."""

from __future__ import annotations

import pytest
import torch

from conftest import CLEAN_PT, FIXTURES, run_auditor
from auditor.metrics import attack_success_rate
from auditor.scans.all_to_all import all_to_all_search
from auditor.scans.neural_cleanse import NeuralCleanseParams, _freeze, _restore
from auditor.triggers import Trigger, load_trigger

ALL2ALL_PT = FIXTURES / "zoo" / "badnets_all2all.pt"
ALL2ALL_TRIGGER = FIXTURES / "zoo" / "badnets_all2all.trigger.json"


def _search(handle, split, reference_norm=40.0):
    flags = _freeze(handle.module)
    try:
        return all_to_all_search(handle, split.fit.x, split.eval.x, reference_norm=reference_norm, steps=600, batch_size=48,
                                 lr=0.1, schedule=NeuralCleanseParams(), spread=1.0, flip_rate=0.8, max_sink_share=0.5,
                                 eval_samples=300, seed=0)
    finally:
        _restore(handle.module, flags)


def test_recovers_the_all_to_all_trigger_and_its_mapping(load, fmnist_split10):
    handle = load(ALL2ALL_PT)
    found = _search(handle, fmnist_split10)
    # the planted trigger is a 3x3 patch (L1 <= 9); each class goes to the next
    assert found.norm < 9
    assert sum(d == (s + 1) % 10 for s, d in enumerate(found.mapping)) >= 8
    assert found.flip_rate >= 0.5 and found.destinations >= 5
    assert found.hit(0.3, 0.5)
    rule = found.trigger
    assert rule.target is None and rule.target_labels(torch.tensor([0, 3, 9]), 10).tolist() == [found.mapping[i] for i in (0, 3, 9)]


def test_a_clean_model_needs_a_far_larger_mask(load, fmnist_split10):
    found = _search(load(CLEAN_PT), fmnist_split10)
    assert found.norm > 30  # the clean fixture's smallest all-class flip (a sink class is not allowed)
    assert not found.hit(0.3, 0.5)


def test_recovered_mapping_labels_keep_unobserved_classes():
    rule = Trigger(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), None, "recovered", kind="all-to-all", mapping=(1, -1, 0))
    assert rule.target_labels(torch.tensor([0, 1, 2]), 3).tolist() == [1, 1, 0]
    assert "recovered" in rule.target_name


@pytest.fixture(scope="module")
def all2all_audit(tmp_path_factory):
    """The default audit (generative scan, activation-edit + repair) with no trigger given."""
    return run_auditor(tmp_path_factory.mktemp("all2all"), ALL2ALL_PT)


def test_the_default_audit_flags_and_removes_an_all_to_all_backdoor(all2all_audit, load, fmnist):
    run = all2all_audit
    assert run.returncode == 1, run.stderr[-2000:]
    scan = run.data["scan"]
    assert scan["all_to_all"]["ratio"] <= 0.3
    assert sorted(scan["flagged_classes"]) == list(range(10))
    assert run.data["metrics"]["before"]["asr_trigger"] == "recovered"
    assert any(t["target"].startswith("all-to-all") for t in run.data["defense"]["triggers"])
    assert run.inputs_unchanged
    html = run.html_path.read_text()
    assert "All-to-all search" in html and "<b>FLAGGED</b>: where it sends each class" in html
    assert "Recovered all-to-all trigger" in html
    assert "all-to-all" in run.stdout or "all-to-all" in run.stderr
    # the true trigger, never shown to the audit, on the repaired files
    repaired = load(run.data["defense"]["outputs"]["state_dict"])
    trigger = load_trigger(ALL2ALL_TRIGGER, 1, 28, 28)
    x, y = fmnist.x[:2000], fmnist.y[:2000]
    asr = attack_success_rate(repaired.predict(trigger.apply(x)), y, trigger.target_labels(y, 10))
    assert asr <= 0.10, asr
