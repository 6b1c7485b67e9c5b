"""PyTorch formats: state_dict (zip or legacy pickle, weights_only), safetensors, TorchScript.

No code from a pickle ever runs: the pickle is first read statically (pickle_scan) so a refusal can
name the blocking global, then loaded with torch.load(weights_only=True) and no fallback.
"""

from __future__ import annotations

import functools
import importlib
import struct
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AuditorInputError, UnsafeModelError
from .identify import TIMM_PREFIX, TIMM_REFUSED_KWARGS
from .pickle_scan import scan_file
from .torchscript_code import REEXPORT_HINT, inspect_graphs, inspect_sources
from .zip_container import container_problems

# Architectures a sidecar metadata file may name. A metadata file travels with an untrusted model,
# so it must not be able to make us import and call arbitrary code; --arch on the command line can.
TRUSTED_ARCH_PREFIXES = ("auditor.zoo:",)


def build_arch(arch: str, kwargs: dict[str, Any], trusted_only: bool, max_tensor_bytes: int | None = None) -> nn.Module:
    """`arch` is a torchvision model name, `timm:NAME` or `package.module:callable`."""
    if arch.startswith(TIMM_PREFIX):
        factory = _timm_factory(arch, kwargs)
    elif ":" in arch:
        if trusted_only and not arch.startswith(TRUSTED_ARCH_PREFIXES):
            raise UnsafeModelError(
                f"metadata names architecture {arch!r}: only auditor.zoo, torchvision and timm architectures are taken "
                "from a metadata file; pass --arch to use your own"
            )
        module_name, _, attr = arch.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise AuditorInputError(f"--arch {arch}: cannot import: {exc}") from None
    else:
        import torchvision

        try:
            factory = functools.partial(torchvision.models.get_model_builder(arch), weights=None)
        except ValueError:
            raise AuditorInputError(
                f"--arch {arch}: not a torchvision model name nor package.module:callable"
            ) from None
    if trusted_only and max_tensor_bytes:
        # Arguments from a metadata file travel with the model: size the model on the meta device
        # (no memory) before allocating it, so {"width": 10**6} cannot exhaust memory.
        with torch.device("meta"):
            biggest = max((t.numel() * t.element_size() for t in _construct(factory, arch, kwargs).state_dict().values()),
                          default=0)
        if biggest > max_tensor_bytes:
            raise UnsafeModelError(f"metadata arguments {kwargs} for {arch} make a tensor of {biggest:,} bytes, "
                                   f"over the limit of {max_tensor_bytes:,}")
    return _construct(factory, arch, kwargs)


def _timm_factory(arch: str, kwargs: dict[str, Any]):
    """timm's registered architectures, never with pretrained weights or a checkpoint (no download, no
    second file read): safe to take from a metadata file, like torchvision names."""
    try:
        import timm
    except ImportError:
        raise AuditorInputError(f"--arch {arch}: needs the timm package (pip install timm)") from None
    name = arch[len(TIMM_PREFIX):]
    if not timm.is_model(name):
        raise AuditorInputError(f"--arch {arch}: {name!r} is not an architecture timm knows")
    refused = sorted(set(kwargs) & set(TIMM_REFUSED_KWARGS))
    if refused:
        raise UnsafeModelError(f"--arch {arch}: refused argument(s) {', '.join(refused)}: the audit builds the "
                               "architecture only; the weights come from the model file")
    return functools.partial(timm.create_model, name, pretrained=False)


def _construct(factory, arch: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # unknown keyword, bad value, impossible size
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditorInputError(f"--arch {arch}: bad --arch-arg: {first}") from None
    if not isinstance(model, nn.Module):
        raise AuditorInputError(f"--arch {arch}: the callable returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _refuse_unsafe_pickle(path: Path) -> None:
    result = scan_file(path)
    if result.unsafe:
        names = ", ".join(sorted({f.qualname for f in result.unsafe}))
        raise UnsafeModelError(
            f"{path}: refused: the pickle imports {names}, which could run code when loaded "
            "(a pickled full model or a malicious file). Save the weights instead: "
            "torch.save(model.state_dict(), path) or safetensors, and pass --arch"
        )
    if result.problems:
        raise UnsafeModelError(f"{path}: refused: the pickle cannot be read safely: {result.problems[0]}")


def load_state_dict_file(path: Path, zipped: bool = False) -> dict[str, torch.Tensor]:
    if zipped:
        refuse_bad_container(path)
    _refuse_unsafe_pickle(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals, truncated archives, corrupt records
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditorInputError(f"{path}: cannot load as a PyTorch state_dict: {first}") from None
    return extract_state_dict(obj, path)


def extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise AuditorInputError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    tensors = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise AuditorInputError(f"{path}: state_dict entry {key!r} is not a named tensor")
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        tensors[key] = value
    return tensors


def load_safetensors_file(path: Path, header: dict, size: int) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with path.open("rb") as fh:  # the header's real length: re-serialising it is not byte-exact
        data_bytes = size - 8 - struct.unpack("<Q", fh.read(8))[0]
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise AuditorInputError(f"{path}: safetensors header entry {name!r} has no valid data_offsets") from None
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end) or end > data_bytes:
            raise AuditorInputError(f"{path}: safetensors header for {name!r} points past the end of the file")
    try:
        return OrderedDict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AuditorInputError(f"{path}: corrupt safetensors file: {exc}") from None


def refuse_bad_container(path: Path) -> None:
    problems = container_problems(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnsafeModelError(f"{path}: refused: {problems[0]}{more}")


def _refuse(path: Path, findings: list[str]) -> None:
    more = f" (and {len(findings) - 2} more)" if len(findings) > 2 else ""
    raise UnsafeModelError(f"{path}: refused: {'; '.join(findings[:2])}{more}; {REEXPORT_HINT}")


def load_torchscript_file(path: Path) -> nn.Module:
    """Container, pickles and code are read statically first; torch.jit.load runs only on an archive
    with no __setstate__ and no call outside the allow-list, and its compiled graphs are checked
    again before the caller runs anything."""
    import zipfile

    refuse_bad_container(path)
    _refuse_unsafe_pickle(path)
    try:
        with zipfile.ZipFile(path) as zf:
            code = inspect_sources(zf)
    except Exception as exc:  # BadZipFile, OSError, undecodable names ...
        raise AuditorInputError(f"{path}: corrupt TorchScript archive: {exc}") from None
    if code.findings:
        _refuse(path, code.findings)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": not the user's concern
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditorInputError(f"{path}: cannot load TorchScript archive: {first}") from None
    findings = inspect_graphs(module, code.classes)
    if findings:
        _refuse(path, findings)
    return module


def module_for_weights(state: dict[str, torch.Tensor], request, meta: dict, meta_path: Path | None
                       ) -> tuple[nn.Module, str, str | None]:
    """The architecture (--arch, else the metadata's, which may only name trusted ones, else the one
    torchvision classifier these keys and shapes fit) with `state` in it, and a note when identified."""
    path = request.path
    note = None
    arch_spec, kwargs, trusted_only = request.arch, dict(request.arch_kwargs), False
    if arch_spec is None and isinstance(meta.get("arch"), dict):
        arch_spec, kwargs, trusted_only = meta["arch"].get("callable"), dict(meta["arch"].get("kwargs", {})), True
    if not arch_spec:
        from .identify import identify

        found = identify(state, request.input_shape)
        if found.spec is None:
            raise AuditorInputError(
                f"{path}: a state_dict holds weights only and {found.message}; pass --arch (a torchvision name "
                "such as resnet18, timm:NAME, or package.module:callable) and --arch-arg num_classes=N"
            )
        arch_spec, kwargs, trusted_only = found.spec, {"num_classes": found.num_classes}, True
        library = "timm" if arch_spec.startswith(TIMM_PREFIX) else "torchvision"
        also = (f"; {', '.join(found.same_function)} also fit and compute the same outputs with these weights"
                if found.same_function else "")
        if found.different_function:
            also += (f"; {', '.join(found.different_function)} have the same tensors but compute different outputs: "
                     "if clean accuracy is low, pass --arch")
        note = (f"architecture identified from the weights' keys and shapes: {library} "
                f"{arch_spec.removeprefix(TIMM_PREFIX)} with {found.num_classes} classes{also} (--arch overrides)")
    try:
        module = build_arch(arch_spec, kwargs, trusted_only, request.max_tensor_bytes)
    except AuditorInputError as exc:  # name the model, and the metadata file the architecture came from
        raise type(exc)(f"{path}: {exc} (architecture from {meta_path})" if trusted_only else str(exc)) from None
    apply_state_dict(module, state, path, arch_spec)
    return module, arch_spec, note


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if misshaped:
        problems.append(f"{len(misshaped)} misshaped (e.g. {misshaped[0]})")
    if problems:
        raise AuditorInputError(f"{path}: weights do not fit --arch {arch}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)

