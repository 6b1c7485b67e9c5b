"""Defenses (activation-edit, baerase, nc-unlearn, finetune) and repair: never touch the input handle,
deterministic for a seed, and with the known trigger the backdoor actually goes on held-out samples."""

from __future__ import annotations

import pytest
import torch

import auditor.defenses  # noqa: F401  (registers the defenses)
from auditor.defenses import RepairParams, repair
from auditor.defenses.activation_edit import ridge_edit
from auditor.defenses.base import augmented_views, per_class_fit_accuracy
from auditor.errors import AuditorInputError
from auditor.metrics import accuracy, attack_success_rate
from auditor.registry import DEFENSES

from conftest import TARGET

FAST = {"steps": 40, "batch_size": 32}
FAST_BY_NAME = {"nc-unlearn": FAST, "finetune": FAST, "baerase": {"max_steps": 30, "stop_asr": 0.0}, "activation-edit": {}}
FAST_REPAIR = RepairParams(min_steps=20, max_steps=60, batch_size=32, check_every=10)


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


def _measure(handle, data, trigger):
    return (accuracy(handle.predict(data.x), data.y),
            attack_success_rate(handle.predict(trigger.apply(data.x)), data.y, trigger.target))


@pytest.mark.parametrize("name", ["nc-unlearn", "finetune", "baerase", "activation-edit"])
def test_defense_leaves_input_untouched_and_is_deterministic(name, badnets_handle, fmnist_split, known_trigger):
    entry = DEFENSES.get(name)
    fast = FAST_BY_NAME[name]
    before = _snapshot(badnets_handle.module)
    a = entry.factory(badnets_handle, fmnist_split.fit, [known_trigger], dict(fast), 0)
    _assert_same(badnets_handle.module, before)
    assert a.handle is not badnets_handle and a.handle.module is not badnets_handle.module
    assert a.name == name and a.samples_used == len(fmnist_split.fit)
    assert not _weights_equal(a.handle.module, badnets_handle.module), "the defense did not train"
    assert a.handle.info.path == badnets_handle.info.path and a.handle.ort_session is None
    b = entry.factory(badnets_handle, fmnist_split.fit, [known_trigger], dict(fast), 0)
    assert _weights_equal(a.handle.module, b.handle.module)
    c = entry.factory(badnets_handle, fmnist_split.fit, [known_trigger], dict(fast), 1)
    # every defense draws at random (activation-edit: its shifted/mirrored views of the fit samples)
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
    edited = _hurt_target_class(badnets_handle, TARGET, fmnist_split.fit, known_trigger)
    orig_snap, edited_snap = _snapshot(badnets_handle.module), _snapshot(edited.module)
    r1, stats = repair(badnets_handle, edited, fmnist_split.fit, [known_trigger], [TARGET], FAST_REPAIR, seed=0)
    _assert_same(badnets_handle.module, orig_snap)
    _assert_same(edited.module, edited_snap)
    assert r1.module is not edited.module
    assert TARGET in stats["fallen_classes"] and 20 <= stats["steps"] <= 60 and stats["kept_step"] > 0
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


def test_activation_edit_removes_backdoor_from_ten_samples_per_class(badnets_handle, fmnist_split10, known_trigger):
    """The default defense at the default budget, judged on held-out samples it never saw."""
    assert len(fmnist_split10.fit) == 100
    ev = fmnist_split10.eval
    c_acc_before, asr_before = _measure(badnets_handle, ev, known_trigger)
    assert asr_before > 0.9
    out = DEFENSES.get("activation-edit").factory(badnets_handle, fmnist_split10.fit, [known_trigger], {}, 0)
    c_acc_after, asr_after = _measure(out.handle, ev, known_trigger)
    assert asr_after < 0.02, f"ASR {asr_before:.2%} -> {asr_after:.2%}"
    assert c_acc_after > c_acc_before - 0.01
    assert out.samples_used == 100 and out.stats["layer"] == "classifier.1"
    # every fit sample not of the target class, stamped, and each of its 16 shifted/mirrored views
    assert out.stats["stamped_samples"] == 17 * int((fmnist_split10.fit.y != known_trigger.target).sum())


def test_activation_edit_on_onnx_graph_module(badnets_onnx_handle, fmnist_split10, known_trigger):
    before = _snapshot(badnets_onnx_handle.module)
    out = DEFENSES.get("activation-edit").factory(badnets_onnx_handle, fmnist_split10.fit, [known_trigger], {}, 0)
    _assert_same(badnets_onnx_handle.module, before)
    assert "Gemm" in out.stats["layer"]
    assert _measure(out.handle, fmnist_split10.eval, known_trigger)[1] < 0.02


@pytest.mark.parametrize("rule", ["project", "dampen"])
def test_activation_edit_other_rules_edit_the_layer(rule, badnets_handle, fmnist_split10, known_trigger):
    out = DEFENSES.get("activation-edit").factory(badnets_handle, fmnist_split10.fit, [known_trigger], {"rule": rule}, 0)
    assert out.stats["weight_change_relative"] > 0
    assert not _weights_equal(out.handle.module, badnets_handle.module)


def test_activation_edit_refuses_what_it_cannot_edit(badnets_handle, fmnist_split10, known_trigger):
    with pytest.raises(AuditorInputError, match="out of range"):
        DEFENSES.get("activation-edit").factory(badnets_handle, fmnist_split10.fit, [known_trigger], {"layer": 5}, 0)
    conv_only = badnets_handle.derived(torch.nn.Sequential(torch.nn.Conv2d(1, 10, 28), torch.nn.Flatten()))
    with pytest.raises(AuditorInputError, match="no linear layer"):
        DEFENSES.get("activation-edit").factory(conv_only, fmnist_split10.fit, [known_trigger], {}, 0)
    with pytest.raises(ValueError, match="rule"):
        DEFENSES.get("activation-edit").factory(badnets_handle, fmnist_split10.fit, [known_trigger], {"rule": "nope"}, 0)


def test_ridge_edit_solves_the_anchored_least_squares():
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 5, generator=gen), torch.randn(3, generator=gen)
    a = torch.randn(40, 5, generator=gen)
    # targets the layer already produces: the edit is the identity
    w2, b2 = ridge_edit(w, b, a, a @ w.T + b, ridge=0.1)
    assert torch.allclose(w2, w, atol=1e-5) and torch.allclose(b2, b, atol=1e-5)
    # a tiny ridge fits new targets exactly; a huge one keeps the original weights
    w_new, b_new = torch.randn(3, 5, generator=gen), torch.randn(3, generator=gen)
    target = a @ w_new.T + b_new
    w3, b3 = ridge_edit(w, b, a, target, ridge=1e-9)
    assert torch.allclose(w3, w_new, atol=1e-4) and torch.allclose(b3, b_new, atol=1e-4)
    w4, _ = ridge_edit(w, b, a, target, ridge=1e6)
    assert torch.allclose(w4, w, atol=1e-3)


def test_ridge_edit_row_form_matches_the_input_form():
    # fewer rows than inputs is solved in the rows' space: same minimiser as the normal equations
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(4, 30, generator=gen), torch.randn(4, generator=gen)
    a, target = torch.randn(12, 30, generator=gen), torch.randn(12, 4, generator=gen)
    w2, b2 = ridge_edit(w, b, a, target, ridge=0.05)
    a1 = torch.cat([a, torch.ones(12, 1)], 1).double()
    w1 = torch.cat([w, b[:, None]], 1).double()
    mu = 0.05 * float((a.double() ** 2).sum(1).mean())
    primal = torch.linalg.solve(a1.T @ a1 + mu * torch.eye(31, dtype=torch.float64), a1.T @ target.double() + mu * w1.T).T
    assert torch.allclose(w2, primal[:, :30].float(), atol=1e-4) and torch.allclose(b2, primal[:, 30].float(), atol=1e-4)


def test_ridge_edit_row_weight_counts_a_row_that_many_times():
    gen = torch.Generator().manual_seed(2)
    w, b = torch.randn(3, 6, generator=gen), torch.randn(3, generator=gen)
    a, target = torch.randn(20, 6, generator=gen), torch.randn(20, 3, generator=gen)
    weight = torch.ones(20)
    weight[:5] = 2.0
    w2, b2 = ridge_edit(w, b, a, target, ridge=0.05, row_weight=weight)
    # same minimiser as the first five rows written twice (mu scales with the unweighted inputs' mean |a|^2)
    a_dup, t_dup = torch.cat([a, a[:5]]), torch.cat([target, target[:5]])
    mu = 0.05 * float((a.double() ** 2).sum(1).mean())
    ridge_dup = mu / float((a_dup.double() ** 2).sum(1).mean())
    w3, b3 = ridge_edit(w, b, a_dup, t_dup, ridge=ridge_dup)
    assert torch.allclose(w2, w3, atol=1e-4) and torch.allclose(b2, b3, atol=1e-4)


def test_augmented_views_are_shifted_or_mirrored_copies():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 28, 28)
    views = augmented_views(x, 3, gen)
    assert views.shape == (15, 1, 28, 28) and views.min() >= 0 and views.max() <= 1
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    candidates = [padded[:, :, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
    candidates += [c.flip(-1) for c in candidates]
    for v in range(3):  # row i of each view is image i shifted by up to 2 pixels, maybe mirrored
        view = views[v * 5 : (v + 1) * 5]
        assert all(min((view[i] - c[i]).abs().max().item() for c in candidates) == 0 for i in range(5))
    assert augmented_views(x, 0, gen).shape[0] == 0


def test_baerase_lowers_asr_without_collapse_and_stops_on_asr(badnets_handle, fmnist_split10, known_trigger):
    ev = fmnist_split10.eval
    c_acc_before, _ = _measure(badnets_handle, ev, known_trigger)
    out = DEFENSES.get("baerase").factory(badnets_handle, fmnist_split10.fit, [known_trigger], {"max_steps": 150}, 0)
    c_acc_after, asr_after = _measure(out.handle, ev, known_trigger)
    assert asr_after < 0.2
    assert c_acc_after > c_acc_before - 0.1, "the bounded ascent must not collapse the model"
    steps, fit_asr = out.stats["steps"], out.stats["fit_trigger_asr"]
    assert fit_asr[0][1] > 0.9 and fit_asr[-1][1] < 0.01 and steps < 150  # stopped on the ASR, not the budget


def _hurt_target_class(handle, target, fit, trigger):
    """An over-eager unlearning: the backdoor edited out, then the target class's logit pushed down."""
    module = DEFENSES.get("activation-edit").factory(handle, fit, [trigger], {}, 0).handle.copy_for_editing()
    with torch.no_grad():
        module.classifier[3].bias[target] -= 3.0
    return handle.derived(module)


def test_repair_does_nothing_when_no_class_fell(badnets_handle, fmnist_split, known_trigger):
    r, stats = repair(badnets_handle, badnets_handle, fmnist_split.fit, [known_trigger], [TARGET], FAST_REPAIR, seed=0)
    assert r is badnets_handle and stats["steps"] == 0 and stats["fallen_classes"] == []
    assert "nothing to repair" in stats["note"]


def test_repair_brings_back_the_target_class(badnets_handle, fmnist_split, known_trigger):
    edited = _hurt_target_class(badnets_handle, TARGET, fmnist_split.fit, known_trigger)
    ev = fmnist_split.eval
    per_class = lambda h: per_class_fit_accuracy(h, ev)[TARGET]  # noqa: E731
    assert per_class(edited) < per_class(badnets_handle) - 0.15
    params = RepairParams(min_steps=20, max_steps=100, batch_size=32, check_every=10)
    repaired, stats = repair(badnets_handle, edited, fmnist_split.fit, [known_trigger], [TARGET], params, seed=0)
    assert TARGET in stats["fallen_classes"] and stats["kept_step"] > 0
    assert per_class(repaired) > per_class(badnets_handle) - 0.1, "target class not brought back"
    # the trigger's label is not taught back: repair trains stamped copies on their true labels
    assert _measure(repaired, ev, known_trigger)[1] <= _measure(badnets_handle, ev, known_trigger)[1]


def test_one_sample_per_class_defends_and_skips_repair(badnets_handle, fmnist, known_trigger):
    from auditor.data import split

    sp = split(fmnist, 1, 0, 10)
    out = DEFENSES.get("activation-edit").factory(badnets_handle, sp.fit, [known_trigger], {}, 0)
    repaired, stats = repair(badnets_handle, out.handle, sp.fit, [known_trigger], [TARGET], FAST_REPAIR, seed=0)
    assert repaired is out.handle and stats["check_samples"] == 0 and "skipped" in stats["note"]
    assert _measure(repaired, sp.eval, known_trigger)[1] < 0.5


def test_activation_edit_auto_layer_follows_the_trigger_source(badnets_handle, fmnist_split10, known_trigger):
    from dataclasses import replace as dc_replace

    recovered = dc_replace(known_trigger, source="recovered")
    edit = DEFENSES.get("activation-edit").factory
    assert edit(badnets_handle, fmnist_split10.fit, [recovered], {}, 0).stats["layer"] == "classifier.3"
    both = edit(badnets_handle, fmnist_split10.fit, [known_trigger, recovered], {}, 0)
    assert both.stats["layer"] == "classifier.1, classifier.3" and len(both.stats["edits"]) == 2
    # views=auto: shifted/mirrored copies for the known trigger's edit only
    assert [e["views"] for e in both.stats["edits"]] == [16, 0]
    assert edit(badnets_handle, fmnist_split10.fit, [recovered], {"views": 2}, 0).stats["edits"][0]["views"] == 2
    with pytest.raises(ValueError, match="views"):
        edit(badnets_handle, fmnist_split10.fit, [recovered], {"views": -1}, 0)
    assert edit(badnets_handle, fmnist_split10.fit, [recovered], {"layer": 0}, 0).stats["layer"] == "classifier.1"
    # a recovered warp is edited where a known trigger is (first layer), without views
    from auditor.triggers import Trigger, warp_grid

    warp = Trigger(None, None, TARGET, "recovered", grid=warp_grid(28, 28, 4, 1.0, 0), kind="warp")
    warp_edit = edit(badnets_handle, fmnist_split10.fit, [warp, recovered], {}, 0)
    assert warp_edit.stats["layer"] == "classifier.1, classifier.3"
    assert [e["views"] for e in warp_edit.stats["edits"]] == [0, 0]
    with pytest.raises(AuditorInputError, match="no trigger"):
        edit(badnets_handle, fmnist_split10.fit, [], {}, 0)


def test_each_defense_picks_its_stand_in_for_a_generative_flag(badnets_handle, fmnist_split10, known_trigger):
    # a class flagged by the generative scan comes with sampled patches AND its NC mask/pattern:
    # activation-edit unlearns the NC one (or the patches with sampled=true), baerase the patches
    from dataclasses import replace as dc_replace

    from auditor.defenses.base import drop_alternatives

    nc = dc_replace(known_trigger, source="recovered")  # kind "patch", like an NC mask/pattern
    sampled = [dc_replace(known_trigger, source="recovered", kind="generative") for _ in range(3)]
    other = dc_replace(known_trigger, source="recovered", kind="generative", target=(TARGET + 1) % 10)
    given = sampled + [other, nc, known_trigger]
    ids = lambda triggers: [id(t) for t in triggers]  # noqa: E731  (Trigger holds tensors: compare identities)
    assert ids(drop_alternatives(given, drop="generative", keep="patch")) == ids([other, nc, known_trigger])
    assert ids(drop_alternatives(given, drop="patch", keep="generative")) == ids(sampled + [other, known_trigger])
    edit = DEFENSES.get("activation-edit").factory
    default = edit(badnets_handle, fmnist_split10.fit, sampled + [nc], {}, 0)
    assert default.stats["edits"][0]["triggers"] == 1
    assert edit(badnets_handle, fmnist_split10.fit, sampled + [nc], {"sampled": True}, 0).stats["edits"][0]["triggers"] == 3
    with pytest.raises(ValueError, match="sampled"):
        edit(badnets_handle, fmnist_split10.fit, sampled + [nc], {"sampled": "maybe"}, 0)


def _lower_target_logit(handle, target, by):
    module = handle.copy_for_editing()
    with torch.no_grad():
        module.classifier[3].bias[target] -= by
    return handle.derived(module)


def test_boundary_drop_reads_a_lowered_target_logit_and_the_shift_gives_it_back(badnets_handle, fmnist_split):
    from auditor.defenses.recalibrate import boundary_drop, shift_target_logits

    x = fmnist_split.eval.x[:300]
    original = badnets_handle.logits(x, backend="torch")
    lowered = _lower_target_logit(badnets_handle, TARGET, 0.5)
    assert boundary_drop(original, lowered.logits(x, backend="torch"), TARGET) == pytest.approx(0.5, abs=1e-4)
    assert boundary_drop(original, original, TARGET) == pytest.approx(0.0, abs=1e-6)
    assert boundary_drop(original[:0], original[:0], TARGET) is None
    # another class's bias moves class 7's margin only through the log-sum-exp, much less
    other = _lower_target_logit(badnets_handle, 3, 0.5).logits(x, backend="torch")
    assert abs(boundary_drop(original, other, TARGET)) < 0.2
    restored = shift_target_logits(lowered, {TARGET: 0.5})
    assert torch.allclose(restored.logits(x, backend="torch"), badnets_handle.logits(x, backend="torch"), atol=1e-5)
    assert torch.allclose(lowered.logits(x, backend="torch")[:, TARGET] + 0.5, restored.logits(x, backend="torch")[:, TARGET],
                          atol=1e-5)


def test_no_shift_where_the_output_is_not_a_linear_layer(badnets_handle):
    from auditor.defenses.recalibrate import output_layer, shift_target_logits

    assert output_layer(badnets_handle, badnets_handle.copy_for_editing()) is not None
    with_softmax = badnets_handle.derived(torch.nn.Sequential(badnets_handle.copy_for_editing(), torch.nn.Softmax(1)))
    assert output_layer(with_softmax, with_softmax.copy_for_editing()) is None
    assert shift_target_logits(with_softmax, {TARGET: 0.5}) is None


def test_activation_edit_recalibrates_only_the_target_logit(badnets_handle, fmnist_split10, known_trigger):
    edit = DEFENSES.get("activation-edit").factory
    plain = edit(badnets_handle, fmnist_split10.fit, [known_trigger], {"recalibrate": False}, 0)
    recal = edit(badnets_handle, fmnist_split10.fit, [known_trigger], {}, 0)
    assert "recalibration" not in plain.stats
    info = recal.stats["recalibration"]
    drops = info["fold_drops"][str(TARGET)]
    assert info["folds"] == 4 and set(info["shift"]) == {str(TARGET)}
    assert len(drops["near_boundary"]) == 4 and len(drops["of_the_class"]) == 4
    shift = info["shift"][str(TARGET)]
    assert shift == pytest.approx((sum(drops["near_boundary"]) + sum(drops["of_the_class"])) / 8, abs=1e-3)
    x = fmnist_split10.eval.x[:200]
    delta = recal.handle.logits(x, backend="torch") - plain.handle.logits(x, backend="torch")
    assert torch.allclose(delta[:, TARGET], torch.full((200,), shift), atol=1e-3)
    others = [c for c in range(10) if c != TARGET]
    assert delta[:, others].abs().max() < 1e-4


def test_repair_keeps_a_target_margin_it_gave_back(badnets_handle, fmnist_split, known_trigger):
    # repair raised the hurt target class: its own recalibration must not take that back
    edited = _hurt_target_class(badnets_handle, TARGET, fmnist_split.fit, known_trigger)
    params = RepairParams(min_steps=20, max_steps=60, batch_size=32, check_every=10, recalibrate=True)
    _, stats = repair(badnets_handle, edited, fmnist_split.fit, [known_trigger], [TARGET], params, seed=0)
    assert stats["kept_step"] > 0 and "shift" not in stats["recalibration"]


def test_recalibration_auto_is_for_known_triggers_and_a_recalibrated_edit(known_trigger):
    from dataclasses import replace

    from auditor.defenses.recalibrate import classes_to_recalibrate, classes_to_recalibrate_in_repair

    recovered_7 = replace(known_trigger, source="recovered")
    recovered_8 = replace(known_trigger, source="recovered", target=8)
    everything = [known_trigger, recovered_8]
    # auto: the known trigger's class only, not a class the scan flagged
    assert classes_to_recalibrate("auto", everything) == [7]
    assert classes_to_recalibrate("auto", [known_trigger, recovered_7]) == [] and classes_to_recalibrate("auto", []) == []
    assert classes_to_recalibrate(True, everything) == [7, 8] and classes_to_recalibrate(False, [known_trigger]) == []
    assert classes_to_recalibrate(True, [replace(known_trigger, target=None)]) == []  # all-to-all: no single target
    edit_stats = {"recalibration": {"shift": {"7": 0.3}}}
    assert classes_to_recalibrate_in_repair("auto", everything, edit_stats) == [7]
    # after a defense that did not recalibrate (nc-unlearn, finetune) the repair's unlearning is the point
    assert classes_to_recalibrate_in_repair("auto", [known_trigger], {"steps": 40}) == []
    assert classes_to_recalibrate_in_repair("auto", [known_trigger], None) == []
    assert classes_to_recalibrate_in_repair(True, [known_trigger], None) == [7]


def test_recalibrate_setting_is_checked(badnets_handle, fmnist_split10, known_trigger):
    with pytest.raises(ValueError, match="recalibrate"):
        DEFENSES.get("activation-edit").factory(badnets_handle, fmnist_split10.fit, [known_trigger], {"recalibrate": "sometimes"}, 0)
    with pytest.raises(ValueError, match="recalibrate"):
        RepairParams(recalibrate="sometimes")
