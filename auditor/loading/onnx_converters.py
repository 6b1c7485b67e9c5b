"""onnx2torch converters for the op versions it lacks: torch 2.14's default exporter (dynamo) writes
opset 20, and onnx2torch 1.5.15 stops at 13-17 for most ops.

- From opset 18 the Reduce ops take `axes` as an input instead of an attribute, so a ResNet's global
  average pool arrives as ReduceMean-18. Constant axes (the only kind exporters write for pooling)
  map onto onnx2torch's own static-axes module.
- Many versions of opsets 18-21 only widen the element types (float8, int4, bfloat16, strings) or add
  an attribute or input whose default keeps the old meaning. Those delegate to onnx2torch's newest
  converter of the same op, after checking that the node uses nothing the older version lacks;
  a node that does is refused with what it uses, never converted to something else.
- Gelu is new in opset 20 (the exporter writes it for nn.GELU).
"""

from __future__ import annotations

import torch
from torch import nn

from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes, OnnxReduceSumStaticAxes
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value, onnx_mapping_from_node

REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
              "ReduceMin", "ReduceProd", "ReduceSumSquare")




def _convert_reduce_axes_input(node, graph) -> OperationConverterResult:
    keepdims = node.attributes.get("keepdims", 1)
    noop = node.attributes.get("noop_with_empty_axes", 0)
    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = get_const_value(node.input_values[1], graph).tolist()
        except KeyError:
            raise NotImplementedError(f"{node.operation_type} with axes computed at run time is not supported") from None
    if not axes and noop:
        module = OnnxReduceSumStaticAxes(axes=[], keepdims=keepdims, noop_with_empty_axes=1)
    else:
        module = OnnxReduceStaticAxes(operation_type=node.operation_type, axes=axes, keepdims=keepdims)
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )


def _no_more_inputs(count: int):
    def check(node) -> str | None:
        extra = [v for v in node.input_values[count:] if v]
        return f"input {count + 1} ({extra[0]})" if extra else None

    return check


def _default_attributes(**defaults):
    """Each attribute absent or at its default; a set of values means any of them (a list attribute:
    every element in the set)."""
    def check(node) -> str | None:
        for name, default in defaults.items():
            if name not in node.attributes:
                continue
            value = node.attributes[name]
            if isinstance(default, (set, frozenset)):
                ok = set(value) <= default if isinstance(value, (list, tuple)) else value in default
            else:
                ok = value == default
            if not ok:
                return f"attribute {name}={value!r}"
        return None

    return check


def _both(*checks):
    def check(node) -> str | None:
        return next((problem for problem in (c(node) for c in checks) if problem), None)

    return check


# op: (versions to add, the onnx2torch version they delegate to, what the older version cannot express)
SAME_MEANING = {
    "Shape": ((19, 21), 15, None),
    "Cast": ((19, 21), 13, None),  # `saturate` only concerns float8 targets
    "Constant": ((19, 21), 13, None),
    "Identity": ((19, 21), 16, None),
    "Equal": ((19,), 13, None),
    "Flatten": ((21,), 13, None),
    "Unsqueeze": ((21,), 13, None),
    "Transpose": ((21,), 13, None),
    "ConstantOfShape": ((20, 21), 9, None),
    "IsInf": ((20,), 10, None),
    "IsNaN": ((20,), 13, None),
    "Pad": ((18, 19, 21), 13, _both(_no_more_inputs(3), _default_attributes(mode={"constant", "reflect", "edge"}))),
    "Split": ((18,), 13, None),
    "ScatterND": ((18,), 16, _default_attributes(reduction={"none", "add", "mul"})),  # 18 adds max and min  # num_outputs equals the node's output count, which the 13 converter splits by
    "AveragePool": ((19,), 11, _default_attributes(dilations={1})),
    "Resize": ((18, 19), 13, _both(_no_more_inputs(4), _default_attributes(antialias=0, keep_aspect_ratio_policy="stretch"),
                                   lambda n: None if n.attributes.get("coordinate_transformation_mode") != "half_pixel_symmetric"
                                   else "coordinate_transformation_mode=half_pixel_symmetric")),
}


def _delegate(op: str, version: int, older: int, check):
    base = _CONVERTER_REGISTRY[OperationDescription("", op, older)]

    def convert(node, graph) -> OperationConverterResult:
        problem = check(node) if check else None
        if problem:
            raise NotImplementedError(f"{op}-{version} with {problem}, which {op}-{older} cannot express")
        return base(node, graph)

    return convert


class OnnxGelu(nn.Module):
    def __init__(self, approximate: str):
        super().__init__()
        self.gelu = nn.GELU(approximate=approximate)

    def forward(self, x):
        return self.gelu(x)


def _convert_gelu(node, graph) -> OperationConverterResult:
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu with approximate={approximate!r}")
    return OperationConverterResult(torch_module=OnnxGelu(approximate), onnx_mapping=onnx_mapping_from_node(node))


class OnnxReshapeAllowZero(nn.Module):
    """Reshape with allowzero=1: a 0 in the shape is a zero-size dimension, not 'keep the input's'."""

    def forward(self, x, shape):
        return torch.reshape(x, [int(d) for d in shape.tolist()])


def _reshape_converter(older):
    """Reshape-14/19/21. The exporter writes allowzero=1 on every Reshape; onnx2torch refuses it, though
    with no 0 in the shape (the usual case) it means the same as allowzero=0."""

    def convert(node, graph) -> OperationConverterResult:
        if node.attributes.get("allowzero", 0) != 1:
            return older(node, graph)
        return OperationConverterResult(torch_module=OnnxReshapeAllowZero(), onnx_mapping=onnx_mapping_from_node(node))

    return convert


def _register() -> None:
    for op in REDUCE_OPS:
        versions = (18, 20) if op in ("ReduceMax", "ReduceMin") else (18,)
        for version in versions:
            if OperationDescription("", op, version) not in _CONVERTER_REGISTRY:
                add_converter(operation_type=op, version=version)(_convert_reduce_axes_input)
    for op, (versions, older, check) in SAME_MEANING.items():
        for version in versions:
            if OperationDescription("", op, version) not in _CONVERTER_REGISTRY:
                add_converter(operation_type=op, version=version)(_delegate(op, version, older, check))
    reshape_14 = OperationDescription("", "Reshape", 14)
    if not getattr(_CONVERTER_REGISTRY[reshape_14], "handles_allowzero", False):
        convert = _reshape_converter(_CONVERTER_REGISTRY[reshape_14])
        convert.handles_allowzero = True
        _CONVERTER_REGISTRY[reshape_14] = convert  # replaces onnx2torch's, which refuses allowzero=1
        for version in (19, 21):
            if OperationDescription("", "Reshape", version) not in _CONVERTER_REGISTRY:
                add_converter(operation_type="Reshape", version=version)(convert)
    if OperationDescription("", "Gelu", 20) not in _CONVERTER_REGISTRY:
        add_converter(operation_type="Gelu", version=20)(_convert_gelu)


_register()
