"""Benchmark: full audits of the bundled fixtures, and batched vs one-class-at-a-time Neural Cleanse.

    .venv/bin/python bench/bench_audit.py            # prints markdown tables
    .venv/bin/python bench/bench_audit.py --skip-audits
    .venv/bin/python bench/bench_audit.py --resnet   # only the zoo's ResNet-18 pair (build it first:
                                                     # fixtures/build_zoo.py --only resnet18_clean resnet18_badnets ...)

Each audit runs as its own `auditor scan` process (wall time and peak RSS from wait4). The NC
comparison runs both variants in this process with identical settings, seed and batches, and
prints the speed ratio; both must reach the same verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "fixtures" / "models"
ZOO = ROOT / "fixtures" / "zoo"
AUDITOR = ([str(Path(sys.executable).parent / "auditor")] if (Path(sys.executable).parent / "auditor").exists()
           else [sys.executable, "-m", "auditor.cli"])  # e.g. run from a checkout with PYTHONPATH set
DEVICE = "auto"
# (model file, its true trigger or None for a clean model)
CASES = [
    (MODELS / "badnets_cnn.pt", MODELS / "badnets_cnn.trigger.json"), (MODELS / "badnets_cnn.onnx", MODELS / "badnets_cnn.trigger.json"),
    (MODELS / "clean_cnn.pt", None), (MODELS / "clean_cnn.onnx", None),
]
RESNET_CASES = [(ZOO / "resnet18_badnets.pt", ZOO / "resnet18_badnets.trigger.json"), (ZOO / "resnet18_clean.pt", None)]


def run_audit(model: Path, trigger: Path | None, out: Path) -> dict:
    args = [*AUDITOR, "scan", str(model), "-q", "--output-dir", str(out), "--json", str(out / f"{model.name}.json"),
            "--html", str(out / f"{model.name}.html"), "--device", DEVICE]
    if trigger:
        args += ["--trigger", str(trigger)]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    result = json.loads((out / f"{model.name}.json").read_text())
    return {"result": result, "exit": os.waitstatus_to_exitcode(status), "wall": wall, "rss_mb": usage.ru_maxrss / 1024}


def pct(v):
    return "—" if v is None else f"{100 * v:.2f}"


def audits(cases) -> None:
    print("## Full audits (default settings: 10 clean samples per class, generative scan + activation-edit + repair)\n")
    print("| model | exit | flagged | top anomaly index | C-ACC before → after (%) | true ASR before → after (%) | after: to the target without the trigger / moved by it (%) "
          "| scan before (s) | defense (s) | wall (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model, trigger in cases:
            r = run_audit(model, trigger, Path(tmp))
            res = r["result"]
            before, after = res["metrics"]["before"] or {}, res["metrics"].get("after") or {}
            scan = res.get("scan") or {}
            top = max([a for a in scan.get("anomaly_index") or [] if a is not None] or [float("nan")])
            acc = f"{pct(before.get('c_acc'))} → {pct(after.get('c_acc'))}" if after else pct(before.get("c_acc"))
            asr = f"{pct(before.get('asr'))} → {pct(after.get('asr'))}" if trigger else "—"
            split = f"{pct(after.get('asr_no_trigger'))} / {pct(after.get('asr_trigger_flips'))}" if trigger and after else "—"
            print(f"| {model.name} | {r['exit']} | {scan.get('flagged_classes')} | {top:.2f} | {acc} | {asr} | {split} | "
                  f"{res['timings'].get('scan_before', 0):.1f} | {res['timings'].get('defense', 0):.1f} | {r['wall']:.1f} | {r['rss_mb']:.0f} |")
    print()


def nc_batched_vs_loop(model: Path) -> None:
    import torch

    from auditor.config import AuditConfig
    from auditor.scans.neural_cleanse import NeuralCleanseParams, anomaly_index, neural_cleanse
    from auditor.session import AuditSession

    session = AuditSession(AuditConfig(model=model, device=DEVICE), progress=lambda m: None)
    session.prepare()
    handle, fit = session.handle, session.split.fit
    params = NeuralCleanseParams()
    start = time.perf_counter()
    batched = neural_cleanse(handle, fit.x, params=params)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    norms = []
    for c in range(handle.num_classes):
        norms.append(neural_cleanse(handle, fit.x, params=params, classes=[c]).norms[0])
    t_loop = time.perf_counter() - start
    loop_index = anomaly_index(torch.tensor(norms)).tolist()
    threshold = AuditConfig(model=Path("x")).anomaly_threshold
    flag_b = [c for c, a in enumerate(batched.anomaly_index) if a > threshold]
    flag_l = [c for c, a in enumerate(loop_index) if a > threshold]
    print(f"| {model.name} | {t_batched:.1f} | {t_loop:.1f} | {t_loop / t_batched:.1f}× | {flag_b} | {flag_l} | "
          f"{max(abs(a - b) for a, b in zip(batched.norms, norms)):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-audits", action="store_true")
    parser.add_argument("--skip-nc", action="store_true", help="skip the batched vs per-class NC comparison")
    parser.add_argument("--resnet", action="store_true", help="the zoo's ResNet-18 models instead of the small CNNs")
    parser.add_argument("--device", default="auto", help="passed to every audit: auto, cpu, cuda or cuda:N")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    cases = RESNET_CASES if args.resnet else CASES
    missing = [str(m) for m, _ in cases if not m.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: build them with fixtures/build_zoo.py (see its docstring)")
    import torch

    from auditor.model import resolve_device

    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device} ({where})\n")
    if not args.skip_audits:
        audits(cases)
    if args.skip_nc:
        return
    print("## Neural Cleanse: batched over classes vs one class at a time (same settings, seed, batches)\n")
    print("| model | batched (s) | per-class loop (s) | speed-up | flagged (batched) | flagged (loop) | max mask-norm difference |")
    print("|---|---|---|---|---|---|---|")
    for model, _ in cases:
        if model.suffix == ".pt":
            nc_batched_vs_loop(model)


if __name__ == "__main__":
    main()
