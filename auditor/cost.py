"""What a scan will cost on this model and machine, said before it starts: the scan's own count of
image passes at its full budget (forward and backward; early stopping only ends work sooner) divided
by the images per second this model does here, measured on a few batches. Measured against the
scans' real times in docs/benchmarks.md ("Cost estimate"): the generative scan took 45-53% of it."""

from __future__ import annotations

import time

import torch

from .model import ModelHandle


def optimisation_throughput(handle: ModelHandle, batch_size: int = 32, repeats: int = 3, mode=None) -> float:
    """Images per second through forward and a backward pass to the input, as the scans run them
    (in `mode`, an auditor.compute.ComputeMode; None: float32)."""
    from .scans.neural_cleanse import _freeze, _restore

    x = torch.rand(batch_size, *handle.input_shape, device=handle.device)

    def one_pass():
        image = x.clone().requires_grad_(True)
        torch.autograd.grad(handle.forward(image).sum(), image)

    flags = _freeze(handle.module)
    try:
        with handle.optimising(mode):
            one_pass()  # the first pass pays for allocation and lazy initialisation
            if handle.device.type == "cuda":
                torch.cuda.synchronize(handle.device)
            start = time.perf_counter()
            for _ in range(repeats):
                one_pass()
            if handle.device.type == "cuda":
                torch.cuda.synchronize(handle.device)
            return batch_size * repeats / max(time.perf_counter() - start, 1e-9)
    finally:
        _restore(handle.module, flags)


def scan_full_budget(params_type, params: dict, handle: ModelHandle, mode=None) -> dict | None:
    """{"image_passes", "images_per_second", "seconds"} at the scan's full budget, for a scan whose
    parameters count their image passes (`image_passes(num_classes)`), else None."""
    if params_type is None or not hasattr(params_type, "image_passes"):
        return None
    passes = params_type(**params).image_passes(handle.num_classes)
    rate = mode.images_per_second if mode is not None and mode.images_per_second else optimisation_throughput(handle)
    return {"image_passes": passes, "images_per_second": rate, "seconds": passes / rate}
