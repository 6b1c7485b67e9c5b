"""Benchmark the trigger-recovery scans over the fixture zoo.

    .venv/bin/python bench/bench_scans.py                    # every model, both scans
    .venv/bin/python bench/bench_scans.py --scans neural-cleanse --models clean_cnn badnets_cnn
    .venv/bin/python bench/bench_scans.py --models clean_cnn clean_s2 clean_s3 clean_s4 clean_s5 clean_s6 --seeds 0 1 2

For each model and scan (a fresh process each, so wall time and peak RSS are that scan's):
flagged?, flagged classes vs the true target, top anomaly index, recovered-trigger ASR of the
flagged class, the generative candidates' sampled-trigger ASR (and patch size), the class its warp search reaches most, wall time, peak RSS.
With `--reference STEM` (a clean model of the same task) the generative candidates' sampled
triggers are also tried on that model: a natural feature of the data carries over to another
clean model, a planted trigger should not.
    .venv/bin/python bench/bench_scans.py --scans generative --reference clean_cnn --seeds 0 1 2
    .venv/bin/python bench/bench_scans.py --scans max-margin --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRS = [ROOT / "fixtures" / "models", ROOT / "fixtures" / "zoo"]


def all_models(extra=()) -> list[Path]:
    return [p for d in [*DIRS, *map(Path, extra)] if d.is_dir() for p in sorted(d.glob("*.pt")) if ".repaired" not in p.name]


def transfer(session, result, reference: Path) -> list[str]:
    """Per generative candidate: its sampled triggers' mean ASR on the reference model and on the
    audited one, both on the audit's own clean samples."""
    from auditor.loading import LoadRequest, load_model
    from auditor.metrics import attack_success_rate

    ref = load_model(LoadRequest(path=reference))
    x, y = session.split.fit.x, session.split.fit.y
    out = []
    for d in getattr(result, "distributions", []):
        triggers = d.triggers(session.handle.input_shape)[:16]
        rate = lambda h: sum(attack_success_rate(h.predict(t.apply(x)), y, d.target) for t in triggers) / len(triggers)  # noqa: E731
        own, other = rate(session.handle), rate(ref)
        out.append(f"{d.target}: {100 * other:.0f}% of {100 * own:.0f}%")
    return out


def open_session(model: str, scan: str, per_class: int, seed: int, data: str | None = None):
    """The session `auditor scan MODEL --scan SCAN [--data DATA]` would prepare: model loaded, data split (quietly)."""
    from dataclasses import replace

    from auditor.config import AuditConfig
    from auditor.session import AuditSession
    import auditor.scans  # noqa: F401

    config = AuditConfig(model=Path(model), scan=scan, clean_samples=per_class, seed=seed)
    if data is not None:
        config = replace(config, data=data)
    session = AuditSession(config, progress=lambda m: None)
    session.prepare()
    return session


def run_one(model: str, scan: str, per_class: str, seed: str = "0", reference: str = "-", precision: str = "float32",
            scan_params: str = "{}") -> dict:
    """Child process: one scan of one model; prints a JSON line."""
    from auditor.registry import SCANS

    session = open_session(model, scan, int(per_class), int(seed))
    if session.errors:
        return {"error": "; ".join(session.errors.values())}
    from auditor.compute import choose_mode

    mode = choose_mode(session.handle, precision)  # as the CLI does (--scan-precision)
    with session.handle.optimising(mode):
        result = SCANS.get(scan).factory(session.handle, session.split, json.loads(scan_params), int(seed), None)
    flagged = session.flagged(result)
    meta = session.handle.info.metadata
    out = {"flagged": flagged, "target": (meta.get("trigger") or {}).get("target"),
           "planted_all_to_all": bool((meta.get("trigger") or {}).get("all_to_all")), "attack": meta.get("attack", "badnets" if meta.get("trigger") else None),
           "argmax": result.ranking()[0],
           # the scan's own statistic for its most suspicious class: NC's anomaly index, or max-margin's p-value
           "top_index": max(a for a in result.anomaly_index if a is not None) if hasattr(result, "anomaly_index") else None,
           "p_value": getattr(result, "p_value", None),
           "rec_asr": result.recovered_asr[flagged[0]] if flagged and getattr(result, "recovered_asr", None) else None,
           "generative": [d.summary() for d in getattr(result, "distributions", [])], "scan_seconds": result.seconds,
           "warp": result.warp.asr if getattr(result, "warp", None) is not None else None,
           "blend": result.blend.summary()["ratio"] if getattr(result, "blend", None) is not None else None,
           "all_to_all": result.all_to_all.summary() if getattr(result, "all_to_all", None) is not None else None,
           "mode": mode.name}
    if reference != "-" and Path(reference).resolve() != Path(model).resolve():
        out["transfer"] = transfer(session, result, Path(reference))
    return out


def measure(model: Path, scan: str, per_class: int, seed: int = 0, reference: Path | None = None, precision: str = "float32",
            scan_params: dict | None = None) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(model), scan, str(per_class), str(seed), str(reference or "-"), precision,
                             json.dumps(scan_params or {})],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    try:
        data = json.loads(out.decode().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        data = {"error": f"exit status {status}"}
    data.update(wall=wall, rss_mb=usage.ru_maxrss / 1024)
    return data


def verdict(r: dict) -> str:
    if "error" in r:
        return "error"
    backdoored = r["target"] is not None or r["planted_all_to_all"]
    if not backdoored:
        return "false alarm" if r["flagged"] else "ok (clean)"
    if r["planted_all_to_all"]:
        return "detected" if r["flagged"] else "not detected"
    if not r["flagged"]:
        return "MISSED"
    return "detected, right target" if r["flagged"][0] == r["target"] else f"flagged {r['flagged'][0]}, target {r['target']}"


def budgeted(scan: str, overrides: dict, fraction: float) -> dict:
    """The scan parameters `--budget` would run at this fraction of the step counts."""
    if fraction >= 1:
        return overrides
    from auditor.budget import scaled_params
    from auditor.registry import SCANS
    import auditor.scans  # noqa: F401

    return scaled_params(SCANS.get(scan).params, overrides, fraction)[0]


def _top_statistic(r: dict) -> str:
    return f"{r['top_index']:.2f}" if r["top_index"] is not None else f"p = {r['p_value']:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", help="model stems (default: every fixture and zoo model)")
    parser.add_argument("--scans", nargs="*", default=["neural-cleanse", "generative"])
    parser.add_argument("--clean-samples", type=int, default=10, help="clean samples per class (default: the CLI default, 10)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0],
                        help="seeds (which clean samples are drawn, and the scan's own); several: one row each")
    parser.add_argument("--dirs", nargs="*", default=[], help="more folders of models with sidecars (trigger target in their metadata)")
    parser.add_argument("--precisions", nargs="*", default=["float32"], choices=["float32", "auto", "bfloat16"],
                        help="--scan-precision values to run each scan in (default: float32, as the CLI); several: one row each")
    parser.add_argument("--scan-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scan parameter in every run, as the CLI's --scan-param (repeatable; numbers as JSON)")
    parser.add_argument("--reference", help="a clean model's stem: try the generative candidates' sampled triggers on it too")
    parser.add_argument("--fractions", nargs="*", type=float, default=[1.0],
                        help="run every step count at these fractions of its default, as --budget chooses them "
                             "(auditor/budget.py: 1, 0.5, 0.25, 0.125); several: one row each")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(*args.child), default=float))
        return
    overrides = {}
    for item in args.scan_param:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    models = [m for m in all_models(args.dirs) if not args.models or m.stem in args.models]
    reference = next((m for m in all_models() if m.stem == args.reference), None)
    if args.reference and reference is None:
        raise SystemExit(f"no fixture model {args.reference}")
    ref_col = f" sampled triggers' ASR on {args.reference} (of the audited model's) |" if reference else ""
    print("| model | attack | target | scan (compute) | flagged | verdict | top anomaly index or p-value (class) | recovered-trigger ASR | generative sampled ASR by class | warp ASR, top class | blend alpha ratio, lowest (class) | all-to-all mask ratio (flips, destinations) |"
          f"{ref_col} wall (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if reference else "") + "---|---|")
    for model, seed in ((m, s) for m in models for s in args.seeds):
        name = model.stem if args.seeds == [0] else f"{model.stem}, seed {seed}"
        for scan, precision, fraction in ((s, p, f) for s in args.scans for p in args.precisions for f in args.fractions):
            params = budgeted(scan, overrides, fraction)
            r = measure(model, scan, args.clean_samples, seed, reference, precision, params)
            if fraction < 1:
                from auditor.budget import fraction_text

                r["mode"] = f"{r.get('mode', precision)}, {fraction_text(fraction)} steps"
            if "error" in r:
                print(f"| {name} | | | {scan} | | error: {r['error']} | | | | | | |{' |' if reference else ''} {r['wall']:.1f} | {r['rss_mb']:.0f} |",
                      flush=True)
                continue
            gen = ", ".join(f"{g['target']}: {100 * g['sample_asr_mean']:.0f}% ({g['patch_size']}×{g['patch_size']})"
                            for g in r["generative"]) or "—"
            target = "all-to-all" if r["planted_all_to_all"] else ("—" if r["target"] is None else r["target"])
            rec = "—" if r["rec_asr"] is None else f"{100 * r['rec_asr']:.0f}%"
            warp = "—" if r["warp"] is None else "{1}: {0:.0f}%".format(*max((100 * a, c) for c, a in enumerate(r["warp"])))
            ratios = [(v, c) for c, v in enumerate(r.get("blend") or []) if v is not None]
            blend = "{0:.2f} ({1})".format(*min(ratios)) if ratios else "—"
            a2a = r.get("all_to_all")
            a2a = "—" if not a2a else ("not reached" if a2a["ratio"] is None else
                                       f"{a2a['ratio']:.2f} ({100 * a2a['flip_rate']:.0f}%, {a2a['destinations']})")
            ref = f" {', '.join(r.get('transfer') or []) or '—'} |" if reference else ""
            print(f"| {name} | {r['attack'] or 'clean'} | {target} | {scan} ({r['mode']}) | {r['flagged']} | {verdict(r)} | "
                  f"{_top_statistic(r)} ({r['argmax']}) | {rec} | {gen} | {warp} | {blend} | {a2a} |{ref} {r['wall']:.1f} | {r['rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
