"""Defenses (nc-unlearn, finetune) and repair: never touch the input handle, deterministic for a seed,
and nc-unlearn with the known trigger actually removes the backdoor on held-out samples."""

from __future__ import annotations

import pytest
import torch

import auditor.defenses  # noqa: F401  (registers the defenses)
from auditor.defenses import RepairParams, repair
from auditor.metrics import accuracy, attack_success_rate
from auditor.registry import DEFENSES

from conftest import TARGET

FAST = {"steps": 40, "batch_size": 32}
FAST_REPAIR = RepairParams(min_steps=10, max_steps=20, batch_size=32, check_every=10)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}, [p.requires_grad for p in module.parameters()]


def _assert_same(module, snapshot):
    state, flags = snapshot
    now = module.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"
    assert [p.requires_grad for p in module.parameters()] == flags


def _weights_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["nc-unlearn", "finetune"])
def test_defense_leaves_input_untouched_and_is_deterministic(name, badnets_handle, fmnist_split, known_trigger):
    entry = DEFENSES.get(name)
    before = _snapshot(badnets_handle.module)
    a = entry.factory(badnets_handle, fmnist_split.fit, [known_trigger], dict(FAST), 0)
    _assert_same(badnets_handle.module, before)
    assert a.handle is not badnets_handle and a.handle.module is not badnets_handle.module
    assert a.name == name and a.samples_used == len(fmnist_split.fit)
    assert not _weights_equal(a.handle.module, badnets_handle.module), "the defense did not train"
    assert a.handle.info.path == badnets_handle.info.path and a.handle.ort_session is None
    b = entry.factory(badnets_handle, fmnist_split.fit, [known_trigger], dict(FAST), 0)
    assert _weights_equal(a.handle.module, b.handle.module)
    c = entry.factory(badnets_handle, fmnist_split.fit, [known_trigger], dict(FAST), 1)
    assert not _weights_equal(a.handle.module, c.handle.module)
    _assert_same(badnets_handle.module, before)


def test_defense_on_onnx_handle_leaves_it_untouched(badnets_onnx_handle, fmnist_split, known_trigger):
    before = _snapshot(badnets_onnx_handle.module)
    x = fmnist_split.eval.x[:32]
    ort_before = badnets_onnx_handle.logits(x)
    out = DEFENSES.get("nc-unlearn").factory(badnets_onnx_handle, fmnist_split.fit, [known_trigger], dict(FAST), 0)
    _assert_same(badnets_onnx_handle.module, before)
    assert torch.equal(badnets_onnx_handle.logits(x), ort_before)
    assert out.handle.ort_session is None


def test_bad_defense_params_raise(badnets_handle, fmnist_split):
    with pytest.raises(ValueError, match="stamp_fraction"):
        DEFENSES.get("nc-unlearn").factory(badnets_handle, fmnist_split.fit, [], {"stamp_fraction": 0}, 0)
    with pytest.raises(TypeError):
        DEFENSES.get("finetune").factory(badnets_handle, fmnist_split.fit, [], {"nope": 1}, 0)


def test_repair_leaves_inputs_untouched_and_is_deterministic(badnets_handle, fmnist_split, known_trigger):
    edited = DEFENSES.get("nc-unlearn").factory(badnets_handle, fmnist_split.fit, [known_trigger], dict(FAST), 0).handle
    orig_snap, edited_snap = _snapshot(badnets_handle.module), _snapshot(edited.module)
    r1, stats = repair(badnets_handle, edited, fmnist_split.fit, [known_trigger], [TARGET], FAST_REPAIR, seed=0)
    _assert_same(badnets_handle.module, orig_snap)
    _assert_same(edited.module, edited_snap)
    assert r1.module is not edited.module
    assert 10 <= stats["steps"] <= 20
    assert stats["train_samples"] + stats["check_samples"] == len(fmnist_split.fit)
    r2, _ = repair(badnets_handle, edited, fmnist_split.fit, [known_trigger], [TARGET], FAST_REPAIR, seed=0)
    assert _weights_equal(r1.module, r2.module)
    r3, _ = repair(badnets_handle, edited, fmnist_split.fit, [known_trigger], [TARGET], FAST_REPAIR, seed=1)
    assert not _weights_equal(r1.module, r3.module)


def test_nc_unlearn_with_known_trigger_removes_backdoor(badnets_handle, fmnist_split, known_trigger):
    ev = fmnist_split.eval  # held out: never seen by the defense
    assert len(fmnist_split.fit) == 500

    def measure(handle):
        return (accuracy(handle.predict(ev.x), ev.y),
                attack_success_rate(handle.predict(known_trigger.apply(ev.x)), ev.y, known_trigger.target))

    c_acc_before, asr_before = measure(badnets_handle)
    assert asr_before > 0.9, "the fixture should carry a working backdoor"
    outcome = DEFENSES.get("nc-unlearn").factory(badnets_handle, fmnist_split.fit, [known_trigger], {}, 0)
    c_acc_after, asr_after = measure(outcome.handle)
    assert asr_after < 0.2, f"ASR {asr_before:.2%} -> {asr_after:.2%}"
    assert c_acc_after > c_acc_before - 0.05
    # finetune without the trigger is the baseline: it should not remove the backdoor as well
    baseline = DEFENSES.get("finetune").factory(badnets_handle, fmnist_split.fit, [], {}, 0)
    assert measure(baseline.handle)[1] > asr_after
