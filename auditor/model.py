"""ModelHandle: one loaded model, whatever its file format, seen as pixels -> logits."""

from __future__ import annotations

import copy
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import AuditorInputError

if TYPE_CHECKING:
    from .compute import ComputeMode


@dataclass(frozen=True)
class ModelInfo:
    path: str
    sha256: str
    format: str  # "state_dict", "safetensors", "torchscript", "onnx", or "repaired"
    size_bytes: int
    param_count: int
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arch: str
    opset: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    device: str = "cpu"  # where scans, defenses and torch evaluation run
    ort_providers: tuple[str, ...] = ()  # onnxruntime's providers for an ONNX file's own predictions
    external_files: tuple[str, ...] = ()  # files beside the model its weights were read from (ONNX external data)


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` (a CUDA device when torch sees one, else the CPU), `cpu`, `cuda` or `cuda:N`.

    Asking for a GPU that is not there is the user's error (exit 2), never a silent CPU run."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise AuditorInputError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(match.group(1) or 0)
    if index >= count:
        seen = f"torch sees {count} CUDA device{'s' if count != 1 else ''}" if count else "torch sees no CUDA device here"
        raise AuditorInputError(f"--device {spec}: {seen}; use --device cpu or auto")
    return torch.device("cuda", index)


def pick_device() -> torch.device:
    return resolve_device("auto")


class ModelHandle:
    """Pixels in [0, 1] go in; normalisation is the handle's job, so scans and defenses never see it.

    `module` is a torch module for gradient work (for ONNX files, the onnx2torch conversion);
    `ort_session`, when present, is what predictions use (the file as it will run in production).
    """

    def __init__(self, module: nn.Module, info: ModelInfo, ort_session=None, device: torch.device | None = None):
        self.device = device or pick_device()
        self.module = module.to(self.device).eval()
        self.info = info
        self.ort_session = ort_session
        self._mean = torch.tensor(info.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(info.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._autocast: torch.dtype | None = None  # set only inside optimising(): see there
        self._channels_last = False  # likewise

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.info.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable logits of a pixel-space batch (on the handle's device), always float32. Inside
        `optimising()` the model runs in the mode chosen there."""
        if self._autocast is None:
            return self._exact(x)
        with torch.autocast(self.device.type, dtype=self._autocast):
            return self.module(self._normalise(x)).float()

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.device) - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last and x.dim() == 4 else x

    def _exact(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, enabled=False):
            return self.module(self._normalise(x))

    @contextmanager
    def optimising(self, mode: "ComputeMode | None"):
        """Trigger searches run the model forward and backward hundreds of times to optimise an input;
        `mode` (auditor.compute, measured on this machine) may run those passes in bfloat16 and/or the
        channels-last layout. Predictions (`logits`, every ASR and accuracy figure) stay float32."""
        if mode is None or (mode.dtype == torch.float32 and not mode.channels_last):
            yield
            return
        if mode.channels_last:
            self.module.to(memory_format=torch.channels_last)
            self._channels_last = True
        self._autocast = None if mode.dtype == torch.float32 else mode.dtype
        try:
            yield
        finally:
            self._autocast = None
            if mode.channels_last:
                self.module.to(memory_format=torch.contiguous_format)
                self._channels_last = False

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, batch_size: int = 1024, backend: str = "auto") -> torch.Tensor:
        """Logits on the CPU, streamed in batches. backend: auto (onnxruntime when loaded), torch, onnxruntime."""
        use_ort = self.ort_session is not None and backend in ("auto", "onnxruntime")
        if backend == "onnxruntime" and self.ort_session is None:
            raise ValueError("this model has no onnxruntime session")
        out = []
        for i in range(0, len(x), batch_size):
            chunk = x[i : i + batch_size]
            if use_ort:
                out.append(self.ort_session.run(((chunk - self._mean.cpu()) / self._std.cpu()).numpy()))
            else:
                out.append(self._exact(chunk).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    @property
    def normalisation_stated(self) -> bool:
        """False when the input is taken as-is (mean 0, std 1: nothing said what the data's statistics are)."""
        return not (bool(torch.all(self._mean == 0)) and bool(torch.all(self._std == 1)))

    def predict(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.logits(x, **kwargs).argmax(1)

    def copy_for_editing(self) -> nn.Module:
        """A deep copy of the torch module: defenses edit this, never the handle's own module."""
        return copy.deepcopy(self.module)

    def derived(self, module: nn.Module, **info_changes) -> "ModelHandle":
        """A new handle around an edited module (no onnxruntime session: it has no file yet)."""
        return ModelHandle(module, replace(self.info, **info_changes), ort_session=None, device=self.device)
