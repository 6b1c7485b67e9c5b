"""onnx2torch converters for op versions it lacks (it stops at opset 17 for the Reduce family).

From opset 18 the Reduce ops take `axes` as an input instead of an attribute; torch 2.14's default
exporter writes opset 20, so a ResNet's global average pool arrives as ReduceMean-18. Constant
axes (the only kind exporters write for pooling) map onto onnx2torch's own static-axes module.
"""

from __future__ import annotations

from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes, OnnxReduceSumStaticAxes
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

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


def _register() -> None:
    for op in REDUCE_OPS:
        versions = (18, 20) if op in ("ReduceMax", "ReduceMin") else (18,)
        for version in versions:
            if OperationDescription("", op, version) not in _CONVERTER_REGISTRY:
                add_converter(operation_type=op, version=version)(_convert_reduce_axes_input)


_register()
