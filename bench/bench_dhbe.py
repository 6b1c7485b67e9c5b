"""Benchmark DHBE (data-free) on the zoo's backdoored models, beside the defenses that need clean data.

    .venv/bin/python bench/bench_dhbe.py                                   # every zoo backdoor, 400 iterations
    .venv/bin/python bench/bench_dhbe.py --models badnets_cnn --iterations 100 300 600   # accuracy/time curve

Per model and iteration budget: true ASR (the model's own trigger file) and C-ACC before and after
DHBE alone (no repair step: that one needs clean samples), the target class's accuracy, DHBE's wall
time, and where its patch search ended. Beside it, with the known trigger and 10 clean samples per
class, nc-unlearn and activation-edit (+ repair), the defenses DHBE is meant to stand in for when
there is no data. Each model is measured in a child process; evaluation uses the committed
evaluation set less the fit split, as bench_defenses.py does.
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


def run_one(stem: str, iterations: int, seed: int, with_data: bool) -> dict:
    from auditor.config import AuditConfig
    from auditor.defenses import unlearn
    from auditor.registry import DEFENSES
    from auditor.session import AuditSession

    path = model_path(stem)
    session = AuditSession(AuditConfig(model=path, trigger=path.with_suffix(".trigger.json"), clean_samples=10, seed=seed),
                           progress=lambda m: None)
    session.prepare()
    if session.errors:
        return {"error": "; ".join(session.errors.values())}
    known = session.known_trigger
    out = {"target": known.target, "before": session.evaluation.measure(session.handle, known)}
    start = time.perf_counter()
    done = DEFENSES.get("dhbe").factory(session.handle, session.split.fit.subset(slice(0, 0)), [],
                                        {"iterations": iterations}, seed)
    out["dhbe"] = session.evaluation.measure(done.handle, known)
    out["dhbe_seconds"] = time.perf_counter() - start
    out["dhbe_stats"] = {k: v for k, v in done.stats.items() if k != "params"}
    if with_data:
        for name in ("nc-unlearn", "activation-edit"):
            t = time.perf_counter()
            result = unlearn(session.handle, session.split.fit, [known], name, {}, True, {}, seed)
            out[name] = session.evaluation.measure(result.final, known)
            out[f"{name}_seconds"] = time.perf_counter() - t
    return out


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def row(stem: str, iterations: int, r: dict) -> str:
    if "error" in r:
        return f"| {stem} | {iterations} | error: {r['error']} |"
    b, d, t = r["before"], r["dhbe"], r["target"]
    target = "—" if t is None else f"{pct(b['per_class_acc'][t])} → {pct(d['per_class_acc'][t])}"
    others = " | ".join(
        f"{pct(r[n]['asr'])} / {100 * (r[n]['c_acc'] - b['c_acc']):+.2f} ({r[n + '_seconds']:.0f} s)" if n in r else "—"
        for n in ("nc-unlearn", "activation-edit"))
    place = r["dhbe_stats"].get("patch_place")
    return (f"| {stem} | {iterations} | {pct(b['asr'])} → **{pct(d['asr'])}** | {pct(b['c_acc'])} → {pct(d['c_acc'])} "
            f"(**{100 * (d['c_acc'] - b['c_acc']):+.2f}**) | {target} | {r['dhbe_seconds']:.0f} | {tuple(place) if place else '—'} | "
            f"{others} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", default=BACKDOORED)
    parser.add_argument("--iterations", nargs="*", type=int, default=[400])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baselines", action="store_true", help="DHBE only (no nc-unlearn / activation-edit rows)")
    args = parser.parse_args()
    if args.child:
        stem, iterations, seed, with_data = args.child
        print(json.dumps(run_one(stem, int(iterations), int(seed), with_data == "1"), default=float))
        return
    print("| model | DHBE iterations | true ASR before → after DHBE | C-ACC before → after (Δ) | target-class acc | "
          "DHBE wall (s) | patch place found | nc-unlearn + repair, known trigger, 10/class: ASR / ΔC-ACC | "
          "activation-edit + repair, same |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stem in args.models:
        for i, iterations in enumerate(args.iterations):
            with_data = "0" if args.no_baselines or i else "1"
            proc = subprocess.run([sys.executable, __file__, "--child", stem, str(iterations), str(args.seed), with_data],
                                  capture_output=True, text=True)
            try:
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                result = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            print(row(stem, iterations, result), flush=True)


if __name__ == "__main__":
    main()
