"""safetensors: a JSON header and raw tensor bytes; no code at all."""

from __future__ import annotations

from pathlib import Path

from ..files import safetensors_header
from . import FileProbe, LoadedModule


def looks_like_safetensors(probe: FileProbe) -> bool:
    return probe.zip_names is None and safetensors_header(probe.path, probe.size) is not None


class SafetensorsFormat:
    name = "safetensors"
    needs_arch = True
    folder = False

    def sniff(self, probe: FileProbe) -> bool:
        return looks_like_safetensors(probe)

    def label(self, probe: FileProbe) -> str:
        return self.name

    def inspect(self, probe: FileProbe, report, max_tensor_bytes: int) -> None:
        from ..safety import safetensors_findings

        safetensors_findings(probe.path, probe.size, report)

    def load(self, request, probe: FileProbe, meta: dict, meta_path: Path | None, device) -> LoadedModule:
        from ..torch_files import load_safetensors_file, module_for_weights

        state = load_safetensors_file(probe.path, safetensors_header(probe.path, probe.size), probe.size)
        module, arch, note = module_for_weights(state, request, meta, meta_path)
        return LoadedModule(module, arch, notes=[note] if note else [])

    def write(self, handle, source, output_dir: Path, stem: str, protected: tuple[Path, ...]) -> dict[str, Path]:
        from safetensors.torch import save_file

        from ...outputs import atomic_write

        state = {k: v.detach().cpu().contiguous() for k, v in handle.module.state_dict().items()}
        path = output_dir / f"{stem}.repaired.safetensors"
        return {"safetensors": atomic_write(path, lambda p: save_file(state, str(p)), protected)}


FORMAT = SafetensorsFormat()
