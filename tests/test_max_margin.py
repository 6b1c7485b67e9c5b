"""The max-margin scan (MM-BD): its null-distribution statistics, what it finds on the BadNets fixture,
its report section, and the whole pipeline with it as the scan."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import BADNETS_PT, BADNETS_TRIGGER, TARGET


def test_gamma_fit_recovers_shape_and_scale():
    from auditor.scans.max_margin import gamma_fit

    sample = torch.distributions.Gamma(torch.tensor(9.0), torch.tensor(1 / 3.5)).sample((4000,), )
    shape, scale = gamma_fit(sample)
    assert abs(shape - 9.0) < 0.8 and abs(scale - 3.5) < 0.35, (shape, scale)


def test_p_value_is_small_only_for_an_outlying_maximum():
    from auditor.scans.max_margin import max_of_null_p_value

    ordinary = [30.1, 28.4, 33.0, 31.2, 29.5, 35.3, 27.9, 32.2, 30.8, 34.0]
    top, p = max_of_null_p_value(ordinary)
    assert top == 5 and p > 0.1, p
    planted = ordinary[:3] + [72.0] + ordinary[4:]
    top, p = max_of_null_p_value(planted)
    assert top == 3 and p < 1e-4, p
    assert max_of_null_p_value([5.0, 5.0, 5.0])[1] == 1.0  # no spread among the others: no evidence either way


def test_max_margin_finds_the_badnets_target_and_a_working_trigger(badnets_handle, fmnist_split10):
    from auditor.scans.base import ScanThresholds
    from auditor.scans.max_margin import MaxMarginParams, max_margin_scan
    from auditor.metrics import attack_success_rate

    result = max_margin_scan(badnets_handle, fmnist_split10.fit.x, MaxMarginParams(nc_max_steps=300))
    assert result.ranking()[0] == TARGET and result.flagged(ScanThresholds()) == [TARGET], result.summary()
    # the Neural Cleanse trigger recovered for the flagged class is what the defense unlearns: it must work
    (trigger,) = result.triggers(TARGET, badnets_handle.input_shape, ScanThresholds())
    ev = fmnist_split10.eval
    assert attack_success_rate(badnets_handle.predict(trigger.apply(ev.x)), ev.y, TARGET) > 0.8
    assert result.flagged(ScanThresholds(max_margin_p_value=result.p_value / 2)) == []  # the threshold is the judge


def test_margin_section_draws_every_class_and_names_the_p_value():
    from auditor.report.html import _scan_section

    scan = {"method": "max-margin", "flagged_classes": [3], "margins": [30.0, 31.0, 29.0, 72.0], "top_class": 3,
            "p_value": 1e-6, "seconds": 2.0, "limits": "cannot see all-to-all"}
    html = _scan_section({"config": {"max_margin_p": 0.05}, "model": {"class_names": ["a", "b", "c", "d"]}, "scan": scan})
    assert html.count("<tr class=") == 4 and html.count("FLAGGED") == 1 and "3 (d)" in html
    assert "p = 1e-06" in html and "below 0.05" in html and "cannot see all-to-all" in html


@pytest.mark.slow
def test_pipeline_with_the_max_margin_scan(tmp_path, load, fmnist_split10):
    """`--scan max-margin` end to end with no trigger given: the target flagged, the trigger recovered
    for it unlearned, the repaired model scanned again by the same scan, and the REAL trigger's
    success rate on the repaired files down."""
    from auditor.metrics import attack_success_rate
    from auditor.triggers import load_trigger

    from conftest import run_auditor

    run = run_auditor(tmp_path, BADNETS_PT, "--scan", "max-margin", "--scan-param", "nc_max_steps=300")
    data = run.data
    assert data["scan"]["method"] == "max-margin" and data["scan"]["flagged_classes"] == [TARGET]
    assert data["defense"]["applied"] and data["defense"]["triggers"] == [
        {"target": str(TARGET), "source": "recovered", "kind": "patch", "count": 1}]
    assert data["scan"]["after"]["method"] == "max-margin" and len(data["scan"]["after"]["margins"]) == 10
    assert run.returncode == 1
    real = load_trigger(BADNETS_TRIGGER, 1, 28, 28)
    ev = fmnist_split10.eval
    before = attack_success_rate(load(BADNETS_PT).predict(real.apply(ev.x)), ev.y, TARGET)
    outputs = data["defense"]["outputs"]
    repaired = load(outputs["state_dict"], metadata_path=Path(outputs["metadata"]))
    after = attack_success_rate(repaired.predict(real.apply(ev.x)), ev.y, TARGET)
    assert before > 0.9 and after < 0.2, (before, after)
