"""Model file formats: one module each, registered here in the order they are tried.

A format says, from a file's content (never its extension alone), whether the file is one of its
own (`sniff`); what the serialization check must know before anything is loaded (`inspect`); how to
load it into a torch module without running anything from it (`load`); and how to write a repaired
model in the same form (`write`). Adding a format is one module and one line in FORMATS below.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import AuditorInputError

if TYPE_CHECKING:  # the protocol's types; importing them here would pull torch into `auditor --help`
    import torch

    from .. import LoadRequest
    from ..safety import SafetyReport
    from ...model import ModelHandle


@dataclass(frozen=True)
class FileProbe:
    """What sniffing may look at: the first bytes, the size, and a zip's member names (None: not a zip)."""

    path: Path
    size: int
    head: bytes
    zip_names: tuple[str, ...] | None
    folder: tuple[str, ...] | None = None  # a model folder's files (relative names); None for a file

    @classmethod
    def of(cls, path: Path, size: int) -> "FileProbe":
        if path.is_dir():
            from ..files import folder_files

            return cls(path, size, b"", None, tuple(name for name, _ in folder_files(path, 2**62)))
        with path.open("rb") as fh:
            head = fh.read(16)
        try:
            is_zip = zipfile.is_zipfile(path)
        except Exception:  # a malformed end record (e.g. a multi-disk zip64 one) raises instead of saying no
            is_zip = True  # ZipFile below reports it
        names = None
        if is_zip:
            try:
                with zipfile.ZipFile(path) as zf:
                    names = tuple(zf.namelist())
            except Exception as exc:  # BadZipFile, OSError, undecodable names, unsupported zip versions ...
                raise AuditorInputError(f"{path}: corrupt zip archive: {exc}") from None
        elif head[:4] == b"PK\x03\x04":
            raise AuditorInputError(f"{path}: truncated or corrupt zip archive (a PyTorch checkpoint is a zip file)")
        return cls(path, size, head, names)


@dataclass
class LoadedModule:
    """A format's load result; load_model adds what is common to all (input size, classes, normalisation)."""

    module: "torch.nn.Module"
    arch: str
    ort_runner: Any = None  # an OrtRunner when the file is run as-is by onnxruntime
    opset: int | None = None
    input_dims: tuple | None = None  # the graph's declared input shape, when it has one
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # what the file itself says (input, class names), as a sidecar would
    external_files: tuple[str, ...] = ()  # other files the weights were read from (an ONNX file's external data)


class ModelFormat(Protocol):
    name: str  # ModelInfo.format
    needs_arch: bool  # weights only: the architecture comes from --arch or the metadata
    folder: bool  # a folder format (a hub download) rather than a file format

    def sniff(self, probe: FileProbe) -> bool: ...

    def label(self, probe: FileProbe) -> str:
        """The container as the serialization check reports it (e.g. torch-zip vs pickle)."""

    def inspect(self, probe: FileProbe, report: "SafetyReport", max_tensor_bytes: int) -> None:
        """Static findings for the serialization check; reads the file, never loads or runs it."""

    def load(self, request: "LoadRequest", probe: FileProbe, meta: dict, meta_path: Path | None, device) -> LoadedModule: ...

    def write(self, handle: "ModelHandle", source: "ModelHandle", output_dir: Path, stem: str,
              protected: tuple[Path, ...]) -> dict[str, Path]:
        """Write the repaired model as new files in the source's form; {kind: path}."""


from . import hub_folder, onnx, safetensors, state_dict, torchscript  # noqa: E402  (each module defines FORMAT)

# Tried in this order: TorchScript before state_dict (both zips), a state_dict pickle before
# safetensors and ONNX (a pickle's 0x80 header wins), safetensors before ONNX (ONNX has no magic).
# Folder formats are tried on folders only, file formats on files only.
FORMATS: list[ModelFormat] = [torchscript.FORMAT, state_dict.FORMAT, safetensors.FORMAT, onnx.FORMAT,
                              hub_folder.TRANSFORMERS, hub_folder.TIMM]


def by_name(name: str) -> ModelFormat:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(f"unknown model format {name!r}; known: {', '.join(f.name for f in FORMATS)}")


def detect(path: Path, size: int) -> tuple[ModelFormat, FileProbe]:
    probe = FileProbe.of(path, size)
    for fmt in FORMATS:
        if getattr(fmt, "folder", False) == (probe.folder is not None) and fmt.sniff(probe):
            return fmt, probe
    if probe.folder is not None:
        raise AuditorInputError(f"{path}: unrecognised model folder (expected a transformers or timm folder with a "
                                "config.json)")
    raise AuditorInputError(
        f"{path}: unrecognised model format (expected a PyTorch state_dict, TorchScript, safetensors or ONNX file)"
    )
