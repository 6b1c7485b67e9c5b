"""`--data none`: an audit with no data. Inputs are synthesized from the model (auditor/synthesis.py),
accuracy and ASR are reported as not measured, DHBE is the defense, and the repaired model is
compared with the delivered one on the synthesized inputs."""

from __future__ import annotations

import pytest
import torch

from auditor.synthesis import SynthesisParams, synthesize, synthesized_split

from conftest import BADNETS_PT, file_state, run_auditor


def test_synthesized_inputs_are_images_of_their_class(load):
    handle = load(BADNETS_PT)
    weights = [p.detach().clone() for p in handle.module.parameters()]
    grads = [p.requires_grad for p in handle.module.parameters()]
    params = SynthesisParams(per_class=2, steps=40)
    data = synthesize(handle, params, 0)
    again = synthesize(handle, params, 0)
    assert torch.equal(data.x, again.x), "not deterministic for a seed"
    assert len(data) >= 10 and data.x.min() >= 0 and data.x.max() <= 1
    assert torch.equal(handle.predict(data.x), data.y)  # kept only when the model agrees
    assert all(torch.equal(a, b) for a, b in zip(weights, handle.module.parameters()))
    assert grads == [p.requires_grad for p in handle.module.parameters()]


def test_split_alternates_each_class(load):
    split = synthesized_split(load(BADNETS_PT), SynthesisParams(per_class=4, steps=40), 0)
    for c in split.fit.y.unique():
        assert abs(int((split.fit.y == c).sum()) - int((split.eval.y == c).sum())) <= 1


def test_no_data_chooses_what_runs_without_data():
    from pathlib import Path

    from auditor.config import build_config

    config = build_config({"model": Path("m.pt"), "data": "none"}, None)
    assert (config.data, config.defense, config.repair, config.scan) == ("none", "dhbe", False, "neural-cleanse")
    assert build_config({"model": Path("m.pt"), "data": "none", "scan": "generative"}, None).scan == "generative"


@pytest.mark.parametrize("extra, message", [
    (["--defense", "activation-edit"], "--data none: --defense activation-edit needs clean samples"),
    (["--repair"], "--data none: the repair step needs clean samples"),
])
def test_defenses_that_need_data_are_refused(tmp_path, extra, message):
    run = run_auditor(tmp_path, BADNETS_PT, "--data", "none", *extra)
    assert run.returncode == 2 and message in run.stderr
    assert len([line for line in run.stderr.strip().splitlines() if line.startswith("error")]) <= 1


@pytest.mark.slow
def test_backdoored_fixture_audited_without_data(tmp_path):
    before = file_state(BADNETS_PT)
    run = run_auditor(tmp_path, BADNETS_PT, "--data", "none", "--clean-samples", "5",
                      "--defense-param", "iterations=2", "--defense-param", "batch_size=16")
    data = run.data
    assert run.returncode == 1, run.stderr
    assert data["data"]["source"].startswith("synthesized") and data["config"]["defense"] == "dhbe"
    assert data["config"]["scan"] == "neural-cleanse"
    checks = {(c["stage"], c["name"]): c for c in data["checks"]}
    assert checks[("before", "check_trigger_scan")]["outcome"] == "failed"
    assert "class 7" in checks[("before", "check_trigger_scan")]["message"]
    for name in ("check_clean_accuracy", "check_known_trigger_asr", "check_accuracy_kept"):
        assert checks[("before", name)]["outcome"] == "skipped" and "--data none" in checks[("before", name)]["message"]
    assert checks[("after", "check_agreement_on_synthesized_inputs")]["outcome"] in ("passed", "failed")
    assert data["defense"]["samples_used"] == 0 and data["config"]["repair"] is False and data["defense"]["repair"] is None
    assert file_state(BADNETS_PT) == before
