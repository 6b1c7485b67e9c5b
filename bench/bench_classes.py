"""Scan cost against the number of classes (issue 18, item 3: class scheduling).

The same CIFAR-style CNN trained on one rendered task at 10, 100 and 1,000 classes with the same planted
checkerboard (`fixtures/build_many.py`), scanned by the default generative scan in this process, one
after the other: the 10-class scan is the baseline every ratio is taken to. Printed per model and seed:
scan seconds and ratio, whether the target was flagged (and what else), where the screen ranked it,
how many classes ran the full search, the image passes the cost model prices, and peak memory.

    python fixtures/build_many.py                       # once, about 4-8 minutes per model
    python bench/bench_classes.py [--seeds 0 1] [--models many10_badnets many1000_badnets]
    python bench/bench_classes.py --unscheduled many100_badnets   # the same scan with every class in full
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_scans import open_session  # noqa: E402

MANY = HERE.parent / "fixtures" / "zoo" / "many"
MODELS = ["many10_badnets", "many100_badnets", "many1000_badnets"]


def scan_one(name: str, seed: int, per_class: int, params: dict, summaries: Path | None = None) -> dict:
    from auditor.registry import SCANS

    session = open_session(str(MANY / f"{name}.pt"), "generative", per_class, seed, data=str(MANY / f"{name}.data.npz"))
    if session.errors:
        return {"model": name, "error": "; ".join(session.errors.values())}
    handle = session.handle
    scan = SCANS.get("generative")
    passes = scan.params_type(seed=seed, **params).image_passes(handle.num_classes)
    start = time.perf_counter()
    result = scan.factory(handle, session.split, params, seed, None)
    seconds = time.perf_counter() - start
    target = (handle.info.metadata.get("trigger") or {}).get("target")
    flagged = session.flagged(result)
    row = {"model": name, "classes": handle.num_classes, "seed": seed, "seconds": round(seconds, 1), "flagged": flagged,
           "target": target, "found": target in flagged, "index_rank": result.ranking().index(target),
           "target_index": None if result.anomaly_index[target] is None else round(result.anomaly_index[target], 2), "priced_passes": passes,
           "fit": len(session.split.fit), "eval": len(session.split.eval),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
           "evidence": {c: result.evidence(c, session.thresholds, str(c)) for c in flagged},
           "top_indices": sorted(((round(a, 2), c) for c, a in enumerate(result.anomaly_index) if a is not None), reverse=True)[:8]}
    if summaries is not None:
        summaries.mkdir(parents=True, exist_ok=True)
        (summaries / f"{name}.s{seed}{'.unscheduled' if 'schedule_above' in params else ''}.json").write_text(json.dumps(result.summary()) + "\n")
    if result.schedule is not None:
        s = result.schedule
        row.update({"full_search": len(s.full), "screen_rank": s.screen_order.index(target), "in_shortlist": target in s.shortlist,
                    "in_logit_shortlist": target in s.logit_shortlist, "screen_seconds": round(s.screen_seconds, 1)})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--unscheduled", nargs="*", default=[], help="also scan these with every class in full (schedule_above=0)")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    parser.add_argument("--summaries", type=Path, help="a folder: write each scan's full JSON summary there")
    parser.add_argument("--scan-params", type=json.loads, default={}, help='generative scan parameters for every run, JSON')
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        base = None
        runs = [(m, dict(args.scan_params)) for m in args.models] + [(m, {**args.scan_params, "schedule_above": 0}) for m in args.unscheduled]
        for name, params in runs:
            if not (MANY / f"{name}.pt").exists():
                print(f"{name}: not built (python fixtures/build_many.py --only {name})", flush=True)
                continue
            row = scan_one(name, seed, args.per_class, params, args.summaries)
            row["scheduled"] = "full_search" in row
            if name == "many10_badnets" and "schedule_above" not in params:
                base = row.get("seconds")
            if base and "seconds" in row:
                row["ratio_to_10"] = round(row["seconds"] / base, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| model | classes | seed | scheduled | full search | scan (s) | x 10-class | target | screen rank | flagged | found | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | error: {r['error']} |")
            continue
        print(f"| {r['model']} | {r['classes']} | {r['seed']} | {'yes' if r['scheduled'] else 'no'} | "
              f"{r.get('full_search', r['classes'])} | {r['seconds']} | {r.get('ratio_to_10', '-')} | {r['target']} | "
              f"{r.get('screen_rank', '-')} | {r['flagged'][:6]} | {'yes' if r['found'] else 'NO'} | {r['peak_rss_gib']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
