"""What a data-free verdict is worth: the scans on inputs synthesized from the model (`--data none`)
over the zoo, backdoored and clean.

    .venv/bin/python bench/bench_data_free.py                    # every zoo model, generative + neural-cleanse
    .venv/bin/python bench/bench_data_free.py --models badnets_cnn clean_cnn --scans neural-cleanse

Per model: how many inputs the synthesis kept and its time, then per scan the flagged classes
(under the default thresholds), the most suspicious class and the scan's time. The same scans on
real data at the same seed are in docs/benchmarks.md ("Scans over seeds"). Each model runs in a
child process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_defenses import BACKDOORED, model_path  # noqa: E402  (bench/ is on sys.path when a script in it runs)

CLEAN = ["clean_cnn", "clean_s2", "clean_s3", "clean_s4", "clean_s5", "clean_s6"]


def run_one(stem: str, scans: list[str], seed: int, per_class: int) -> dict:
    from auditor.config import AuditConfig
    from auditor.loading import LoadRequest, load_model
    from auditor.registry import SCANS
    from auditor.scans.base import ScanThresholds
    from auditor.synthesis import SynthesisParams, synthesized_split
    from auditor.triggers import load_trigger
    import auditor.scans  # noqa: F401

    path = model_path(stem)
    handle = load_model(LoadRequest(path=path))
    thresholds = ScanThresholds.from_config(AuditConfig(model=path))
    start = time.perf_counter()
    split = synthesized_split(handle, SynthesisParams(per_class=2 * per_class), seed)
    out = {"kept": len(split.fit) + len(split.eval), "asked": 2 * per_class * handle.num_classes,
           "synthesis_seconds": time.perf_counter() - start, "scans": {}}
    trigger_file = path.with_suffix(".trigger.json")
    if trigger_file.exists():
        c, h, w = handle.input_shape
        trigger = load_trigger(trigger_file, c, h, w)
        out["target"] = trigger.target
        x = split.eval.x[split.eval.y != trigger.target] if trigger.target is not None else split.eval.x
        wanted = trigger.target_labels(split.eval.y[split.eval.y != trigger.target], handle.num_classes) \
            if trigger.target is not None else trigger.target_labels(split.eval.y, handle.num_classes)
        out["trigger_fires"] = float((handle.predict(trigger.apply(x)) == wanted).float().mean())
    for scan in scans:
        result = SCANS.get(scan).factory(handle, split, {}, seed, None)
        top = result.ranking()[0]
        out["scans"][scan] = {"flagged": result.flagged(thresholds), "top": top, "top_evidence": result.describe_class(top),
                              "seconds": result.seconds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", default=BACKDOORED + CLEAN)
    parser.add_argument("--scans", nargs="*", default=["generative", "neural-cleanse"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=10, help="as --clean-samples: twice this many are synthesized")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.scans, args.seed, args.per_class), default=float))
        return
    print("| model | target | synthesized inputs kept | the true trigger on them | synthesis (s) | "
          + " | ".join(f"{s}: flagged (top class, evidence) | {s} (s)" for s in args.scans) + " |")
    print("|---|---|---|---|---|" + "---|---|" * len(args.scans))
    for stem in args.models:
        proc = subprocess.run([sys.executable, __file__, "--child", stem, "--seed", str(args.seed), "--per-class",
                               str(args.per_class), "--scans", *args.scans], capture_output=True, text=True)
        try:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            print(f"| {stem} | error: {(proc.stderr.strip().splitlines() or ['no output'])[-1]} |", flush=True)
            continue
        fires = f"{100 * r['trigger_fires']:.0f}%" if "trigger_fires" in r else "—"
        target = "all-to-all" if "target" in r and r["target"] is None else r.get("target", "— (clean)")
        cells = " | ".join(f"**{s['flagged'] or 'none'}** ({s['top']}: {s['top_evidence']})) | {s['seconds']:.0f}"
                           for s in r["scans"].values())
        print(f"| {stem} | {target} | {r['kept']}/{r['asked']} | {fires} | {r['synthesis_seconds']:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
