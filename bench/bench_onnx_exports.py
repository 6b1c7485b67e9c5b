"""ONNX files as torch's default exporter writes them today, through the gate.

    .venv/bin/python bench/bench_onnx_exports.py [--models resnet18 ...] [--exporter dynamo|legacy]

Each torchvision classifier (random weights, seed 0, 10 classes) is exported the way a user would:
`torch.onnx.export(model, (x,), path)` with a batch-1 example (torch 2.14: the dynamo exporter,
opset 20, the batch fixed at 1), then loaded by `load_model`: onnxruntime runs the file as it is,
onnx2torch converts it for the gradient work. Printed per model: opset, whether it loads, and the
largest difference between onnxruntime and the torch conversion on a batch of 4 (relative to the
largest logit): what `check_backend_agreement` holds to 1e-3 in every audit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.errors import AuditorInputError  # noqa: E402
from auditor.loading import LoadRequest, load_model  # noqa: E402

MODELS = {"resnet18": 64, "resnet50": 64, "mobilenet_v2": 64, "mobilenet_v3_small": 64, "efficientnet_b0": 64,
          "densenet121": 64, "vgg11": 64, "squeezenet1_0": 64, "shufflenet_v2_x0_5": 64, "regnet_x_400mf": 64,
          "convnext_tiny": 64, "mnasnet0_5": 64, "alexnet": 64, "googlenet": 64, "vit_b_16": 224, "swin_t": 224}


def export(net, size: int, path: Path, exporter: str) -> None:
    x = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(net, (x,), str(path), verbose=False)
        else:
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo")
    args = parser.parse_args()
    import onnx

    print(f"torch {torch.__version__}, exporter {args.exporter}\n")
    print("| model | input | opset | loads | onnxruntime vs torch conversion (relative) | export s | load s |")
    print("|---|---|---|---|---|---|---|")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            size = MODELS.get(name, 64)
            torch.manual_seed(0)
            net = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
            for layer in net.modules():  # zero-initialised heads (ViT, GoogLeNet) would make every logit 0
                if isinstance(layer, torch.nn.Linear) and not layer.weight.any():
                    torch.nn.init.normal_(layer.weight, std=0.05)
            path = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            try:
                export(net, size, path, args.exporter)
            except Exception as exc:  # the exporter's own failure, not the gate's
                print(f"| {name} | {size} | — | export failed: {str(exc).splitlines()[0][:80]} | | | |", flush=True)
                continue
            export_s = time.perf_counter() - start
            opset = next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
            start = time.perf_counter()
            try:
                handle = load_model(LoadRequest(path, device="cpu"))
            except AuditorInputError as exc:
                failures += 1
                print(f"| {name} | {size} | {opset} | REFUSED: {str(exc).replace(str(path) + ': ', '')[:110]} | | {export_s:.1f} | |",
                      flush=True)
                continue
            load_s = time.perf_counter() - start
            x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                ort = handle.logits(x, backend="onnxruntime")
                conv = handle.logits(x, backend="torch")
            diff = ((ort - conv).abs().max() / ort.abs().max().clamp_min(1.0)).item()
            failures += diff > 1e-3
            print(f"| {name} | {size} | {opset} | yes | {diff:.1e}{' (over 1e-3)' if diff > 1e-3 else ''} | {export_s:.1f} | {load_s:.1f} |",
                  flush=True)
    print(f"\n{len(args.models) - failures} of {len(args.models)} load and agree within 1e-3")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
