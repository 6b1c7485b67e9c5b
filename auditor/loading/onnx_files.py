"""ONNX: validated before it is parsed in full, run with onnxruntime, converted to torch for gradients.

Checks made before any external tensor is read: every external-data location stays inside the
model's folder and inside its file, and no tensor declares more bytes than the limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import AuditorInputError, UnsafeModelError

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"}
DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}


@dataclass(frozen=True)
class OnnxFacts:
    opset: int | None
    custom_domains: tuple[str, ...]
    external_files: tuple[str, ...]  # resolved paths of the external-data files, inside the model's folder
    input_shape: tuple  # dims of the first graph input; ints or symbolic names
    producer: str


def _external_entries(tensor) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def text(value) -> str:
    """protobuf hands back invalid UTF-8 in string fields as bytes."""
    return value if isinstance(value, str) else value.decode("utf-8", "backslashreplace")


def external_target(folder: Path, location) -> Path | None:
    """The file an external-data location names; None when it is empty, absolute, not text or leaves `folder`."""
    if not isinstance(location, str) or not location or "\x00" in location or os.path.isabs(location):
        return None
    target = (folder / location).resolve()
    return target if target.is_relative_to(folder) else None


def read_and_validate(path: Path, max_tensor_bytes: int):
    """Parse the graph (no external data), check it, then load external data. Returns (model, facts)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise AuditorInputError(f"{path}: not a readable ONNX model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    folder = path.resolve().parent
    external = set()
    for tensor in model_tensors(model):
        count = int(np.prod(tensor.dims, dtype=np.float64)) if len(tensor.dims) else 1
        declared = count * DTYPE_BYTES.get(tensor.data_type, 8)
        if declared > max_tensor_bytes:
            raise UnsafeModelError(
                f"{path}: tensor {tensor.name!r} declares {declared:,} bytes, over the limit of {max_tensor_bytes:,}"
            )
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = _external_entries(tensor)
            location = entries.get("location", "")
            target = external_target(folder, location)
            if target is None:
                raise UnsafeModelError(
                    f"{path}: tensor {tensor.name!r} reads external data from {location!r}, outside the model's folder"
                )
            try:
                target_size = target.stat().st_size if target.is_file() else None
            except OSError:  # e.g. a name too long for the file system
                target_size = None
            if target_size is None:
                raise AuditorInputError(f"{path}: external data file {location!r} is missing")
            try:
                offset, length = int(entries.get("offset", 0) or 0), int(entries.get("length", 0) or declared)
            except ValueError:
                raise AuditorInputError(f"{path}: tensor {tensor.name!r} has a malformed external-data offset or length") from None
            if offset < 0 or length < 0 or offset + length > target_size:
                raise AuditorInputError(f"{path}: tensor {tensor.name!r} reads past the end of {location!r}")
            external.add(str(target))
    if not model.graph.input:
        raise AuditorInputError(f"{path}: the ONNX graph has no inputs")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise AuditorInputError(f"{path}: fails the ONNX checker: {str(exc).strip().splitlines()[0]}") from None
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(folder))
        except Exception as exc:  # onnx re-validates locations and bounds (ValueError, checker errors)
            raise AuditorInputError(f"{path}: cannot read external data: {str(exc).strip().splitlines()[0]}") from None
    domains = {text(op.domain) for op in model.opset_import} | {text(n.domain) for n in model_nodes(model)}
    opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), None)
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in model.graph.input[0].type.tensor_type.shape.dim)
    facts = OnnxFacts(opset, tuple(sorted(domains - STANDARD_DOMAINS)), tuple(sorted(external)), dims,
                      f"{model.producer_name} {model.producer_version}".strip())
    return model, facts


def _sparse_parts(sparse_tensors):
    for sparse in sparse_tensors:
        yield from (sparse.values, sparse.indices)


def _all_tensors(graph):
    """Dense and sparse initializers, node attribute tensors, subgraphs (a FunctionProto has nodes only)."""
    yield from getattr(graph, "initializer", ())
    yield from _sparse_parts(getattr(graph, "sparse_initializer", ()))
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            yield from _sparse_parts([attr.sparse_tensor] if attr.HasField("sparse_tensor") else [])
            yield from _sparse_parts(attr.sparse_tensors)
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def model_tensors(model):
    """Every tensor of the main graph and of the model-local functions (which onnx and onnxruntime read too)."""
    for graph in (model.graph, *model.functions):
        yield from _all_tensors(graph)


def model_nodes(model):
    for graph in (model.graph, *model.functions):
        yield from _all_nodes(graph)


def ort_providers(device: torch.device) -> list:
    """onnxruntime follows the audit's device: its CUDA provider on that GPU when the device is CUDA and
    this onnxruntime has one, else its CPU provider (chosen explicitly: a missing CUDA provider is noisy)."""
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtRunner:
    """An onnxruntime session fed normalised float32 batches; honours a batch size fixed in the graph."""

    def __init__(self, model_bytes: bytes, path: Path, device: torch.device):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=options, providers=ort_providers(device))
        except Exception as exc:
            raise AuditorInputError(f"{path}: onnxruntime cannot run the model: {str(exc).strip().splitlines()[0]}") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if first.shape and isinstance(first.shape[0], int) else None
        self.providers = self.session.get_providers()

    def run(self, x: np.ndarray) -> torch.Tensor:
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self.fixed_batch or len(x)
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            pad = step - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            out = self.session.run(None, {self.input_name: chunk})[0]
            outs.append(out[: len(out) - pad] if pad else out)
        return torch.from_numpy(np.concatenate(outs).reshape(len(x), -1))


def free_fixed_batch(model):
    """A copy of a graph exported with a fixed batch size (torch's dynamo exporter writes the example
    input's, often 1), with its batch dimension free, for the torch conversion that scans run in
    batches; None when the batch is already free. The input's and outputs' first dimension become
    symbolic, and every Reshape whose constant target shape starts with the fixed batch size copies its
    input's first dimension instead (0, allowzero=0). onnxruntime still runs the file as it is, batch by
    batch, and check_backend_agreement compares the two on every audit."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    dims = model.graph.input[0].type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value < 1:
        return None
    batch = dims[0].dim_value
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in [*out.graph.input[:1], *out.graph.output]:
        shape = value.type.tensor_type.shape
        if shape.dim and shape.dim[0].HasField("dim_value") and shape.dim[0].dim_value == batch:
            shape.dim[0].dim_param = "batch"
    del out.graph.value_info[:]  # intermediate shapes recorded for the fixed batch
    constants = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(a.t) for n in out.graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    for i, node in enumerate(out.graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        target = constants[node.input[1]]
        if target.ndim != 1 or not len(target) or int(target[0]) != batch:
            continue
        freed = target.copy()
        freed[0] = 0
        name = f"auditor_free_batch_shape_{i}"
        out.graph.initializer.append(numpy_helper.from_array(freed.astype(np.int64), name))
        node.input[1] = name
        for attr in node.attribute:
            if attr.name == "allowzero":
                attr.i = 0
    return out


class FixedBatch(torch.nn.Module):
    """A converted graph that only runs at its fixed batch size, run chunk by chunk (zero-padded)."""

    def __init__(self, module: torch.nn.Module, batch: int):
        super().__init__()
        self.module, self.batch = module, batch

    def forward(self, x):
        outs = []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = torch.cat([chunk, chunk.new_zeros(pad, *chunk.shape[1:])])
            out = self.module(chunk)
            outs.append(out[: len(out) - pad] if pad else out)
        return torch.cat(outs)


def _agrees(module, runner, input_shape: tuple, batch: int) -> bool:
    """The freed conversion against onnxruntime on the file as it is, on more images than the fixed batch."""
    if runner is None or len(input_shape) != 4 or not all(isinstance(d, int) and d > 0 for d in input_shape[1:]):
        return False
    x = torch.randn(batch + 2, *input_shape[1:], generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            got = module(x)
        want = runner.run(x.numpy())
    except Exception:  # a shape the freed graph cannot take
        return False
    return got.shape == want.shape and bool(((got - want).abs().max() / want.abs().max().clamp_min(1.0)) <= 1e-4)


def to_torch(model, path: Path, runner=None, input_shape: tuple = ()) -> tuple[torch.nn.Module, str | None]:
    """The torch module the scans and defenses use, and a note when the graph's fixed batch mattered."""
    freed = free_fixed_batch(model)
    if freed is not None:
        batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
        try:
            module = _convert(freed, path)
        except AuditorInputError:
            module = None
        if module is not None and _agrees(module, runner, input_shape, batch):
            return module, (f"the ONNX graph fixes the batch at {batch}; its torch conversion runs any batch "
                            "(checked against onnxruntime on the file as it is)")
        return FixedBatch(_convert(model, path), batch), (
            f"the ONNX graph fixes the batch at {batch} and bakes it into its computation: the torch conversion "
            f"runs {batch} image(s) at a time, so scans and defenses are slower")
    return _convert(model, path), None


def _convert(model, path: Path) -> torch.nn.Module:
    from onnx2torch import convert

    from . import onnx_converters  # noqa: F401  registers converters onnx2torch lacks

    try:
        return convert(model).eval()
    except NotImplementedError as exc:
        raise AuditorInputError(
            f"{path}: cannot convert to torch for gradient-based scans: {str(exc).splitlines()[0]}"
        ) from None
    except Exception as exc:
        raise AuditorInputError(f"{path}: onnx2torch conversion failed: {str(exc).splitlines()[0]}") from None
