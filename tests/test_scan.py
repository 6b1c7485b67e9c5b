"""Neural Cleanse: deterministic for a seed, leaves the model alone, finds the badnets target."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from auditor.registry import SCANS
from auditor.scans.neural_cleanse import NeuralCleanseParams, neural_cleanse

from conftest import TARGET


@pytest.fixture(scope="module")
def clean_scan(clean_handle, fmnist_split, fast_nc_params):
    return neural_cleanse(clean_handle, fmnist_split.fit.x, fmnist_split.eval.x, fmnist_split.eval.y, fast_nc_params)


def test_result_shapes_and_ranges(clean_scan, clean_handle):
    r = clean_scan
    k, (c, h, w) = clean_handle.num_classes, clean_handle.input_shape
    assert r.masks.shape == (k, 1, h, w) and r.patterns.shape == (k, c, h, w)
    assert r.masks.min() >= 0 and r.masks.max() <= 1 and r.patterns.min() >= 0 and r.patterns.max() <= 1
    assert len(r.norms) == len(r.anomaly_index) == len(r.converged) == len(r.steps) == len(r.recovered_asr) == k
    assert torch.allclose(r.masks.sum(dim=(1, 2, 3)), torch.tensor(r.norms), rtol=1e-4)
    assert all(1 <= s <= 150 for s in r.steps)
    assert all(0 <= a <= 1 for a in r.recovered_asr)
    assert r.fit_samples == 500
    summary = r.summary()
    assert summary["method"] == "neural-cleanse" and summary["params"]["max_steps"] == 150


def test_same_seed_same_norms(clean_scan, clean_handle, fmnist_split, fast_nc_params):
    again = neural_cleanse(clean_handle, fmnist_split.fit.x, fmnist_split.eval.x, fmnist_split.eval.y, fast_nc_params)
    assert again.norms == clean_scan.norms
    assert again.anomaly_index == clean_scan.anomaly_index
    assert torch.equal(again.masks, clean_scan.masks)
    other = neural_cleanse(clean_handle, fmnist_split.fit.x, params=replace(fast_nc_params, seed=1))
    assert other.norms != clean_scan.norms
    assert other.recovered_asr == []  # no evaluation samples given


def test_registered_scan_uses_the_audit_seed(clean_scan, clean_handle, fmnist_split, fast_nc_params):
    from dataclasses import asdict

    entry = SCANS.get("neural-cleanse")
    params = {k: v for k, v in asdict(fast_nc_params).items() if k != "seed"}
    via_registry = entry.factory(clean_handle, fmnist_split, params, 0)  # fit/eval from the split, seed 0
    assert via_registry.params.seed == 0
    assert via_registry.norms == clean_scan.norms
    assert via_registry.recovered_asr == clean_scan.recovered_asr


def test_scan_leaves_model_unchanged(badnets_handle, fmnist_split, fast_nc_params):
    module = badnets_handle.module
    params = list(module.parameters())
    original_flags = [p.requires_grad for p in params]
    # mixed flags: the scan must restore exactly these, not "all True"
    for i, p in enumerate(params):
        p.requires_grad_(i % 2 == 0)
    flags = [p.requires_grad for p in params]
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    try:
        neural_cleanse(badnets_handle, fmnist_split.fit.x[:100], params=replace(fast_nc_params, max_steps=30))
        assert [p.requires_grad for p in params] == flags
        for k, v in module.state_dict().items():
            assert torch.equal(v, state[k]), k
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in params)
        assert not module.training
    finally:
        for p, f in zip(params, original_flags):
            p.requires_grad_(f)


def test_bad_params_rejected():
    with pytest.raises(ValueError):
        NeuralCleanseParams(max_steps=0)
    with pytest.raises(ValueError):
        NeuralCleanseParams(success_threshold=1.5)


# The fast budget (150 steps, early-stop patience 20) stops every class after ~40 steps, before class
# 7's mask has shrunk to the trigger: the most anomalous class then varies with the seed (8 or 6 on
# seeds 0-3). Raised to 300 steps with patience 60 (batch 16), class 7 ranks first with an anomaly
# index above 2.6 on each of seeds 0-4 (the library default, 600 steps / patience 40 / batch 24,
# also ranks 7 first but costs more and its index dips to 1.5 on seed 1).
TARGET_BUDGET = NeuralCleanseParams(max_steps=300, early_stop_patience=60, batch_size=16, asr_eval_samples=200)


def test_badnets_onnx_target_is_most_anomalous(badnets_onnx_handle, fmnist_split):
    r = neural_cleanse(badnets_onnx_handle, fmnist_split.fit.x, fmnist_split.eval.x, fmnist_split.eval.y, TARGET_BUDGET)
    ranking = sorted(range(10), key=lambda c: -r.anomaly_index[c])
    assert ranking[0] == TARGET, f"anomaly index {[round(a, 2) for a in r.anomaly_index]}"
    assert r.anomaly_index[TARGET] > 2
    assert r.converged[TARGET]
    assert r.recovered_asr[TARGET] > 0.5  # the recovered trigger really is a trigger on held-out samples


def test_patch_box_finds_the_dense_window_despite_stray_pixels():
    from auditor.scans.generative import GenerativeParams, patch_box

    mask = torch.zeros(1, 28, 28)
    mask[0, 11:16, 1:6] = 0.8  # a 5x5 patch at the left edge ...
    mask[0, 1, 10] = mask[0, 26, 22] = mask[0, 10, 16] = 1.0  # ... and stray bright pixels far away
    size, top, left = patch_box(mask, GenerativeParams())
    assert size >= 4 and 11 <= top and top + size <= 16 and 1 <= left and left + size <= 6, (size, top, left)
    # an NC mask one pixel off a 3x3 corner trigger (rows/cols 24-26): a window of at least
    # min_patch = 5 still holds the whole trigger
    off = torch.zeros(1, 28, 28)
    off[0, 25:27, 25:27] = 1.0
    size, top, left = patch_box(off, GenerativeParams())
    assert size == 5 and top <= 24 and top + size >= 27 and left <= 24 and left + size >= 27, (size, top, left)
    assert patch_box(torch.zeros(1, 28, 28), GenerativeParams()) == (5, 11, 11)  # nothing: the centre


def test_generative_scan_recovers_the_badnets_target_deterministically(badnets_handle, fmnist_split10):
    from auditor.scans.generative import GenerativeParams, learn_distribution

    params = {"steps": 80, "asr_eval_samples": 200, "candidates": 2}  # NC at its default budget ranks 7 first
    state = {k: v.detach().clone() for k, v in badnets_handle.module.state_dict().items()}
    result = SCANS.get("generative").factory(badnets_handle, fmnist_split10, params, 0, None)
    for k, v in badnets_handle.module.state_dict().items():
        assert torch.equal(v, state[k]), k
    first = result.distributions[0]
    # the checkerboard sits at rows/columns 24-26; the window may sit one pixel off (pasting jitters by 1)
    assert first.target == TARGET and abs(first.top - 24) <= 1 and abs(first.left - 24) <= 1, first
    assert min(first.sample_asr) > 0.9, first.sample_asr
    assert len(first.triggers((1, 28, 28))) == len(first.sample_asr)
    split = fmnist_split10
    again = learn_distribution(badnets_handle, split.fit.x, split.eval.x, split.eval.y, TARGET, result.masks[TARGET],
                               GenerativeParams(**params, seed=0))
    assert torch.equal(again.patches, first.patches) and again.sample_asr == first.sample_asr
    # its warp search covers every class and finds no warp backdoor in a patch-backdoored model
    assert result.warp is not None and len(result.warp.asr) == 10 and max(result.warp.asr) < 0.5, result.warp.asr


def _frozen(handle, search):
    """Run a whole-class search as the generative scan does: with the model's parameters frozen."""
    from auditor.scans.neural_cleanse import _freeze, _restore

    flags = _freeze(handle.module)
    try:
        return search()
    finally:
        _restore(handle.module, flags)


def _warp(handle, split, seed=0):
    from auditor.scans.generative import GenerativeParams
    from auditor.scans.warp import warp_search

    p = GenerativeParams()
    return _frozen(handle, lambda: warp_search(
        handle, split.fit.x, split.eval.x, split.eval.y, strength=p.warp_strength, grid=p.warp_grid, steps=p.warp_steps,
        batch_size=p.warp_batch_size, lr=p.warp_lr, eval_samples=300, seed=seed))


def test_warp_search_finds_the_wanet_target_and_not_a_clean_class(load, clean_handle, fmnist_split10):
    from pathlib import Path

    wanet = load(Path(__file__).resolve().parents[1] / "fixtures" / "zoo" / "wanet_t3.pt")
    state = {k: v.detach().clone() for k, v in wanet.module.state_dict().items()}
    found = _warp(wanet, fmnist_split10)
    for k, v in wanet.module.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert max(range(10), key=lambda c: found.asr[c]) == 3 and found.asr[3] >= 0.8, found.asr
    assert sorted(found.asr)[-2] < 0.5, found.asr  # no other class comes near
    # the recovered warp moves pixels by at most the bound in each direction (grid units: s px = s * 2 / 27)
    from auditor.scans.generative import GenerativeParams
    from auditor.triggers import identity_grid

    bound = GenerativeParams().warp_strength
    assert (found.grids - identity_grid(28, 28)).abs().max() <= bound * 2 / 27 + 1e-5
    assert found.trigger(3).grid.shape == (28, 28, 2) and found.trigger(3).target == 3
    again = _warp(wanet, fmnist_split10)
    assert torch.equal(again.grids, found.grids) and again.asr == found.asr
    clean = _warp(clean_handle, fmnist_split10)
    assert max(clean.asr) < 0.5, clean.asr


def test_estimated_asr_uses_the_strongest_recovered_trigger():
    """Without --trigger the report's ASR comes from the flagged class's recovered triggers: the one
    that works best on the delivered model's fit samples, whatever its place in the list."""
    from auditor.config import AuditConfig
    from auditor.session import AuditSession
    from auditor.triggers import load_trigger

    from conftest import BADNETS_PT, BADNETS_TRIGGER

    session = AuditSession(AuditConfig(model=BADNETS_PT), progress=lambda m: None)
    session.prepare()
    real = load_trigger(BADNETS_TRIGGER, 1, 28, 28)
    blank = replace(real, mask=torch.zeros_like(real.mask), source="recovered")
    assert session.evaluation.strongest(session.handle, [blank, real, blank]) is real


def _blend(handle, split, seed=0):
    from auditor.scans.blend import blend_search
    from auditor.scans.generative import GenerativeParams

    p = GenerativeParams()
    return _frozen(handle, lambda: blend_search(
        handle, split.fit.x, split.eval.x, split.eval.y, steps=p.blend_steps, batch_size=p.blend_batch_size, lr=p.blend_lr,
        min_asr=p.blend_asr, eval_samples=200, seed=seed))


def test_blend_search_singles_out_the_blended_target_and_no_clean_class(load, clean_handle, fmnist_split10):
    from pathlib import Path

    from auditor.scans.base import ScanThresholds

    blended = load(Path(__file__).resolve().parents[1] / "fixtures" / "zoo" / "blended_t4.pt")
    state = {k: v.detach().clone() for k, v in blended.module.state_dict().items()}
    found = _blend(blended, fmnist_split10)
    for k, v in blended.module.state_dict().items():
        assert torch.equal(v, state[k]), k
    limit = ScanThresholds().max_blend_ratio
    assert found.hits(limit) == [4], found.summary()
    assert found.alphas[4] < 0.1 and found.ratio(4) < limit, found.summary()
    trigger = found.trigger(4)
    assert trigger.target == 4 and trigger.kind == "blend" and trigger.mask.shape == (1, 28, 28)
    assert 0 <= trigger.pattern.min() and trigger.pattern.max() <= 1
    # the trigger works at the rung it was measured at
    x = fmnist_split10.eval.x[fmnist_split10.eval.y != 4][:200]
    assert (blended.predict(trigger.apply(x), backend="torch") == 4).float().mean() >= 0.7
    again = _blend(blended, fmnist_split10)
    assert torch.equal(again.patterns, found.patterns) and again.alphas == found.alphas
    clean = _blend(clean_handle, fmnist_split10)
    assert clean.hits(limit) == [], clean.summary()
    assert all(r > limit for r in clean.summary()["ratio"] if r is not None), clean.summary()


def test_a_blend_ratio_above_the_flag_fails_only_when_maximum_margin_names_the_same_class():
    """The CIFAR-stem ResNet-18's face blend (ratio 0.46-0.48, MM-BD p 2e-5) is flagged; Bag on clean small CNNs
    (MM-BD p down to 2e-11 but blend ratio 0.649 or more) and a borderline class MM-BD does not name are not."""
    from auditor.scans.base import ScanThresholds
    from auditor.scans.blend import BlendSearch
    from auditor.scans.generative import GenerativeResult

    def result(alphas, margins, p):
        blend = BlendSearch(torch.zeros(len(alphas), 1, 2, 2), alphas, [[0.9]] * len(alphas), (0.1,), 0.8, 1, 0.0)
        r = GenerativeResult.__new__(GenerativeResult)
        r.blend, r.margins, r.distributions, r.warp, r.all_to_all = blend, margins, [], None, None
        r.extra = {"generative_params": {"margin_blend_ratio": 0.6, "margin_p": 0.001}}
        r.margin_top, r.margin_p = max(range(len(margins)), key=margins.__getitem__), p
        return r

    t = ScanThresholds()
    alphas = [0.12, 0.12, 0.07, 0.057, 0.094, None, 0.07, None, 0.09, None]
    face = result(alphas, [10.6, 24.9, 14.9, 49.2, 14.0, 26.2, 15.9, 16.5, 20.5, 18.4], 1.9e-5)
    assert t.max_blend_ratio < face.blend.ratio(3) <= 0.6 and face.blend_hits(t) == [3]
    assert "MM-BD p = 1.9e-05" in face.evidence(3, t, "3")
    weak = result(alphas, face.margins, 0.01)  # MM-BD not sure enough
    assert weak.blend_hits(t) == []
    other = result(alphas, [10.6, 24.9, 14.9, 14.0, 14.0, 26.2, 15.9, 16.5, 49.2, 18.4], 1e-9)  # names a class whose ratio is 0.72
    assert other.margin_top == 8 and other.blend.ratio(8) > 0.6 and other.blend_hits(t) == []
    flagged_anyway = result([0.02] + alphas[1:], face.margins, 0.5)  # a ratio under the flag needs no corroboration
    assert flagged_anyway.blend_hits(t) == [0]


def test_the_l1_weight_is_held_until_a_class_first_succeeds(load, fmnist_split10):
    """Lowered from the first step, the L1 weight reached a class's first success ~10x too weak to shrink the
    mask, and the early stop kept that first, large mask (on `blended_t4` two classes stopped at 2-4x the
    masks they reach once the weight is held). Same initialisation and batches in both runs."""
    from conftest import FIXTURES

    handle = load(FIXTURES / "zoo" / "blended_t4.pt")
    classes = [5, 7]
    held = neural_cleanse(handle, fmnist_split10.fit.x, params=NeuralCleanseParams(), classes=classes)
    lowered = neural_cleanse(handle, fmnist_split10.fit.x, params=NeuralCleanseParams(hold_cost_until_success=False),
                             classes=classes)
    assert all(held.converged) and all(lowered.converged)
    for a, b in zip(held.norms, lowered.norms):
        assert a < 0.7 * b, (held.norms, lowered.norms)
