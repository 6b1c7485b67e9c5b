"""Neural Cleanse at real model sizes: ResNet-18 / ResNet-50 at 224x224 with a 1,000-class head.

    .venv/bin/python bench/bench_gpu.py [--device cuda] [--size 224] [--steps 60]

Prints, per architecture (random weights, seed 0: these are timings, not detections):
- training-step throughput (forward + backward, images/s) at batch 32 and 256: what every scan,
  defense and repair step is made of, and the basis of a cost estimate;
- batched Neural Cleanse over 10 classes vs the same 10 classes one at a time, same parameters,
  seed and `--steps` optimisation steps each (early stopping off, so both do the same work), and
  the ratio;
- batched Neural Cleanse over 10, 20 and 40 classes (`--scaling-steps` steps each): seconds per
  step and peak device memory, extrapolated to the whole 1,000-class head at the default 600 steps.
Fit images are the bundled Fashion-MNIST subset, resized and repeated to 3 channels (the scan
needs pixels of the input size, not the task's own images, to cost the same).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.model import ModelHandle, ModelInfo, resolve_device  # noqa: E402
from auditor.scans.neural_cleanse import NeuralCleanseParams, neural_cleanse  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_images(size: int, count: int = 100) -> torch.Tensor:
    with np.load(ROOT / "fixtures" / "data" / "fashion_mnist_eval.npz") as npz:
        x = torch.from_numpy(npz["x"][:count]).float()
    x = x / 255.0 if x.max() > 1 else x
    x = x.reshape(count, 1, 28, 28)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)


def handle_for(arch: str, classes: int, size: int, device: torch.device) -> ModelHandle:
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None, num_classes=classes).eval()
    info = ModelInfo(path=arch, sha256="", format="state_dict", size_bytes=0,
                     param_count=sum(p.numel() for p in net.parameters()), input_shape=(3, size, size),
                     num_classes=classes, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), arch=arch)
    return ModelHandle(net, info, device=device)


def throughput(handle: ModelHandle, size: int, batch: int, device: torch.device, repeats: int = 5) -> float:
    x = torch.rand(batch, 3, size, size, device=device, requires_grad=True)
    for _ in range(2):  # warm-up: kernel selection, allocator
        handle.forward(x).logsumexp(1).sum().backward()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        handle.forward(x).logsumexp(1).sum().backward()
    sync(device)
    return batch * repeats / (time.perf_counter() - start)


def timed_nc(handle: ModelHandle, fit_x: torch.Tensor, params: NeuralCleanseParams, classes: list[int],
             device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    neural_cleanse(handle, fit_x, params=params, classes=classes)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return time.perf_counter() - start, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--scaling", nargs="+", type=int, default=[10, 20, 40])
    parser.add_argument("--scaling-steps", type=int, default=10)
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, input 3x{args.size}x{args.size}, {args.classes} classes\n", flush=True)
    fit_x = fit_images(args.size)
    params = replace(NeuralCleanseParams(), max_steps=args.steps, early_stop_patience=10**9)
    for arch in args.archs:
        handle = handle_for(arch, args.classes, args.size, device)
        ips = {b: throughput(handle, args.size, b, device) for b in (32, 256)}
        print(f"### {arch}, {handle.info.param_count / 1e6:.1f} M parameters\n")
        print(f"fwd+bwd: {ips[32]:.0f} images/s at batch 32, {ips[256]:.0f} at batch 256\n", flush=True)
        ten = list(range(10))
        timed_nc(handle, fit_x, replace(params, max_steps=2), ten[:2], device)  # warm-up
        batched, _ = timed_nc(handle, fit_x, params, ten, device)
        loop = sum(timed_nc(handle, fit_x, params, [c], device)[0] for c in ten)
        print("| NC over classes 0-9 | seconds | per step |\n|---|---|---|")
        print(f"| batched (10 classes a step) | {batched:.1f} | {batched / args.steps * 1000:.0f} ms |")
        print(f"| one class at a time | {loop:.1f} | {loop / args.steps / 10 * 1000:.0f} ms per class |")
        print(f"| speed-up | {loop / batched:.1f}× | |\n", flush=True)
        print(f"| batched NC, classes a step | s per step | peak device memory (GiB) | {args.classes} classes at this rate, "
              f"{NeuralCleanseParams().max_steps} steps (min) |\n|---|---|---|---|")
        for k in args.scaling:
            try:
                seconds, peak = timed_nc(handle, fit_x, replace(params, max_steps=args.scaling_steps), list(range(k)), device)
            except torch.cuda.OutOfMemoryError:
                print(f"| {k} | out of device memory | | |", flush=True)
                torch.cuda.empty_cache()
                break
            per_step = seconds / args.scaling_steps
            whole = per_step * (args.classes / k) * NeuralCleanseParams().max_steps / 60
            print(f"| {k} | {per_step:.3f} | {peak:.1f} | {whole:.0f} |", flush=True)
        print()
        del handle
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
