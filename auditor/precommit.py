"""The pre-commit hook (.pre-commit-hooks.yaml, id `auditor-scan`): audit every model file being
committed, one `auditor scan` each, and fail the commit with the worst exit code (2 > 1 > 0).

pre-commit appends the staged file names after the hook's `args`, so the trailing arguments that are
existing files with a model suffix are the models and everything before them is passed to each scan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODEL_SUFFIXES = {".pt", ".pth", ".bin", ".onnx", ".safetensors", ".ckpt"}


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """(options for every scan, model files): models are the longest run of trailing model files."""
    cut = len(argv)
    while cut > 0 and Path(argv[cut - 1]).suffix.lower() in MODEL_SUFFIXES and Path(argv[cut - 1]).is_file():
        cut -= 1
    return argv[:cut], argv[cut:]


def main(argv: list[str] | None = None) -> int:
    options, models = split_arguments(list(sys.argv[1:] if argv is None else argv))
    worst = 0
    for model in models:
        code = subprocess.call([sys.executable, "-m", "auditor", "scan", model, *options])
        print(f"auditor-scan: {model}: exit {code}", file=sys.stderr)
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main())
