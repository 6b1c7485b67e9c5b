"""ONNX: run as-is by onnxruntime for predictions, converted by onnx2torch for gradient work."""

from __future__ import annotations

from pathlib import Path

from ...errors import AuditorInputError
from . import FileProbe, LoadedModule

# protobuf field tags a ModelProto can start with (ONNX has no magic number)
_FIRST_TAGS = (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42")


def looks_like_onnx(probe: FileProbe) -> bool:
    return probe.zip_names is None and (probe.path.suffix.lower() == ".onnx" or probe.head[:1] in _FIRST_TAGS)


class OnnxFormat:
    name = "onnx"
    needs_arch = False
    folder = False

    def sniff(self, probe: FileProbe) -> bool:
        return looks_like_onnx(probe)

    def label(self, probe: FileProbe) -> str:
        return self.name

    def inspect(self, probe: FileProbe, report, max_tensor_bytes: int) -> None:
        from ..safety import onnx_findings

        onnx_findings(probe.path, max_tensor_bytes, report)

    def load(self, request, probe: FileProbe, meta: dict, meta_path: Path | None, device) -> LoadedModule:
        from ..onnx_files import OrtRunner, read_and_validate, to_torch

        path = probe.path
        onnx_model, facts = read_and_validate(path, request.max_tensor_bytes)
        if facts.custom_domains:
            raise AuditorInputError(f"{path}: uses custom op domains {', '.join(facts.custom_domains)}, which need native code to run")
        runner = OrtRunner(onnx_model.SerializeToString(), path, device)
        module, note = to_torch(onnx_model, path, runner, facts.input_shape)
        return LoadedModule(module, "onnx2torch", ort_runner=runner, opset=facts.opset, input_dims=facts.input_shape,
                            notes=[note] if note else [],
                            external_files=facts.external_files)

    def write(self, handle, source, output_dir: Path, stem: str, protected: tuple[Path, ...]) -> dict[str, Path]:
        """The converted module's weights, and the ONNX export the after stage audits as the file that will run."""
        from ...outputs import atomic_write, export_onnx
        from .state_dict import write_state_dict

        written = {"state_dict": write_state_dict(handle, output_dir / f"{stem}.repaired.pt", protected)}
        input_name = source.ort_session.input_name if source.ort_session else "input"
        written["onnx"] = atomic_write(output_dir / f"{stem}.repaired.onnx",
                                       lambda p: export_onnx(handle.module, p, source.input_shape, input_name), protected)
        return written


FORMAT = OnnxFormat()
