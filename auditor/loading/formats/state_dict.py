"""PyTorch weights saved with torch.save: a zip checkpoint or a legacy pickle stream."""

from __future__ import annotations

from pathlib import Path

from ..pickle_scan import _looks_like_pickle, is_torchscript_archive
from . import FileProbe, LoadedModule
from .onnx import looks_like_onnx
from .safetensors import looks_like_safetensors


class StateDictFormat:
    name = "state_dict"
    needs_arch = True
    folder = False

    def sniff(self, probe: FileProbe) -> bool:
        if probe.zip_names is not None:
            return not is_torchscript_archive(probe.zip_names)
        if probe.head[:1] == b"\x80":
            return True
        # protocol 0/1 pickles have no header (torch.load would unpickle them); a file shaped like the
        # other formats is theirs
        return _looks_like_pickle(probe.head) and not looks_like_safetensors(probe) and not looks_like_onnx(probe)

    def label(self, probe: FileProbe) -> str:
        return "torch-zip" if probe.zip_names is not None else "pickle"

    def inspect(self, probe: FileProbe, report, max_tensor_bytes: int) -> None:
        from ..safety import container_findings, pickle_findings

        if probe.zip_names is not None:
            container_findings(probe.path, report)
        pickle_findings(probe.path, report)

    def load(self, request, probe: FileProbe, meta: dict, meta_path: Path | None, device) -> LoadedModule:
        from ..torch_files import load_state_dict_file, module_for_weights

        state = load_state_dict_file(probe.path, zipped=probe.zip_names is not None)
        module, arch, note = module_for_weights(state, request, meta, meta_path)
        return LoadedModule(module, arch, notes=[note] if note else [])

    def write(self, handle, source, output_dir: Path, stem: str, protected: tuple[Path, ...]) -> dict[str, Path]:
        return {"state_dict": write_state_dict(handle, output_dir / f"{stem}.repaired.pt", protected)}


def write_state_dict(handle, path: Path, protected: tuple[Path, ...]) -> Path:
    import torch

    from ...outputs import atomic_write

    state = {k: v.detach().cpu() for k, v in handle.module.state_dict().items()}
    return atomic_write(path, lambda p: torch.save(state, p), protected)


FORMAT = StateDictFormat()
