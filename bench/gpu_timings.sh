#!/usr/bin/env bash
# The GPU timings in docs/benchmarks-gpu.md, as one run on a lent GPU machine (no network there).
# Its image has torch, torchvision, onnx, onnxruntime, click, pytest, pillow, safetensors; the rest
# travels as wheels in .whl/ (onnx2torch, pytest-html, pytest-metadata). Writes under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-timings}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())" | tee -a "$OUT/gpu.txt"
timeout 170 python3 bench/bench_audit.py --device cuda 2>&1 | tee "$OUT/fixtures.md"
timeout 180 python3 bench/bench_gpu.py --device cuda 2>&1 | tee "$OUT/resnets.md"
# one whole default audit at 224x224: a random-weight ResNet-18 with 10 classes (a timing, not a verdict)
python3 -c "import torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), '/tmp/r18.pt')"
TIMEFORMAT='wall %R s'
{ time timeout 120 python3 -m auditor.cli scan /tmp/r18.pt --arch resnet18 --arch-arg num_classes=10 --input-size 3,224,224 \
    --device cuda --output-dir /tmp/r18-out --json "$OUT/r18_224.json" --html /tmp/r18-out/r.html > "$OUT/r18_224.log" 2>&1; } 2>> "$OUT/r18_224.log"
tail -40 "$OUT/r18_224.log"
