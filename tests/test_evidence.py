"""How the generative scan's evidence becomes flagged classes: sampled patches, a warp, and a Neural
Cleanse outlier strong enough on its own (the Blended ResNet-18 that passed the gate scored 8.6)."""

from __future__ import annotations

import torch

from auditor.scans.base import ScanThresholds
from auditor.scans.generative import GenerativeResult
from auditor.scans.neural_cleanse import NeuralCleanseParams


def _result(index: list[float], norms: list[float]) -> GenerativeResult:
    k = len(index)
    return GenerativeResult(masks=torch.zeros(k, 1, 4, 4), patterns=torch.zeros(k, 1, 4, 4), norms=norms,
                            anomaly_index=index, converged=[True] * k, steps=[1] * k, recovered_asr=[0.5] * k,
                            seconds=0.0, params=NeuralCleanseParams(), fit_samples=10, method="generative")


def test_a_strong_nc_outlier_flags_without_a_patch_or_warp():
    # the numbers: target 8.6, class 8 at 4.8, no sampled patch reaching the ASR flag
    result = _result([0.1, 8.6, 0.3, 0.0, -0.2, 0.4, 0.2, 0.1, 4.8, 0.0], [20, 2, 19, 21, 22, 18, 20, 20, 8, 21])
    thresholds = ScanThresholds()
    assert result.flagged(thresholds) == [1]
    message = result.evidence(1, thresholds, "1")
    assert "anomaly index 8.60 > 6" in message and "no sampled patch or warp" in message
    assert [t.kind for t in result.triggers(1, (1, 4, 4), thresholds)] == ["patch"]  # the NC mask is what is unlearned


def test_below_the_strong_threshold_the_nc_index_only_ranks():
    """Clean zoo models reached 5.5 (Fashion-MNIST's Bag); that alone must not flag."""
    result = _result([0.1, 5.5, 0.3, 0.0, -0.2, 0.4, 0.2, 0.1, 0.5, 0.0], [20, 6, 19, 21, 22, 18, 20, 20, 18, 21])
    assert result.flagged(ScanThresholds()) == []
    assert result.ranking()[0] == 1


def test_a_large_mask_is_not_an_outlier_however_high_its_index():
    result = _result([0.1, 9.0, 0.3, 0.0, -0.2, 0.4, 0.2, 0.1, 0.5, 0.0], [20, 15, 19, 21, 22, 18, 20, 20, 18, 21])
    assert result.flagged(ScanThresholds()) == []  # 15 is over max_mask_ratio x the median


def test_an_nc_outlier_below_the_flag_is_suspected_and_unlearned_once_the_model_fails():
    """The ResNet-18 Blended case: class 0's sampled patches reach the ASR flag (a naturally easy class),
    the true target ranks first by NC at 3.2 but under the NC-alone threshold: it is not a flag (clean
    models' Bag reaches 5.5) but the defense unlearns it with the flagged class."""
    from auditor.defense_stage import classes_to_unlearn, triggers_to_unlearn
    from auditor.scans.generative import CandidateDistribution

    result = _result([0.87, 0.0, -0.1, -0.2, 3.2, -1.0, 0.7, -4.5, 0.7, -1.1], [26, 38, 40, 40, 10, 56, 29, 234, 29, 59])
    patches = torch.zeros(16, 1, 2, 2)
    result.distributions = [CandidateDistribution(4, 2, 0, 0, patches, [0.74] * 16, 0.0, None, 0.0),
                            CandidateDistribution(0, 2, 0, 0, patches, [0.82] * 16, 0.0, None, 0.0)]
    thresholds = ScanThresholds()
    assert result.flagged(thresholds) == [0] and result.suspects(thresholds) == [4]
    assert classes_to_unlearn(result, thresholds) == [0, 4]
    unlearned = triggers_to_unlearn(None, result, (1, 4, 4), thresholds)
    assert {t.target for t in unlearned} == {0, 4}
    # a clean model is never failed on a suspect: with no flag there is nothing to unlearn and no verdict
    result.distributions[1].sample_asr = [0.5] * 16
    assert result.flagged(thresholds) == [] and result.suspects(thresholds) == [4]
    assert classes_to_unlearn(result, thresholds) == []  # and no flag, no suspect unlearned (e.g. a known trigger failed)


def test_the_failure_message_names_the_suspects():
    import importlib.util
    import warnings
    from pathlib import Path

    from auditor.scans.generative import CandidateDistribution

    # the check module as the plugin loads it (its `backdoor` mark is registered by the plugin, not here)
    spec = importlib.util.spec_from_file_location("check_backdoor", Path(__file__).resolve().parents[1] / "checks" / "check_backdoor.py")
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    _suspects_note = module._suspects_note

    result = _result([0.87, 0.0, -0.1, -0.2, 3.2, -1.0, 0.7, -4.5, 0.7, -1.1], [26, 38, 40, 40, 10, 56, 29, 234, 29, 59])
    result.distributions = [CandidateDistribution(0, 2, 0, 0, torch.zeros(16, 1, 2, 2), [0.82] * 16, 0.0, None, 0.0)]
    assert _suspects_note(result, ScanThresholds()) == (
        "; also suspected (unlearned by the defense, not flagged): class 4: its mask was L1 10.0 (anomaly index 3.20)")
    result.distributions[0].sample_asr = [0.5] * 16  # nothing flagged: no suspect named
    assert _suspects_note(result, ScanThresholds()) == ""
