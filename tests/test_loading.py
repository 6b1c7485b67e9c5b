"""auditor.loading.load_model: every supported format loads and runs; everything unsafe or malformed
is refused with an AuditorInputError (or UnsafeModelError) naming the file; input files are only read."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from auditor.errors import AuditorInputError, UnsafeModelError
from auditor.loading import LoadRequest, load_model
from auditor.zoo import small_cnn

from conftest import BADNETS_ONNX, BADNETS_PT, CLEAN_ONNX, CLEAN_PT, MODELS, file_state

SMALL = dict(arch="auditor.zoo:small_cnn", input_shape=(1, 28, 28))


def _load(path, **kwargs):
    return load_model(LoadRequest(path=Path(path), **kwargs))


def _refused(path, exc=AuditorInputError, match=None, **kwargs):
    """Loading `path` raises `exc`, with the file's name in the one-line message."""
    with pytest.raises(exc, match=match) as err:
        _load(path, **kwargs)
    message = str(err.value)
    assert Path(path).name in message, message
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return small_cnn().eval()


# ----------------------------------------------------------------------------- formats that load
def test_state_dict_fixture_with_metadata_sidecar(clean_handle):
    info = clean_handle.info
    assert info.format == "state_dict"
    assert info.arch == "auditor.zoo:small_cnn"  # from clean_cnn.json
    assert info.input_shape == (1, 28, 28) and info.num_classes == 10
    assert info.mean == (0.286,) and info.std == (0.353,)
    assert info.metadata["name"] == "clean_cnn"
    assert info.param_count == sum(p.numel() for p in clean_handle.module.parameters())
    assert len(info.sha256) == 64 and info.size_bytes == CLEAN_PT.stat().st_size
    assert info.notes == ()
    # the weights are the file's: compare with a plain weights_only load
    state = torch.load(CLEAN_PT, weights_only=True)
    for name, tensor in clean_handle.module.state_dict().items():
        assert torch.equal(tensor.cpu(), state[name])


def test_handle_normalises_pixels(clean_handle):
    x = torch.rand(3, 1, 28, 28)
    expected = clean_handle.module.cpu()((x - 0.286) / 0.353) if clean_handle.device.type == "cpu" else None
    got = clean_handle.logits(x)
    assert got.shape == (3, 10)
    if expected is not None:
        assert torch.allclose(got, expected.detach(), atol=1e-5)


def test_clean_fixture_is_accurate(clean_handle, fmnist):
    from auditor.metrics import accuracy

    assert accuracy(clean_handle.predict(fmnist.x), fmnist.y) > 0.85


def test_onnx_fixture_runs_on_onnxruntime_and_torch_agree(badnets_onnx_handle, fmnist):
    h = badnets_onnx_handle
    assert h.ort_session is not None
    assert h.info.format == "onnx" and h.info.arch == "onnx2torch" and h.info.opset is not None
    assert h.input_shape == (1, 28, 28) and h.num_classes == 10
    x = fmnist.x[:64]
    ort = h.logits(x, backend="onnxruntime")
    tch = h.logits(x, backend="torch")
    assert ort.shape == tch.shape == (64, 10)
    assert (ort - tch).abs().max().item() < 1e-4
    assert torch.equal(h.logits(x), ort)  # auto = onnxruntime when loaded


def test_onnx_and_state_dict_fixtures_agree(badnets_onnx_handle, badnets_handle, fmnist):
    x = fmnist.x[:64]
    assert (badnets_onnx_handle.logits(x) - badnets_handle.logits(x)).abs().max().item() < 1e-4


def test_safetensors(tmp_path, cnn):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(path))
    h = _load(path, **SMALL)
    assert h.info.format == "safetensors" and h.info.arch == "auditor.zoo:small_cnn"
    assert h.input_shape == (1, 28, 28) and h.num_classes == 10
    assert any("normalisation unknown" in n for n in h.info.notes)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(h.logits(x), cnn(x), atol=1e-5)


def test_torchscript(tmp_path, cnn):
    path = tmp_path / "scripted.pt"
    torch.jit.script(cnn).save(str(path))
    h = _load(path, input_shape=(1, 28, 28))
    assert h.info.format == "torchscript"
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(h.logits(x), cnn(x), atol=1e-5)


def test_torchvision_arch(tmp_path):
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "resnet.pt"
    torch.save(net.state_dict(), path)
    h = _load(path, arch="resnet18", arch_kwargs={"num_classes": 10}, input_shape=(3, 32, 32))
    assert h.info.arch == "resnet18" and h.num_classes == 10 and h.input_shape == (3, 32, 32)
    assert h.info.mean == (0.0, 0.0, 0.0)  # one default value expanded to the channels
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(h.logits(x), net(x), atol=1e-4)


def test_cli_arch_overrides_metadata_and_wrapped_state_dict(tmp_path, cnn):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in cnn.state_dict().items()}, "epoch": 3}, path)
    h = _load(path, **SMALL)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(h.logits(x), cnn(x), atol=1e-5)


def test_state_dict_without_arch_asks_for_it(tmp_path, cnn):
    path = tmp_path / "weights.pt"
    torch.save(cnn.state_dict(), path)
    _refused(path, match="--arch", input_shape=(1, 28, 28))


def test_missing_input_size_asks_for_it(tmp_path, cnn):
    path = tmp_path / "weights.pt"
    torch.save(cnn.state_dict(), path)
    _refused(path, match="--input-size", arch="auditor.zoo:small_cnn")


# ----------------------------------------------------------------------------- refusals: pickles
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_full_model_refused(tmp_path, cnn):
    path = tmp_path / "full_model.pt"
    torch.save(cnn, path)
    message = _refused(path, UnsafeModelError, match="SmallCNN", **SMALL)
    assert "state_dict" in message


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_malicious_reduce_never_runs(tmp_path, container):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    if container == "torch-zip":
        torch.save({"weight": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"weight": _Payload(marker)}, protocol=2))
    before = file_state(path)
    _refused(path, UnsafeModelError, match="system", **SMALL)
    assert not marker.exists(), "loading executed pickle code"
    assert file_state(path) == before


def test_nan_weights_refused(tmp_path, cnn):
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    state["classifier.1.weight"][3, 5] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    _refused(path, match="classifier.1.weight.*NaN", **SMALL)


def test_inf_weights_refused_safetensors(tmp_path, cnn):
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in cnn.state_dict().items()}
    state["features.0.bias"][0] = float("inf")
    path = tmp_path / "inf.safetensors"
    save_file(state, str(path))
    _refused(path, match="Inf", **SMALL)


def test_missing_key_refused(tmp_path, cnn):
    state = dict(cnn.state_dict())
    del state["classifier.3.bias"]
    path = tmp_path / "missing.pt"
    torch.save(state, path)
    _refused(path, match="missing 1 keys.*classifier.3.bias", **SMALL)


def test_misshaped_key_refused(tmp_path, cnn):
    state = dict(cnn.state_dict())
    state["classifier.3.weight"] = torch.zeros(11, 128)
    path = tmp_path / "misshaped.pt"
    torch.save(state, path)
    _refused(path, match="misshaped.*classifier.3.weight", **SMALL)


def test_unexpected_key_refused(tmp_path, cnn):
    state = dict(cnn.state_dict())
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "extra.pt"
    torch.save(state, path)
    _refused(path, match="unexpected", **SMALL)


def test_non_tensor_state_dict_refused(tmp_path):
    path = tmp_path / "notensor.pt"
    torch.save({"a": 1}, path)
    _refused(path, match="not a named tensor", **SMALL)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file_refused(tmp_path, keep):
    raw = CLEAN_PT.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(raw[: int(len(raw) * keep)])
    _refused(path, **SMALL)


def test_truncated_onnx_refused(tmp_path):
    raw = CLEAN_ONNX.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(raw[: len(raw) // 2])
    _refused(path)


def test_zero_byte_file_refused(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    _refused(path, match="empty", **SMALL)


def test_missing_file_refused(tmp_path):
    _refused(tmp_path / "nowhere.pt", match="no such file", **SMALL)


def test_garbage_file_refused(tmp_path):
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\xff\xfe hello world" * 10)
    _refused(path, **SMALL)


def test_file_size_limit(tmp_path):
    _refused(CLEAN_PT, match="max-file-bytes", max_file_bytes=1000)


# ----------------------------------------------------------------------------- refusals: metadata
def _copy_with_metadata(tmp_path, arch_callable, marker=None):
    model = tmp_path / "vendor.pt"
    shutil.copy(BADNETS_PT, model)
    meta = json.loads((MODELS / "badnets_cnn.json").read_text())
    meta["arch"] = {"callable": arch_callable, "kwargs": {"command": f"touch {marker}"} if marker else {}}
    (tmp_path / "vendor.json").write_text(json.dumps(meta))
    return model


def test_metadata_cannot_choose_arbitrary_code(tmp_path):
    marker = tmp_path / "MARKER"
    model = _copy_with_metadata(tmp_path, "os:system", marker)
    message = _refused(model, UnsafeModelError, match="os:system")
    assert not marker.exists()
    assert "vendor.json" in message  # names the metadata file the architecture came from


@pytest.mark.parametrize("arch", ["subprocess:Popen", "builtins:exec", "auditor.zoo.evil:x", "tests.conftest:run_auditor"])
def test_metadata_only_trusts_the_zoo(tmp_path, arch):
    model = _copy_with_metadata(tmp_path, arch)
    _refused(model, UnsafeModelError)


def test_cli_arch_is_trusted_over_metadata(tmp_path):
    model = _copy_with_metadata(tmp_path, "os:system", tmp_path / "MARKER")
    h = _load(model, arch="auditor.zoo:small_cnn")
    assert h.info.arch == "auditor.zoo:small_cnn" and h.num_classes == 10
    assert not (tmp_path / "MARKER").exists()


def test_metadata_class_count_mismatch(tmp_path):
    model = tmp_path / "vendor.pt"
    shutil.copy(CLEAN_PT, model)
    meta = json.loads((MODELS / "clean_cnn.json").read_text())
    meta["num_classes"] = 12
    (tmp_path / "vendor.json").write_text(json.dumps(meta))
    _refused(model, match="12 classes")


def test_non_auditor_sidecar_is_ignored(tmp_path, cnn):
    model = tmp_path / "w.pt"
    torch.save(cnn.state_dict(), model)
    (tmp_path / "w.json").write_text(json.dumps({"arch": {"callable": "os:system"}}))
    h = _load(model, **SMALL)
    assert h.info.metadata == {}


# ----------------------------------------------------------------------------- ONNX graphs
def _tiny_graph(opset=20, custom_domain=None, seed=0):
    """Conv -> ReduceMean(axes input [2, 3]) -> Gemm: N x 1 x 8 x 8 -> N x 3."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "G"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "C"),
    ]
    last = (helper.make_node("Gemm", ["r", "G", "C"], ["y"]) if custom_domain is None
            else helper.make_node("Magic", ["r"], ["y"], domain=custom_domain))
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c", "axes"], ["r"], keepdims=0),
        last,
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(custom_domain, 1)] if custom_domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def test_onnx_opset20_reduce_mean_18_converts(tmp_path):
    model = _tiny_graph()
    onnx.checker.check_model(model)
    path = tmp_path / "reduce.onnx"
    onnx.save(model, path)
    h = _load(path)
    assert h.info.opset == 20 and h.input_shape == (1, 8, 8) and h.num_classes == 3
    assert any(type(m).__name__ == "OnnxReduceStaticAxes" for m in h.module.modules())
    x = torch.rand(6, 1, 8, 8)
    ort = h.logits(x, backend="onnxruntime")
    tch = h.logits(x, backend="torch")
    assert (ort - tch).abs().max().item() < 1e-4
    # and the torch conversion is differentiable (what the scans need)
    xg = x.clone().requires_grad_(True)
    h.forward(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_onnx_custom_domain_refused(tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save(_tiny_graph(custom_domain="com.evil"), path)
    _refused(path, match="com.evil")


def test_onnx_external_data_outside_folder_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    model = _tiny_graph()
    tensor = next(t for t in model.graph.initializer if t.name == "W")
    raw = numpy_helper.to_array(tensor).tobytes()
    (tmp_path / "x").write_bytes(raw)  # the file exists, but outside the model's folder
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../x"), ("offset", "0"), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "ext.onnx"
    onnx.save(model, path)
    _refused(path, UnsafeModelError, match=r"\.\./x")


def test_onnx_external_data_inside_folder_loads(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    model = _tiny_graph()
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    path = tmp_path / "ext_ok.onnx"
    onnx.save(model, path)
    assert (tmp_path / "weights.bin").is_file()
    h = _load(path)
    x = torch.rand(2, 1, 8, 8)
    assert (h.logits(x, backend="onnxruntime") - h.logits(x, backend="torch")).abs().max() < 1e-4


# ----------------------------------------------------------------------------- inputs stay untouched
def test_loading_never_modifies_the_input(tmp_path, cnn):
    from safetensors.torch import save_file

    paths = []
    for src in (CLEAN_PT, BADNETS_ONNX):
        dst = tmp_path / src.name
        shutil.copy2(src, dst)
        shutil.copy2(src.with_suffix(".json"), dst.with_suffix(".json"))
        paths.append(dst)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(st))
    ts = tmp_path / "ts.pt"
    torch.jit.script(cnn).save(str(ts))
    cases = [(paths[0], {}), (paths[1], {}), (st, SMALL), (ts, {"input_shape": (1, 28, 28)})]
    for path, kwargs in cases:
        states = {p: file_state(p) for p in tmp_path.iterdir()}
        h = _load(path, **kwargs)
        h.logits(torch.rand(2, *h.input_shape))
        assert {p: file_state(p) for p in tmp_path.iterdir()} == states, path
    # and the committed fixtures themselves
    for fixture in (CLEAN_PT, BADNETS_ONNX):
        before = file_state(fixture)
        _load(fixture)
        assert file_state(fixture) == before
