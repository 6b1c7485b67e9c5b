"""load_model(request) -> ModelHandle for every registered format (`formats/`: state_dict, safetensors,
TorchScript, ONNX).

Fail closed: anything that would run code, reach outside the model's folder, or is malformed raises
AuditorInputError (exit 2) with one line naming the file and the problem. Input files are only read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import AuditorInputError
from ..model import ModelHandle, ModelInfo, resolve_device
from . import files

DEFAULT_MAX_TENSOR_BYTES = 2 * 2**30
MAX_METADATA_INPUT = 2**24  # C*H*W a metadata file may ask for (16.7M values, e.g. 3 x 2364 x 2364)


@dataclass(frozen=True)
class LoadRequest:
    path: Path
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    metadata_path: Path | None = None
    max_file_bytes: int = files.DEFAULT_MAX_BYTES
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data_shape: tuple[int, int, int] | None = None  # C, H, W of the user's --data images: the last source of the input size


def read_metadata(request: LoadRequest) -> tuple[dict, Path | None]:
    """The sidecar `<stem>.json` (or --metadata) written by the fixture builder or the model's vendor.

    It travels with an untrusted model, so the fields used are checked and bounded."""
    if request.metadata_path is None and request.path.is_dir():
        return {}, None  # a model folder carries its own configs
    path = request.metadata_path or request.path.with_suffix(".json")
    if not path.is_file() or path.resolve() == request.path.resolve():
        if request.metadata_path:
            raise AuditorInputError(f"{path}: metadata file not found")
        return {}, None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON
        raise AuditorInputError(f"{path}: unreadable metadata JSON: {exc}") from None
    if not isinstance(meta, dict) or "auditor_metadata" not in meta:
        if request.metadata_path:
            raise AuditorInputError(f"{path}: not an auditor metadata file (no 'auditor_metadata' key)")
        return {}, None
    if not _metadata_well_formed(meta):
        raise AuditorInputError(f"{path}: malformed auditor metadata: 'arch' needs a 'callable' string and a "
                                f"'kwargs' object; 'input' needs positive integer channels/height/width (C*H*W <= {MAX_METADATA_INPUT:,}) "
                                "and mean/std lists of numbers")
    return meta, path


def _metadata_well_formed(meta: dict) -> bool:
    arch, inp = meta.get("arch"), meta.get("input", {})
    if arch is not None and not (isinstance(arch, dict) and isinstance(arch.get("callable"), str)
                                 and isinstance(arch.get("kwargs", {}), dict)):
        return False
    if not isinstance(inp, dict):
        return False
    dims, numbers = [inp.get(k, 1) for k in ("channels", "height", "width")], [inp.get(k, []) for k in ("mean", "std")]
    return (all(type(d) is int and d > 0 for d in dims) and dims[0] * dims[1] * dims[2] <= MAX_METADATA_INPUT
            and all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in numbers))


def _check_finite(module: torch.nn.Module, path: Path) -> int:
    params = dict(module.named_parameters())
    for name, tensor in list(params.items()) + list(module.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AuditorInputError(f"{path}: weight {name!r} contains NaN or Inf values")
    return sum(p.numel() for p in params.values())


def _resolve_input(request: LoadRequest, meta: dict, onnx_dims: tuple | None) -> tuple[tuple[int, int, int] | None, str]:
    if request.input_shape:
        return request.input_shape, "--input-size"
    inp = meta.get("input", {})
    if all(k in inp for k in ("channels", "height", "width")):
        return (int(inp["channels"]), int(inp["height"]), int(inp["width"])), "metadata"
    if onnx_dims and len(onnx_dims) == 4 and all(isinstance(d, int) and d > 0 for d in onnx_dims[1:]):
        return tuple(onnx_dims[1:]), "ONNX graph"
    if request.data_shape:
        return tuple(request.data_shape), "data"
    return None, ""


def _normalisation(request: LoadRequest, meta: dict, channels: int) -> tuple[tuple, tuple, list[str]]:
    notes = []
    inp = meta.get("input", {})
    mean = request.mean or (tuple(inp["mean"]) if "mean" in inp else None)
    std = request.std or (tuple(inp["std"]) if "std" in inp else None)
    if mean is None or std is None:
        notes.append("normalisation unknown: inputs assumed in [0, 1] (pass --mean/--std)")
        mean, std = mean or (0.0,), std or (1.0,)
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels:
        raise AuditorInputError(f"--mean/--std need 1 or {channels} values")
    if any(s <= 0 for s in std):
        raise AuditorInputError("--std values must be positive")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std), notes


def load_model(request: LoadRequest) -> ModelHandle:
    from .formats import detect

    path = request.path
    device = resolve_device(request.device)  # before any work: a missing GPU is an input error
    size = files.check_readable(path, request.max_file_bytes)
    digest = files.sha256(path)
    fmt, probe = detect(path, size)
    meta, meta_path = read_metadata(request)
    loaded = fmt.load(request, probe, meta, meta_path, device)
    module, notes = loaded.module, list(loaded.notes)
    meta = {**loaded.metadata, **meta}  # what the file's own configs say; a sidecar or --metadata wins
    module.eval()
    param_count = _check_finite(module, path)
    input_shape, source = _resolve_input(request, meta, loaded.input_dims)
    if input_shape is None:
        raise AuditorInputError(f"{path}: cannot tell the input size; pass --input-size C,H,W (e.g. 3,32,32)")
    if source == "data":
        notes.append(f"input size {'x'.join(map(str, input_shape))} taken from the --data images (no metadata or --input-size says)")
    mean, std, norm_notes = _normalisation(request, meta, input_shape[0])
    notes += norm_notes
    num_classes = _probe_classes(module, input_shape, path)
    if meta.get("num_classes") not in (None, num_classes):
        raise AuditorInputError(f"{path}: metadata says {meta['num_classes']} classes, the model outputs {num_classes}")
    info = ModelInfo(
        path=str(path), sha256=digest, format=fmt.name, size_bytes=size, param_count=param_count,
        input_shape=input_shape, num_classes=num_classes, mean=mean, std=std, arch=loaded.arch, opset=loaded.opset,
        metadata=meta, notes=tuple(notes), device=str(device),
        ort_providers=tuple(loaded.ort_runner.providers) if loaded.ort_runner else (),
        external_files=loaded.external_files,
    )
    return ModelHandle(module, info, ort_session=loaded.ort_runner, device=device)


def _probe_classes(module: torch.nn.Module, input_shape: tuple[int, int, int], path: Path) -> int:
    try:
        with torch.inference_mode():
            out = module(torch.zeros(2, *input_shape))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditorInputError(f"{path}: the model does not run on input {input_shape}: {first}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise AuditorInputError(f"{path}: expected logits of shape N x classes, got {getattr(out, 'shape', type(out).__name__)}")
    if out.shape[1] < 2:
        raise AuditorInputError(f"{path}: the model outputs {out.shape[1]} class; a classifier needs at least 2")
    return int(out.shape[1])
