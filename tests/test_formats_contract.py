"""Every registered model format keeps one contract, and a new one joins with one module and one line.

The contract, run on every entry of `auditor.loading.formats.FORMATS` (and on a toy format defined
here, to show what adding one takes): a model written by the format's `write` is recognised by
content as that format, passes the static safety inspection, loads back with the same logits, and
loading neither modifies the file nor depends on anything but its bytes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor.loading import LoadRequest, load_model
from auditor.loading import formats
from auditor.loading.formats import FileProbe, LoadedModule, detect
from auditor.loading.safety import inspect_file
from auditor.model import ModelHandle, ModelInfo
from auditor.outputs import repaired_model_file
from auditor.zoo import small_cnn

from conftest import file_state

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
SHAPE = (1, 28, 28)


class NpzWeightsFormat:
    """A toy format: a state_dict as an .npz archive of arrays. All it takes is this class and one line
    (`formats.FORMATS.insert(0, FORMAT)` in the fixture below): the contract tests pick it up."""

    name = "npz-weights"
    needs_arch = True
    folder = False

    def sniff(self, probe: FileProbe) -> bool:
        return probe.zip_names is not None and "auditor_npz_weights.npy" in probe.zip_names

    def label(self, probe: FileProbe) -> str:
        return self.name

    def inspect(self, probe: FileProbe, report, max_tensor_bytes: int) -> None:
        from auditor.loading.safety import container_findings

        container_findings(probe.path, report)
        report.info.append("numpy arrays read with allow_pickle=False")

    def load(self, request, probe: FileProbe, meta: dict, meta_path, device) -> LoadedModule:
        from auditor.loading.torch_files import module_for_weights

        with np.load(probe.path, allow_pickle=False) as npz:
            state = {k: torch.from_numpy(npz[k].copy()) for k in npz.files if k != "auditor_npz_weights"}
        module, arch, _ = module_for_weights(state, request, meta, meta_path)
        return LoadedModule(module, arch)

    def write(self, handle, source, output_dir: Path, stem: str, protected) -> dict[str, Path]:
        from auditor.outputs import atomic_write

        arrays = {k: v.detach().cpu().numpy() for k, v in handle.module.state_dict().items()}

        def save(path: Path) -> None:
            with path.open("wb") as fh:
                np.savez(fh, auditor_npz_weights=np.zeros(1), **arrays)

        return {"npz": atomic_write(output_dir / f"{stem}.repaired.npz", save, protected)}


TOY = NpzWeightsFormat()
formats.FORMATS.insert(0, TOY)  # the registration line (first: it is a zip, which state_dict would claim)


@pytest.fixture(autouse=True, scope="module")
def toy_format_unregistered_after():
    yield
    formats.FORMATS.remove(TOY)


def _handle(fmt_name: str) -> ModelHandle:
    torch.manual_seed(3)
    net = small_cnn().eval()
    info = ModelInfo(path=f"/nowhere/model.{fmt_name}", sha256="", format=fmt_name, size_bytes=0, param_count=0,
                     input_shape=SHAPE, num_classes=10, mean=(0.5,), std=(0.25,), arch="auditor.zoo:small_cnn")
    return ModelHandle(net, info, device=torch.device("cpu"))


FILE_FORMATS = [f for f in formats.FORMATS if not getattr(f, "folder", False)]
FOLDER_FORMATS = [f for f in formats.FORMATS if getattr(f, "folder", False)]


def _folder_source(fmt, tmp_path: Path) -> ModelHandle:
    """A folder format's source is a real hub folder (its write copies the folder's configs)."""
    from test_hub_folders import timm_folder, transformers_folder

    make = {"transformers": transformers_folder, "timm": timm_folder}[fmt.name]
    make(tmp_path / "source")
    return load_model(LoadRequest(tmp_path / "source", device="cpu"))


@pytest.mark.parametrize("fmt", FOLDER_FORMATS, ids=lambda f: f.name)
def test_folder_format_contract(fmt, tmp_path):
    source = _folder_source(fmt, tmp_path)
    found, _ = detect(Path(source.info.path), 1)
    assert found is fmt
    assert inspect_file(Path(source.info.path)).ok
    written = fmt.write(source, source, tmp_path / "out", "model", protected=(Path(source.info.path),))
    out = Path(repaired_model_file(written))
    assert detect(out, 1)[0] is fmt and inspect_file(out).ok
    reloaded = load_model(LoadRequest(out, device="cpu"))
    x = torch.rand(3, *source.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(reloaded.logits(x), source.logits(x), atol=1e-5)
    assert (reloaded.input_shape, reloaded.info.mean, reloaded.info.std) == (source.input_shape, source.info.mean, source.info.std)


def _writable_handle(fmt):
    """A handle the format can write: a TorchScript archive is written from a scripted module."""
    handle = _handle(fmt.name)
    if fmt.name == "torchscript":
        handle.module = torch.jit.script(handle.module)
    return handle


@pytest.mark.parametrize("fmt", FILE_FORMATS, ids=lambda f: f.name)
def test_format_contract(fmt, tmp_path):
    handle = _writable_handle(fmt)
    written = fmt.write(handle, handle, tmp_path, "model", protected=())
    model_file = Path(repaired_model_file(written))
    before = file_state(model_file)

    found, probe = detect(model_file, model_file.stat().st_size)
    assert found is fmt, f"{model_file.name} sniffed as {found.name}"
    report = inspect_file(model_file)
    assert report.ok, (report.findings, report.problems)

    request = LoadRequest(model_file, arch="auditor.zoo:small_cnn" if fmt.needs_arch else None, input_shape=SHAPE,
                          mean=(0.5,), std=(0.25,), device="cpu")
    loaded = load_model(request)
    again = load_model(request)
    assert loaded.info.format == fmt.name and loaded.num_classes == 10
    x = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = handle.logits(x)
        assert torch.allclose(loaded.logits(x), expected, atol=1e-4)
        assert torch.equal(loaded.logits(x), again.logits(x))
    assert file_state(model_file) == before, "loading changed the file"


@pytest.mark.parametrize("fmt", FILE_FORMATS, ids=lambda f: f.name)
def test_format_write_refuses_to_overwrite_an_input(fmt, tmp_path):
    from auditor.errors import AuditorInputError

    handle = _writable_handle(fmt)
    first = fmt.write(handle, handle, tmp_path, "model", protected=())
    victim = Path(repaired_model_file(first))
    before = file_state(victim)
    with pytest.raises(AuditorInputError, match="refusing to write over an input file"):
        fmt.write(handle, handle, tmp_path, "model", protected=(victim,))
    assert file_state(victim) == before


def test_sniffing_reads_content_not_the_extension(tmp_path):
    """A state_dict named .onnx is a state_dict; an ONNX file named .pt is ONNX."""
    from conftest import CLEAN_ONNX

    weights = tmp_path / "weights.onnx"
    torch.save(small_cnn().state_dict(), weights)
    assert detect(weights, weights.stat().st_size)[0].name == "state_dict"
    onnx_as_pt = tmp_path / "graph.pt"
    onnx_as_pt.write_bytes(CLEAN_ONNX.read_bytes())
    assert detect(onnx_as_pt, onnx_as_pt.stat().st_size)[0].name == "onnx"
    assert zipfile.is_zipfile(io.BytesIO(weights.read_bytes()))
