"""How scans run their optimisation passes: measured per model, float32 predictions always, and the
model left exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from auditor.compute import ComputeMode, choose_mode
from auditor.model import ModelHandle, ModelInfo


def _handle(module, shape=(1, 28, 28)):
    info = ModelInfo(path="m", sha256="0", format="state_dict", size_bytes=0, param_count=0, input_shape=shape, num_classes=10,
                     mean=(0.0,) * shape[0], std=(1.0,) * shape[0], arch="test")
    return ModelHandle(module, info, device=torch.device("cpu"))


def test_each_request_and_the_hardware_rule(badnets_handle, monkeypatch):
    import auditor.compute as compute

    exact = choose_mode(badnets_handle, "float32", batch_size=8, repeats=1)
    assert exact.name == "float32" and set(exact.measured) == {"float32"} and exact.images_per_second > 0
    reduced = choose_mode(badnets_handle, "bfloat16", batch_size=8, repeats=1)
    assert reduced.name == "bfloat16+channels-last" and set(reduced.measured) == {"float32", "bfloat16+channels-last"}
    # auto follows the hardware, never a timing race: the same command on the same machine runs the same way
    for native, name in ((True, "bfloat16+channels-last"), (False, "float32")):
        monkeypatch.setattr(compute, "native_bfloat16", lambda device, native=native: native)
        auto = choose_mode(badnets_handle, "auto", batch_size=8, repeats=1)
        assert auto.name == name and auto.native_bfloat16 is native and auto.images_per_second == auto.measured[name]
        assert auto.summary()["precision"] == name.split("+")[0] and auto.summary()["requested"] == "auto"
    with pytest.raises(ValueError, match="scan precision"):
        choose_mode(badnets_handle, "float16")


def test_predictions_stay_float32_and_the_model_is_restored(badnets_handle):
    x = torch.rand(16, *badnets_handle.input_shape)
    before = badnets_handle.logits(x, backend="torch")
    state = {k: v.clone() for k, v in badnets_handle.module.state_dict().items()}
    with badnets_handle.optimising(ComputeMode(torch.bfloat16, channels_last=True)):
        grad_logits = badnets_handle.forward(x)
        inside = badnets_handle.logits(x, backend="torch")
        assert badnets_handle.module.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert grad_logits.dtype == torch.float32
    # bfloat16 rounds: the optimisation's logits differ a little, the predictions' not at all beyond float noise
    assert 0 < (grad_logits - before).abs().max() < 0.5
    assert torch.allclose(inside, before, atol=1e-4)
    after = badnets_handle.logits(x, backend="torch")
    assert torch.equal(after, before)
    assert all(v.is_contiguous() for v in badnets_handle.module.state_dict().values())
    assert all(torch.equal(state[k], v) for k, v in badnets_handle.module.state_dict().items())
    assert badnets_handle._autocast is None and not badnets_handle._channels_last


class _NoBfloat16(nn.Module):
    """Stands for a converted op with no bfloat16 kernel."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("no bfloat16 kernel")
        return self.linear(x.flatten(1))


def test_a_model_that_cannot_run_reduced_falls_back_to_float32():
    handle = _handle(_NoBfloat16())
    mode = choose_mode(handle, "bfloat16", batch_size=4, repeats=1)
    assert mode.name == "float32" and mode.measured["bfloat16+channels-last"] is None and mode.measured["float32"] > 0
    assert handle._autocast is None  # the failed measurement left nothing switched on


def test_the_audit_records_how_its_scans_ran(tmp_path, monkeypatch):
    """--scan-precision bfloat16 end to end: the scans run in it, the JSON says so (and the config), predictions
    and the known-trigger check read float32; a wrong value is a usage error."""
    from test_cli import _assert_input_error, invoke

    from conftest import BADNETS_PT, BADNETS_TRIGGER, CHEAP_SCAN

    result = invoke(tmp_path, monkeypatch, BADNETS_PT, "--trigger", BADNETS_TRIGGER, "--defense", "none", *CHEAP_SCAN,
                    "--scan-precision", "bfloat16", quiet=False)
    assert result.exit_code == 1, result.output
    compute = result.data["scan"]["compute"]
    assert compute["precision"] == "bfloat16" and compute["channels_last"] and compute["requested"] == "bfloat16"
    assert compute["measured"]["float32"] > 0 and compute["images_per_second"] == compute["measured"]["bfloat16+channels-last"]
    assert result.data["config"]["scan_precision"] == "bfloat16"
    assert "scan compute: bfloat16+channels-last (--scan-precision bfloat16" in result.stderr
    assert result.data["metrics"]["before"]["asr"] > 0.99
    (tmp_path / "d").mkdir()
    default = invoke(tmp_path / "d", monkeypatch, BADNETS_PT, "--defense", "none", *CHEAP_SCAN)
    assert default.data["scan"]["compute"]["precision"] == "float32" and not default.data["scan"]["compute"]["channels_last"]
    bad = invoke(tmp_path, monkeypatch, BADNETS_PT, "--scan-precision", "float16")
    assert bad.exit_code == 2 and "float16" in bad.output
