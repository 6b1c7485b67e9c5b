"""Every registered scan and defense keeps one contract; a new one joins with one module and one
registration, and these tests pick it up.

Scans: the ScanResult protocol (summary, ranking, flagged, triggers, evidence, describe_class,
pictures), the same result for the same seed, the model and the data left untouched, the steps it
was given honoured, parameters validated before any work. Defenses: a NEW handle (the input's
weights untouched), the same result for the same seed, parameters validated before any work.
A toy scan and a toy defense are registered below exactly as a contributor would, to show it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest
import torch

from auditor import defenses, scans  # noqa: F401  (registers the built-in entries)
from auditor.config import AuditConfig
from auditor.defenses.base import DefenseOutcome
from auditor.errors import AuditorInputError
from auditor.registry import DEFENSES, SCANS
from auditor.runner import validate_names
from auditor.scans.base import ScanThresholds
from auditor.scans.neural_cleanse import NeuralCleanseResult, anomaly_index

from conftest import CLEAN_PT


# ----------------------------------------------------------------------------- the toy entries
@dataclass(frozen=True)
class BrightestPatchParams:
    size: int = 3

    def __post_init__(self):
        if self.size < 1:
            raise ValueError("brightest-patch: size must be at least 1")


@SCANS.register("toy-brightest-patch", "Toy: a white square in the corner, scored per class (contract demo)",
                params=asdict(BrightestPatchParams()), params_type=BrightestPatchParams, quick={}, invalid={"size": 0})
def brightest_patch(handle, split, params: dict, seed: int, progress=None):
    p = BrightestPatchParams(**params)
    c, h, w = handle.input_shape
    mask = torch.zeros(handle.num_classes, 1, h, w)
    mask[:, :, h - p.size:, w - p.size:] = 1
    pattern = torch.ones(handle.num_classes, c, h, w)
    x = (1 - mask[0]) * split.fit.x + mask[0] * pattern[0]
    share = torch.bincount(handle.predict(x), minlength=handle.num_classes).float() / len(x)
    norms = (1.0 - share + 1e-3).tolist()  # reuses NC's result type: smaller "mask" for a class the patch reaches
    return NeuralCleanseResult(masks=mask, patterns=pattern, norms=norms, anomaly_index=anomaly_index(torch.tensor(norms)).tolist(),
                               converged=[True] * handle.num_classes, steps=[1] * handle.num_classes, recovered_asr=share.tolist(),
                               seconds=0.0, params=p, fit_samples=len(split.fit), method="toy-brightest-patch")


@dataclass(frozen=True)
class ShrinkParams:
    factor: float = 0.99

    def __post_init__(self):
        if not 0 < self.factor <= 1:
            raise ValueError("shrink: factor must be in (0, 1]")


@DEFENSES.register("toy-shrink", "Toy: scale the last layer's weights (contract demo)", params=asdict(ShrinkParams()),
                   params_type=ShrinkParams, quick={}, invalid={"factor": 0})
def shrink(handle, fit, triggers, params: dict, seed: int, progress=None) -> DefenseOutcome:
    p = ShrinkParams(**params)
    edited = handle.derived(handle.copy_for_editing())
    last = [m for m in edited.module.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(p.factor)
    return DefenseOutcome(edited, "toy-shrink", 0.0, len(fit))


@pytest.fixture(scope="module", autouse=True)
def toys_unregistered_after():
    yield
    SCANS.unregister("toy-brightest-patch")
    DEFENSES.unregister("toy-shrink")


# ----------------------------------------------------------------------------- helpers
def _weights(handle) -> dict:
    return {k: v.detach().clone() for k, v in handle.module.state_dict().items()}


def _numbers(summary):
    """A summary without its timings, which differ run to run."""
    if isinstance(summary, dict):
        return {k: _numbers(v) for k, v in summary.items() if k != "seconds"}
    if isinstance(summary, list):
        return [_numbers(v) for v in summary]
    return summary


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def handle(load):
    return load(CLEAN_PT)


# ----------------------------------------------------------------------------- scans
@pytest.mark.parametrize("name", SCANS.names())
def test_scan_contract(name, handle, fmnist_split10):
    entry = SCANS.get(name)
    assert entry.params_type is not None, "declare a params class: values are validated before any work"
    weights, fit_x, eval_x = _weights(handle), fmnist_split10.fit.x.clone(), fmnist_split10.eval.x.clone()
    first = entry.factory(handle, fmnist_split10, dict(entry.quick), 3)
    again = entry.factory(handle, fmnist_split10, dict(entry.quick), 3)
    assert _same(weights, _weights(handle)) and all(p.requires_grad for p in handle.module.parameters()), "the model changed"
    assert torch.equal(fit_x, fmnist_split10.fit.x) and torch.equal(eval_x, fmnist_split10.eval.x), "the data changed"

    summary = first.summary()
    json.dumps(summary)  # JSON-ready
    assert _numbers(summary) == _numbers(again.summary()), "not deterministic for a seed"
    assert first.method == name and first.seconds >= 0
    ranking = first.ranking()
    assert sorted(ranking) == list(range(handle.num_classes))
    for thresholds in (ScanThresholds(), ScanThresholds(anomaly_threshold=-1e9, max_mask_ratio=1e9, min_generative_asr=0.0)):
        flagged = first.flagged(thresholds)
        assert set(flagged) <= set(range(handle.num_classes)) and len(set(flagged)) == len(flagged)
        for cls in flagged[:2]:
            triggers = first.triggers(cls, handle.input_shape, thresholds)
            assert triggers and all(t.target == cls and t.source == "recovered" for t in triggers)
            stamped = triggers[0].apply(fmnist_split10.eval.x[:4])
            assert stamped.shape == fmnist_split10.eval.x[:4].shape and 0 <= stamped.min() and stamped.max() <= 1
            assert str(cls) in first.evidence(cls, thresholds, str(cls))
    assert first.describe_class(ranking[0])
    groups = first.pictures(ranking[:1], ScanThresholds(), fmnist_split10.eval.x[0], str)
    assert groups and all(isinstance(title, str) and images for title, images in groups)


@pytest.mark.parametrize("name", SCANS.names())
def test_scan_parameters_are_checked_before_any_work(name):
    entry = SCANS.get(name)
    assert entry.invalid, "declare an invalid example so this test can show it is refused"
    with pytest.raises(AuditorInputError):
        validate_names(AuditConfig(model=CLEAN_PT, scan=name, scan_params=dict(entry.invalid)))
    with pytest.raises(AuditorInputError, match="unknown parameters no_such_knob"):
        validate_names(AuditConfig(model=CLEAN_PT, scan=name, scan_params={"no_such_knob": 1}))


def test_neural_cleanse_honours_its_step_budget(handle, fmnist_split10):
    result = SCANS.get("neural-cleanse").factory(handle, fmnist_split10, {"max_steps": 4, "asr_eval_samples": 20}, 0)
    assert max(result.steps) <= 4


def test_generative_scan_refuses_a_bad_ranking_pass_value_before_any_work():
    """The issue's example: the default scan took `nc_max_steps=-1` and failed minutes later."""
    with pytest.raises(AuditorInputError, match="max_steps"):
        validate_names(AuditConfig(model=CLEAN_PT, scan="generative", scan_params={"nc_max_steps": -1}))


# ----------------------------------------------------------------------------- defenses
@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_contract(name, handle, fmnist_split10, known_trigger):
    entry = DEFENSES.get(name)
    assert entry.params_type is not None
    weights = _weights(handle)
    first = entry.factory(handle, fmnist_split10.fit, [known_trigger], dict(entry.quick), 5)
    again = entry.factory(handle, fmnist_split10.fit, [known_trigger], dict(entry.quick), 5)
    assert _same(weights, _weights(handle)), "the input model changed"
    assert first.handle is not handle and first.handle.module is not handle.module
    assert _same(_weights(first.handle), _weights(again.handle)), "not deterministic for a seed"
    assert first.samples_used <= len(fmnist_split10.fit)
    json.dumps(first.stats, default=str)
    x = fmnist_split10.eval.x[:8]
    assert first.handle.logits(x).shape == handle.logits(x).shape


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_parameters_are_checked_before_any_work(name):
    entry = DEFENSES.get(name)
    assert entry.invalid
    with pytest.raises(AuditorInputError):
        validate_names(AuditConfig(model=CLEAN_PT, defense=name, defense_params=dict(entry.invalid)))
