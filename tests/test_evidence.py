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
