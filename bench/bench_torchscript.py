"""TorchScript exports of real architectures through the gate: accepted, and how long the two code passes take.

    .venv/bin/python bench/bench_torchscript.py [--models resnet18 mobilenet_v3_small ...]

Each torchvision classification model is scripted and traced (random weights, 10 classes), saved with
torch.jit.save, and loaded through `auditor.loading.load_model`: container check, pickle scan, the
source pass, torch.jit.load, the compiled-graph pass, a forward probe. A refusal of an honest export is
a false alarm of the allow-list; the script prints each and exits 1 if there is any. Exports that pass
the gate but return a named tuple rather than logits (scripted GoogLeNet / Inception) are counted apart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.errors import AuditorInputError  # noqa: E402
from auditor.loading import LoadRequest, load_model  # noqa: E402
from auditor.loading.torchscript_code import inspect_graphs, inspect_sources  # noqa: E402

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s",
          "densenet121", "vgg11", "squeezenet1_0", "shufflenet_v2_x0_5", "regnet_x_400mf", "convnext_tiny",
          "vit_b_16", "swin_t", "maxvit_t", "googlenet", "inception_v3", "mnasnet0_5", "alexnet"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    refused, unusable = [], []
    print("| model | export | code files | source pass s | graph pass s | whole load s | verdict |")
    print("|---|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            size = 299 if name == "inception_v3" else 224
            net = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
            for export in ("script", "trace"):
                path = Path(tmp) / f"{name}.{export}.pt"
                module = (torch.jit.script(net) if export == "script"
                          else torch.jit.trace(net, torch.zeros(1, 3, size, size), check_trace=False, strict=False))
                torch.jit.save(module, str(path))
                start = time.perf_counter()
                with zipfile.ZipFile(path) as zf:
                    code = inspect_sources(zf)
                source_s = time.perf_counter() - start
                start = time.perf_counter()
                graph_findings = inspect_graphs(torch.jit.load(str(path)), code.classes)
                graph_s = time.perf_counter() - start
                start = time.perf_counter()
                try:
                    load_model(LoadRequest(path, input_shape=(3, size, size)))
                    verdict = "accepted"
                except AuditorInputError as exc:
                    text = str(exc).replace(f"{path}: ", "")
                    if text.startswith("refused:"):  # the gate's refusal: a false alarm on an honest export
                        verdict = "REFUSED: " + text[:120]
                        refused.append(f"{name} ({export}): {exc}")
                    else:  # loaded past the gate, then not usable as a classifier
                        verdict = "not a logits model: " + text[:80]
                        unusable.append(name)
                load_s = time.perf_counter() - start
                if code.findings or graph_findings:
                    verdict += f" ({len(code.findings)} source / {len(graph_findings)} graph findings)"
                print(f"| {name} | {export} | {len(code.members)} | {source_s:.2f} | {graph_s:.2f} | {load_s:.2f} | {verdict} |",
                      flush=True)
    total = len(args.models) * 2
    print(f"\n{total - len(refused)} of {total} exports pass the code passes; {len(unusable)} of those return "
          "something other than a logits tensor")
    for line in refused:
        print("refused:", line)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
