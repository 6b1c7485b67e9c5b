"""Recovered patch triggers that work anywhere in the image get moved copies unlearned too
(auditor/defenses/anywhere.py); those that work only where they were found do not."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from auditor.defenses.anywhere import SHIFTS, moved, with_moved_copies
from auditor.model import ModelHandle, ModelInfo
from auditor.triggers import Trigger

CHECKER = ((torch.arange(4)[:, None] + torch.arange(4)[None]) % 2).float()


class _CheckerAnywhere(nn.Module):
    """A position-free backdoor built by hand: a convolution that matches a 4x4 checkerboard, max-pooled
    over the whole image, sends an image to class 3 wherever the checkerboard is; otherwise class 0."""

    def __init__(self):
        super().__init__()
        self.detect = nn.Conv2d(1, 1, 4, bias=False)
        with torch.no_grad():
            self.detect.weight.copy_((CHECKER * 2 - 1)[None, None])

    def forward(self, x):
        score = self.detect(x).amax(dim=(1, 2, 3)) - 7.0  # 8 on the checkerboard, well under 7 on anything else here
        logits = torch.zeros(len(x), 10, device=x.device)
        logits[:, 3] = score
        return logits


def _handle(module):
    info = ModelInfo(path="m", sha256="0", format="state_dict", size_bytes=0, param_count=0, input_shape=(1, 28, 28), num_classes=10,
                     mean=(0.0,), std=(1.0,), arch="test")
    return ModelHandle(module, info, device=torch.device("cpu"))


def _checker_trigger(top: int, left: int, source: str = "recovered", kind: str = "patch") -> Trigger:
    mask, pattern = torch.zeros(1, 28, 28), torch.zeros(1, 28, 28)
    mask[:, top:top + 4, left:left + 4] = 1
    pattern[:, top:top + 4, left:left + 4] = CHECKER
    return Trigger(mask, pattern, 3, source, kind=kind)


def test_moved_copies_keep_the_patch_and_stay_inside():
    t = _checker_trigger(20, 22)
    copies = moved(t, torch.Generator().manual_seed(0), 20)
    assert len(copies) == 20 and len({(int(c.mask[0].nonzero()[0, 0]), int(c.mask[0].nonzero()[0, 1])) for c in copies}) > 5
    for c in copies:
        rows, cols = c.mask[0].nonzero().T
        assert c.mask.sum() == 16 and int(rows.max() - rows.min()) == 3 and int(cols.max() - cols.min()) == 3  # not wrapped
        assert torch.equal(c.pattern[0][c.mask[0] > 0].reshape(4, 4), CHECKER) and c.target == 3
    # an image-wide mask (a blend) is not a patch: nothing to move
    blend = Trigger(torch.full((1, 28, 28), 0.2), torch.rand(1, 28, 28), 3, "recovered", kind="patch")
    assert moved(blend, torch.Generator().manual_seed(0), 4) == []


def test_a_trigger_that_works_anywhere_gets_moved_copies(fmnist_split10):
    handle = _handle(_CheckerAnywhere().eval())
    fit = fmnist_split10.fit
    # the NC-style mask reaches the class wherever it goes; a generator sample that lost a corner of the
    # pattern does not: the kind that moves best stands in for the trigger, the other is dropped
    broken = _checker_trigger(2, 2, kind="generative")
    broken.pattern[0, 2, 2] = 1 - broken.pattern[0, 2, 2]
    blend = Trigger(torch.full((1, 28, 28), 0.2), torch.rand(1, 28, 28), 3, "recovered", kind="blend")
    found = [_checker_trigger(2, 2), broken, blend]
    out, report = with_moved_copies(handle, fit, found, seed=0)
    assert out[:2] == [found[0], blend] and len(out) == 2 + SHIFTS
    assert report["3"]["added"] == SHIFTS and report["3"]["kind"] == "patch"
    assert report["3"]["moved_asr"]["patch"] > 0.9 and report["3"]["moved_asr"]["generative"] < 0.1
    # every copy is a real trigger for this model, somewhere else than the one found
    x = fit.x[fit.y != 3][:20]
    for t in out[2:]:
        assert t.kind == "patch" and (handle.predict(t.apply(x), backend="torch") == 3).all()
    assert any(not torch.equal(t.mask, found[0].mask) for t in out[2:])


def test_a_trigger_that_works_only_where_found_is_left_alone(badnets_handle, known_trigger, fmnist_split10):
    recovered = replace(known_trigger, source="recovered")
    out, report = with_moved_copies(badnets_handle, fmnist_split10.fit, [recovered], seed=0)
    assert out == [recovered] and report["7"]["added"] == 0 and report["7"]["moved_asr"]["patch"] < 0.2
    # a known trigger is the real one, at its real place: never moved
    out, report = with_moved_copies(badnets_handle, fmnist_split10.fit, [known_trigger], seed=0)
    assert out == [known_trigger] and report == {}


def test_the_audit_reports_the_test_and_moves_nothing_on_the_bundled_model(badnets_e2e):
    """The default audit (known trigger for class 7, plus whatever the scan flagged): every recovered
    patch trigger's class was tested; the bundled model's patches work only where they were planted."""
    defense = badnets_e2e.data["defense"]
    recovered = {t["target"] for t in defense["triggers"] if t["source"] == "recovered" and t["kind"] in ("patch", "generative")}
    anywhere = defense["stats"].get("anywhere", {})
    assert set(anywhere) == recovered
    assert all(v["added"] == 0 and max(v["moved_asr"].values()) < 0.5 for v in anywhere.values())
    if recovered:
        assert "only where found" in badnets_e2e.html_path.read_text()
