"""How the trigger searches run the model on this machine.

A scan spends nearly all its time pushing images forward and backward through the model to optimise
an input (a mask, a patch generator, a warp, a blend). bfloat16 autocast in the channels-last layout
does those passes 2-3x faster on a CPU with native bfloat16 (AVX-512 BF16 or AMX; measured on the
zoo, docs/benchmarks.md "Scan compute mode") and on a GPU that has it; a CPU without it emulates
bfloat16 and gets slower. So `auto` takes it exactly when the hardware says it has it, a fixed rule
rather than a timing race, because the same command on the same machine must give the same numbers.
bfloat16 rounds activations to 8 bits of mantissa during the optimisation only: every prediction a
verdict is read from (ASR, accuracy, the scans' held-out rates) stays float32 (ModelHandle.logits).
`float32` is the exact reference; a model with an op that cannot run in bfloat16 falls back to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import SCAN_PRECISIONS as PRECISIONS


@dataclass(frozen=True)
class ComputeMode:
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    images_per_second: float | None = None  # forward + backward, in this mode, measured here
    measured: dict = field(default_factory=dict)  # candidate name -> images/s (None: it failed to run)
    requested: str = "auto"
    native_bfloat16: bool = False  # the device has bfloat16 in hardware (what `auto` decides on)

    @property
    def name(self) -> str:
        return ("bfloat16" if self.dtype == torch.bfloat16 else "float32") + ("+channels-last" if self.channels_last else "")

    def summary(self) -> dict:
        return {"precision": "bfloat16" if self.dtype == torch.bfloat16 else "float32", "channels_last": self.channels_last,
                "requested": self.requested, "native_bfloat16": self.native_bfloat16,
                "images_per_second": None if self.images_per_second is None else round(self.images_per_second, 1),
                "measured": {k: None if v is None else round(v, 1) for k, v in self.measured.items()}}


def rates_text(measured: dict) -> str:
    """`float32 813, bfloat16+channels-last 1,924` (images/s); a mode that failed to run says so."""
    return ", ".join(f"{k} {v:,.0f}" if v else f"{k} failed" for k, v in measured.items())


def native_bfloat16(device: torch.device) -> bool:
    """Whether this device computes bfloat16 in hardware (emulated bfloat16 is slower than float32)."""
    try:
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        if device.type == "cpu":
            probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
            return any(bool(probe()) for probe in probes if probe is not None)
    except (RuntimeError, AssertionError, TypeError):
        pass
    return False


def choose_mode(handle, requested: str = "auto", batch_size: int = 32, repeats: int = 3) -> ComputeMode:
    """The mode the scans run in: float32, or bfloat16 + channels-last where asked for or (auto) where the
    hardware has it. Both are timed here (the speed goes in the report and the cost estimate)."""
    from dataclasses import replace

    from .cost import optimisation_throughput

    if requested not in PRECISIONS:
        raise ValueError(f"scan precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    exact = ComputeMode(requested=requested)
    reduced = ComputeMode(torch.bfloat16, channels_last=len(handle.input_shape) == 3, requested=requested)
    native = native_bfloat16(handle.device)
    want = {"float32": exact, "bfloat16": reduced}.get(requested) or (reduced if native else exact)
    rates: dict[str, float | None] = {}
    for mode in ([want] if want is exact else [exact, want]):
        try:
            rates[mode.name] = optimisation_throughput(handle, batch_size, repeats, mode)
        except (RuntimeError, TypeError, NotImplementedError):  # an op with no kernel in that dtype or layout
            rates[mode.name] = None
    if rates.get(want.name) is None:
        want = exact
    return replace(want, images_per_second=rates.get(want.name), measured=rates, native_bfloat16=native)
