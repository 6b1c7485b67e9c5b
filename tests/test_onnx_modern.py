"""ONNX as torch's default exporter writes it now (dynamo, opset 20, the example's batch fixed in the
graph), and the input size read from the user's own data."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from auditor.errors import AuditorInputError
from auditor.loading import LoadRequest, load_model
from auditor.loading.onnx_files import FixedBatch, _convert, free_fixed_batch, to_torch
from auditor.zoo import small_cnn

from conftest import CHEAP_SCAN, run_auditor


@pytest.fixture(scope="module")
def dynamo_cnn(tmp_path_factory):
    torch.manual_seed(0)
    net = small_cnn().eval()
    path = tmp_path_factory.mktemp("dynamo") / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path))  # the default exporter, batch 1
    return net, path


def test_default_exporter_output_loads_and_both_backends_agree(dynamo_cnn):
    net, path = dynamo_cnn
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # what made it refuse batches
    handle = load_model(LoadRequest(path, device="cpu"))
    assert any("its torch conversion runs any batch" in n for n in handle.info.notes)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        expected = net(x)
        assert torch.allclose(handle.logits(x, backend="onnxruntime"), expected, atol=1e-4)
        assert torch.allclose(handle.logits(x, backend="torch"), expected, atol=1e-4)


def test_default_exporter_output_audits_end_to_end(dynamo_cnn, tmp_path):
    _, path = dynamo_cnn
    run = run_auditor(tmp_path, path, "--defense", "none", *CHEAP_SCAN)
    checks = {c["name"]: c["outcome"] for c in run.data["checks"] if c["stage"] == "before"}
    assert checks["check_serialization_safety"] == "passed"
    assert checks["check_backend_agreement"] == "passed", run.data["checks"]
    assert run.returncode in (0, 1) and run.inputs_unchanged


def _graph(nodes, inputs, outputs, initializers=(), opset=20):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_fixed_batch_is_freed_only_where_the_reshape_starts_with_it():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])
    batch_first = numpy_helper.from_array(np.array([1, 6], dtype=np.int64), "s")
    model = _graph([helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1)], [x], [y], [batch_first])
    freed = free_fixed_batch(model)
    assert freed.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    node = freed.graph.node[0]
    shape = {t.name: numpy_helper.to_array(t) for t in freed.graph.initializer}[node.input[1]]
    assert shape.tolist() == [0, 6] and helper.get_attribute_value(node.attribute[0]) == 0
    module = _convert(freed, Path("m.onnx"))
    assert module(torch.rand(4, 2, 3)).shape == (4, 6)
    assert free_fixed_batch(freed) is None  # already free
    # with no onnxruntime to check the freed graph against, the conversion keeps the fixed batch
    fallback, note = to_torch(model, Path("m.onnx"))
    assert isinstance(fallback, FixedBatch) and "one image" not in note and "1 image(s) at a time" in note
    assert fallback(torch.rand(3, 2, 3)).shape == (3, 6)


def test_reshape_allowzero_keeps_a_literal_zero_dimension():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 0, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 5])
    shape = numpy_helper.from_array(np.array([0, 5], dtype=np.int64), "s")
    model = _graph([helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1)], [x], [y], [shape])
    module, _ = to_torch(model, Path("m.onnx"))
    assert module(torch.rand(2, 0, 3)).shape == (0, 5)


def test_a_newer_op_version_using_what_the_older_cannot_express_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])
    pads = numpy_helper.from_array(np.array([0, 1, 0, 1], dtype=np.int64), "p")
    model = _graph([helper.make_node("Pad", ["x", "p"], ["y"], mode="wrap")], [x], [y], [pads], opset=19)
    with pytest.raises(AuditorInputError, match="Pad-19 with attribute mode='wrap', which Pad-13 cannot express"):
        to_torch(model, Path("m.onnx"))


def test_gelu_of_opset_20_converts():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    for approximate in ("none", "tanh"):
        model = _graph([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)], [x], [y])
        t = torch.randn(3, 4)
        assert torch.allclose(to_torch(model, Path("m.onnx"))[0](t), torch.nn.functional.gelu(t, approximate=approximate))


def test_input_size_comes_from_the_users_data(tmp_path):
    """A weights-only file with no metadata: the --data images say 3x32x32 (it used to stop and ask)."""
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "weights.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    rng = np.random.default_rng(0)
    data = tmp_path / "rgb32.npz"
    np.savez(data, x=rng.integers(0, 255, (100, 32, 32, 3), dtype=np.uint8), y=np.repeat(np.arange(10), 10))
    run = run_auditor(tmp_path, weights, "--arch", "resnet18", "--arch-arg", "num_classes=10", "--data", str(data),
                      "--defense", "none", *CHEAP_SCAN)
    assert run.data["model"]["input_shape"] == [3, 32, 32], run.stderr
    assert any("taken from the --data images" in n for n in run.data["model"]["notes"])
    # without --data (the bundled set) nothing is guessed: the message still asks
    again = run_auditor(tmp_path / "again", weights, "--arch", "resnet18", "--arch-arg", "num_classes=10", *CHEAP_SCAN)
    assert again.returncode == 2 and "cannot tell the input size" in again.stderr


def test_a_graph_that_bakes_in_its_batch_runs_chunk_by_chunk(tmp_path):
    """Freeing the batch is checked against onnxruntime: a graph whose constants depend on the batch
    (here a Gather with batch-1 indices, as the exporter writes for ConvNeXt's LayerNorm2d) keeps it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    flat = numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")
    index = numpy_helper.from_array(np.array([[3, 2, 1, 0]], dtype=np.int64), "index")  # batch 1 baked in
    model = _graph([helper.make_node("Reshape", ["x", "flat"], ["f"]), helper.make_node("Gather", ["f", "index"], ["y"])],
                   [x], [y], [flat, index], opset=17)
    path = tmp_path / "baked.onnx"
    onnx.save(model, str(path))
    handle = load_model(LoadRequest(path, input_shape=(1, 2, 2), device="cpu"))
    assert isinstance(handle.module, FixedBatch) and any("1 image(s) at a time" in n for n in handle.info.notes)
    batch = torch.rand(3, 1, 2, 2)
    expected = batch.reshape(3, 4).flip(1)
    assert torch.allclose(handle.module(batch), expected)
    assert torch.allclose(handle.logits(batch, backend="onnxruntime"), handle.logits(batch, backend="torch"), atol=1e-6)


@pytest.mark.slow
def test_default_exporter_output_of_the_backdoored_fixture_is_repaired_with_parity(tmp_path):
    """The issue's 'done when': the committed dynamo export of the backdoored fixture (weights in
    .onnx.data; fixtures/export_dynamo.py) audits end to end like the legacy one, repaired ONNX out."""
    from conftest import BADNETS_TRIGGER, MODELS

    path = MODELS / "badnets_cnn.dynamo.onnx"
    run = run_auditor(tmp_path, path, "--trigger", str(BADNETS_TRIGGER))
    assert run.returncode == 1, run.stderr
    assert run.data["metrics"]["before"]["asr"] > 0.99 and run.data["metrics"]["after"]["asr"] < 0.05
    assert "onnx" in run.data["defense"]["outputs"]
    after = {c["name"]: c["outcome"] for c in run.data["checks"] if c["stage"] == "after"}
    assert after["check_backend_agreement"] == "passed" and after["check_known_trigger_asr"] == "passed"
    # the weights file is hashed as part of the audited model, not only the graph
    data_file = MODELS / "badnets_cnn.dynamo.onnx.data"
    external = [i for i in run.data["provenance"]["inputs"] if i["role"] == "model_external_data"]
    assert [(Path(i["path"]).name, i["sha256"]) for i in external] == [(data_file.name, hashlib.sha256(data_file.read_bytes()).hexdigest())]
    assert run.data["model"]["external_files"] == [str(data_file.resolve())]
