"""TorchScript archives (torch.jit.save, scripted or traced): a program, read statically before loading."""

from __future__ import annotations

from pathlib import Path

from ..pickle_scan import is_torchscript_archive
from . import FileProbe, LoadedModule


class TorchScriptFormat:
    name = "torchscript"
    needs_arch = False
    folder = False

    def sniff(self, probe: FileProbe) -> bool:
        return probe.zip_names is not None and is_torchscript_archive(probe.zip_names)

    def label(self, probe: FileProbe) -> str:
        return self.name

    def inspect(self, probe: FileProbe, report, max_tensor_bytes: int) -> None:
        from ..safety import container_findings, pickle_findings, torchscript_code_findings

        container_findings(probe.path, report)
        pickle_findings(probe.path, report)
        torchscript_code_findings(probe.path, report)

    def load(self, request, probe: FileProbe, meta: dict, meta_path: Path | None, device) -> LoadedModule:
        from ..torch_files import load_torchscript_file

        return LoadedModule(load_torchscript_file(probe.path), "torchscript")

    def write(self, handle, source, output_dir: Path, stem: str, protected: tuple[Path, ...]) -> dict[str, Path]:
        import torch

        from ...outputs import atomic_write

        module = handle.module
        path = output_dir / f"{stem}.repaired.pt"
        return {"torchscript": atomic_write(path, lambda p: torch.jit.save(module.cpu(), str(p)), protected)}


FORMAT = TorchScriptFormat()
