"""auditor.triggers (spec -> mask/pattern, apply) and auditor.metrics on hand-made tensors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from auditor.errors import AuditorInputError
from auditor.metrics import accuracy, attack_success_rate, per_class_accuracy, trigger_flip_rate
from auditor.triggers import Trigger, load_trigger, trigger_from_spec

CHECKER = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]


# ----------------------------------------------------------------------------- patch
def test_patch_mask_and_pattern_positions():
    t = trigger_from_spec({"kind": "patch", "target": 7, "top": 24, "left": 24, "pattern": CHECKER}, 1, 28, 28)
    assert t.target == 7 and t.source == "known"
    assert t.mask.shape == (1, 28, 28) and t.pattern.shape == (1, 28, 28)
    expected_mask = torch.zeros(1, 28, 28)
    expected_mask[:, 24:27, 24:27] = 1
    assert torch.equal(t.mask, expected_mask)
    assert torch.equal(t.pattern[0, 24:27, 24:27], torch.tensor(CHECKER, dtype=torch.float32))
    assert t.pattern.sum() == 5


def test_patch_apply_changes_only_the_patch():
    t = trigger_from_spec({"kind": "patch", "target": 1, "top": 2, "left": 3, "pattern": CHECKER}, 3, 8, 10)
    x = torch.full((4, 3, 8, 10), 0.5)
    out = t.apply(x)
    assert out.shape == x.shape
    for c in range(3):
        assert torch.equal(out[:, c, 2:5, 3:6], torch.tensor(CHECKER, dtype=torch.float32).expand(4, 3, 3))
    untouched = torch.ones(8, 10, dtype=torch.bool)
    untouched[2:5, 3:6] = False
    assert torch.equal(out[:, :, untouched], x[:, :, untouched])
    assert torch.equal(x, torch.full((4, 3, 8, 10), 0.5)), "apply must not modify its input"


def test_patch_per_channel_pattern_and_clamp():
    pattern = [[[2.0, -1.0]], [[0.25, 0.5]]]  # 2 x 1 x 2, values outside [0, 1] are clamped
    t = trigger_from_spec({"kind": "patch", "target": 0, "top": 0, "left": 1, "pattern": pattern}, 2, 3, 3)
    assert t.pattern[:, 0, 1:3].tolist() == [[1.0, 0.0], [0.25, 0.5]]
    out = t.apply(torch.zeros(1, 2, 3, 3))
    assert out[0, :, 0, 1:3].tolist() == [[1.0, 0.0], [0.25, 0.5]]
    assert out[0, :, 1:].abs().sum() == 0


def test_fixture_trigger_file_matches_its_spec(known_trigger):
    assert known_trigger.target == 7
    assert torch.equal(known_trigger.mask[0].nonzero().min(0).values, torch.tensor([24, 24]))
    assert int(known_trigger.mask.sum()) == 9


# ----------------------------------------------------------------------------- blend
def test_blend_random_is_seeded_and_blends():
    spec = {"kind": "blend", "target": 2, "alpha": 0.2, "pattern": "random", "seed": 3}
    a, b = trigger_from_spec(spec, 1, 5, 5), trigger_from_spec(spec, 1, 5, 5)
    assert torch.equal(a.pattern, b.pattern)
    assert not torch.equal(a.pattern, trigger_from_spec({**spec, "seed": 4}, 1, 5, 5).pattern)
    assert torch.allclose(a.mask, torch.full((1, 5, 5), 0.2))
    x = torch.rand(3, 1, 5, 5)
    assert torch.allclose(a.apply(x), 0.8 * x + 0.2 * a.pattern)


def test_blend_explicit_pattern():
    pattern = torch.linspace(0, 1, 2 * 2 * 3).reshape(2, 2, 3)
    t = trigger_from_spec({"kind": "blend", "target": 0, "alpha": 0.5, "pattern": pattern.tolist()}, 2, 2, 3)
    assert torch.allclose(t.pattern, pattern)
    assert torch.allclose(t.apply(torch.zeros(1, 2, 2, 3)), 0.5 * pattern[None])


# ----------------------------------------------------------------------------- bad specs
BAD_SPECS = [
    {"kind": "patch", "target": 7, "top": 0, "left": 0},  # no pattern
    {"target": 7, "top": 0, "left": 0, "pattern": CHECKER},  # no kind
    {"kind": "patch", "top": 0, "left": 0, "pattern": CHECKER},  # no target
    {"kind": "patch", "target": "seven", "top": 0, "left": 0, "pattern": CHECKER},
    {"kind": "patch", "target": 7, "top": 26, "left": 0, "pattern": CHECKER},  # off the bottom
    {"kind": "patch", "target": 7, "top": 0, "left": -1, "pattern": CHECKER},
    {"kind": "patch", "target": 7, "top": 0, "left": 0, "pattern": [[[1.0]], [[1.0]]]},  # 2 channels, image has 1
    {"kind": "patch", "target": 7, "top": 0, "left": 0, "pattern": [[1, 0], [1]]},  # ragged
    {"kind": "blend", "target": 7, "alpha": 0.1, "pattern": [[0.5]]},  # wrong shape
    {"kind": "blend", "target": 7, "pattern": "random"},  # no alpha
    {"kind": "sticker", "target": 7},
]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_specs_raise_input_error(spec):
    with pytest.raises(AuditorInputError, match="trigger spec"):
        trigger_from_spec(spec, 1, 28, 28)


def test_load_trigger_malformed_json_names_file(tmp_path):
    path = tmp_path / "trig.json"
    path.write_text('{"kind": "patch", ')
    with pytest.raises(AuditorInputError, match="trig.json"):
        load_trigger(path, 1, 28, 28)
    with pytest.raises(AuditorInputError, match="nope.json"):
        load_trigger(tmp_path / "nope.json", 1, 28, 28)


def test_load_trigger_bad_spec_names_file(tmp_path):
    path = tmp_path / "trig.json"
    path.write_text(json.dumps({"kind": "patch", "target": 1, "top": 30, "left": 0, "pattern": CHECKER}))
    with pytest.raises(AuditorInputError, match="trig.json.*does not fit"):
        load_trigger(path, 1, 28, 28)


# ----------------------------------------------------------------------------- metrics
def test_accuracy():
    assert accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == pytest.approx(0.75)
    assert accuracy(torch.tensor([1, 1]), torch.tensor([0, 0])) == 0.0
    assert math.isnan(accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)))


def test_per_class_accuracy():
    pred = torch.tensor([0, 0, 1, 1, 1, 0])
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    out = per_class_accuracy(pred, labels, 3)
    assert out[0] == pytest.approx(2 / 3)
    assert out[1] == pytest.approx(2 / 3)
    assert out[2] is None  # no sample of class 2


def test_attack_success_rate_excludes_target_class():
    labels = torch.tensor([7, 7, 0, 1, 2, 3])
    pred = torch.tensor([7, 7, 7, 7, 2, 3])  # target-class samples "succeed" but must not count
    assert attack_success_rate(pred, labels, 7) == pytest.approx(0.5)
    assert attack_success_rate(torch.tensor([0, 0, 0, 0, 0, 0]), labels, 7) == 0.0
    pred_all = torch.full((6,), 7)
    assert attack_success_rate(pred_all, labels, 7) == 1.0
    assert math.isnan(attack_success_rate(torch.tensor([7, 7]), torch.tensor([7, 7]), 7))


def test_trigger_flip_rate_counts_only_what_the_trigger_moved():
    labels = torch.tensor([7, 0, 1, 2, 3, 4])
    clean = torch.tensor([7, 7, 1, 2, 3, 4])  # sample 1 goes to the target without any trigger
    triggered = torch.tensor([7, 7, 7, 2, 7, 4])
    assert attack_success_rate(triggered, labels, 7) == pytest.approx(3 / 5)
    assert attack_success_rate(clean, labels, 7) == pytest.approx(1 / 5)
    assert trigger_flip_rate(clean, triggered, labels, 7) == pytest.approx(2 / 5)
    per_sample = torch.tensor([1, 1, 2, 3, 4, 5])  # all-to-all: y -> y + 1
    moved = per_sample.clone()
    moved[0] = 0
    assert trigger_flip_rate(labels, moved, labels, per_sample) == pytest.approx(5 / 6)
    assert math.isnan(trigger_flip_rate(clean[:1], triggered[:1], labels[:1], 7))


def test_trigger_apply_follows_input_dtype():
    t = Trigger(torch.ones(1, 2, 2), torch.zeros(1, 2, 2), 0, "known")
    out = t.apply(torch.ones(1, 1, 2, 2, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.abs().sum() == 0
