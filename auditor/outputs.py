"""Writing repaired models: new files only, written to a temp file and renamed, never over an input."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from .errors import AuditorInputError
from .model import ModelHandle, ModelInfo


def atomic_write(path: Path, write: Callable[[Path], None], protected: tuple[Path, ...]) -> Path:
    path = Path(path)
    resolved = path.resolve()
    if any(resolved == Path(p).resolve() for p in protected if p is not None):
        raise AuditorInputError(f"{path}: refusing to write over an input file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_onnx(module: torch.nn.Module, path: Path, input_shape: tuple[int, int, int], input_name: str) -> None:
    """Legacy (TorchScript-based) exporter, opset 17, dynamic batch: one self-contained file."""
    module = module.cpu().eval()
    torch.onnx.export(
        module, (torch.zeros(2, *input_shape),), str(path), dynamo=False, opset_version=17,
        input_names=[input_name], output_names=["logits"],
        dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
    )


# Sidecar keys that say how to load and interpret a model, true of the repaired file as of the delivered one.
DESCRIBES_LOADING = ("arch", "input", "num_classes", "class_names", "description", "license", "task")


def repaired_metadata(info: ModelInfo, arch: str | None, arch_kwargs: dict, provenance: dict) -> dict:
    """The metadata sidecar for the repaired files, so `auditor scan <stem>.repaired.pt` loads them
    as the after stage did: how to load and read the model (architecture, input size, normalisation,
    class names) as the audit resolved it. What the delivered sidecar claims about the delivered file
    (its trigger, poison rate, measured metrics, training recipe) is not true of the repaired one, so it
    moves under `repaired_from.delivered_claims`; the audit's own measurements are in its JSON result."""
    source = dict(info.metadata)
    meta = {k: v for k, v in source.items() if k in DESCRIBES_LOADING}
    meta["auditor_metadata"] = 1
    meta["name"] = f"{source.get('name') or Path(info.path).stem}.repaired"
    meta.pop("arch", None)  # an ONNX or TorchScript file carries its graph; its weights file is an onnx2torch module's
    if arch and _needs_arch(info.format):
        meta["arch"] = {"callable": arch, "kwargs": dict(arch_kwargs)}
    channels, height, width = info.input_shape
    inp = {**(source.get("input") or {}), "channels": channels, "height": height, "width": width}
    if not any(note.startswith("normalisation unknown") for note in info.notes):
        inp.update(mean=list(info.mean), std=list(info.std))
    meta["input"] = inp
    meta["num_classes"] = info.num_classes
    claims = {k: v for k, v in source.items() if k not in DESCRIBES_LOADING and k not in ("auditor_metadata", "name")}
    meta["repaired_from"] = {"path": info.path, "sha256": info.sha256, **provenance,
                             **({"delivered_claims": claims} if claims else {})}
    return meta


def _needs_arch(format_name: str) -> bool:
    from .loading.formats import by_name

    return by_name(format_name).needs_arch


def repaired_model_file(outputs: dict):
    """Of what write_repaired wrote, the model file the after stage audits: the ONNX export when there is
    one (the file as it will run), else the weights file; never the metadata sidecar."""
    return outputs.get("onnx") or next(v for k, v in outputs.items() if k != "metadata")


def write_repaired(handle: ModelHandle, source: ModelHandle, output_dir: Path, protected: tuple[Path, ...],
                   metadata: dict | None = None) -> dict[str, Path]:
    """Write `handle` in the format of the `source` file (its format module's `write`), and `metadata`
    as its sidecar `<stem>.repaired.json`. Returns {"state_dict"|"onnx"|...|"metadata": path}."""
    from .loading.formats import by_name

    stem = Path(source.info.path).stem
    written = by_name(source.info.format).write(handle, source, output_dir, stem, protected)
    if metadata is not None:
        text = json.dumps(metadata, indent=1)
        written["metadata"] = atomic_write(output_dir / f"{stem}.repaired.json", lambda p: p.write_text(text), protected)
    handle.module.to(handle.device)
    return written
