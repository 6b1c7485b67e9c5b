"""Class scheduling (scans/schedule.py): on a many-class head the generative scan screens every class
briefly, searches the promising ones and a random reference in full, and compares with the reference."""

from __future__ import annotations

import json

import torch
from torch import nn

from auditor.model import ModelHandle, ModelInfo
from auditor.scans.base import ScanThresholds
from auditor.scans.generative import GenerativeParams, GenerativeScanParams, generative_scan
from auditor.scans.neural_cleanse import NeuralCleanseResult, anomaly_index

K, PLANTED = 48, 17


class PlantedHead(nn.Module):
    """Ordinary classes read a coarse, image-wide summary (a large mask is needed to reach one); class 17
    also rises with the brightness of the 2x2 top-left corner, which clean images keep dark (a white
    4-pixel mask reaches it)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3)
        self.fc = nn.Linear(16, K)

    def forward(self, x):
        logits = self.fc(self.pool(x).flatten(1))
        patch = x[:, 0, :2, :2].mean((1, 2))
        return logits + nn.functional.one_hot(torch.tensor(PLANTED), K) * (40 * (patch - 0.5))[:, None]


def _clean(n, gen):
    x = torch.rand(n, 1, 12, 12, generator=gen)
    x[:, :, :2, :2] *= 0.3
    return x


def _handle():
    torch.manual_seed(0)
    info = ModelInfo(path="m", sha256="0", format="state_dict", size_bytes=0, param_count=0, input_shape=(1, 12, 12), num_classes=K,
                     mean=(0.0,), std=(1.0,), arch="test")
    return ModelHandle(PlantedHead(), info, device=torch.device("cpu"))


def test_many_classes_are_scheduled_and_the_planted_class_found():
    handle = _handle()
    gen = torch.Generator().manual_seed(1)
    fit_x, eval_x = _clean(120, gen), _clean(300, gen)
    eval_y = handle.predict(eval_x, backend="torch")
    assert not (eval_y == PLANTED).any()
    p = GenerativeScanParams(seed=0, nc_max_steps=120, candidates=3, steps=60, samples=2, warp_steps=2, blend_steps=2,
                             margin_blend_ratio=0, all_to_all_steps=2, asr_eval_samples=100, blend_eval_samples=50,
                             nc_asr_eval_samples=50)
    result = generative_scan(handle, fit_x, eval_x, eval_y, p.nc, p.generative)
    schedule = result.schedule
    assert schedule is not None and PLANTED in schedule.shortlist
    full = schedule.full
    assert len(full) <= 8 + 4 + 16 < K
    assert not set(schedule.reference) & (set(schedule.shortlist) | set(schedule.logit_shortlist))
    # every per-class list still covers every class; what was not searched in full says so
    assert len(result.norms) == len(result.anomaly_index) == len(result.recovered_asr) == len(result.warp.asr) == K
    assert all((result.recovered_asr[c] is None) == (c not in full) for c in range(K))
    assert all((result.warp.asr[c] is None) == (c not in full) for c in range(K))
    assert all(result.blend.alphas[c] is None for c in range(K) if c not in full)
    # the index is measured against the reference classes alone
    # on the classes searched in full alone; a screened-out class has none (its short screen's mask is not comparable)
    expected = anomaly_index(torch.tensor(result.norms), schedule.reference)
    assert all((result.anomaly_index[c] is None) == (c not in full) for c in range(K))
    assert torch.allclose(torch.tensor([result.anomaly_index[c] for c in full]), expected[full])
    assert result.anomaly_index[PLANTED] > 6
    assert PLANTED in result.flagged(ScanThresholds())
    # only classes searched in full are ranked first, flagged or suspected, whatever the thresholds
    assert set(result.ranking()[:len(full)]) == set(full) and sorted(result.ranking()) == list(range(K))
    everything = ScanThresholds(anomaly_threshold=-1e9, max_mask_ratio=1e9)
    assert set(NeuralCleanseResult.flagged(result, everything)) == set(full)
    assert set(result.suspects(everything)) <= set(full)
    # patch candidates: the screen's first and the index's first; no all-to-all search on a scheduled head
    assert [d.target for d in result.distributions] == schedule.candidates(result.ranking(), 3) and result.all_to_all is None
    assert {schedule.screen_order[0], result.ranking()[0]} <= {d.target for d in result.distributions}
    summary = json.loads(json.dumps(result.summary()))
    assert summary["class_schedule"]["full_search"] == full and len(summary["class_schedule"]["screen_norms"]) == K


def test_few_classes_are_not_scheduled_and_the_cost_counts_the_screen():
    p = GenerativeParams()
    assert not p.schedule.applies(10) and not p.schedule.applies(32) and p.schedule.applies(33)
    scan = GenerativeScanParams(seed=0)
    # a 1,000-class head costs the screen plus the full search on at most 28 classes, not 100x a 10-class one
    assert scan.image_passes(1000) < 5 * scan.image_passes(10)
    assert scan.image_passes(1000) > scan.image_passes(28)
    never = GenerativeScanParams(seed=0, schedule_above=0)
    assert never.image_passes(1000) > 50 * scan.image_passes(10)
