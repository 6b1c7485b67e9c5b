"""Benchmark the unlearning defenses (+ repair) over the backdoored fixture models.

    .venv/bin/python bench/bench_defenses.py                       # defenses table + sweep
    .venv/bin/python bench/bench_defenses.py --defenses activation-edit --models badnets_cnn --no-sweep --no-recovered

Table 1, known trigger (BDK): every defense on every backdoored model with 10 clean samples per
class: true ASR and C-ACC before / after the defense / after repair, target-class accuracy, wall
time and peak RSS of the child process (load + defense + repair + evaluation).
Table 2, trigger recovered by each scan (no backdoor knowledge): scan, then the default defense.
Table 3, the default defense with 1, 5, 10 and 50 clean samples per class.
Table 4, the default defense by seed (0, 1, 2: which clean samples are drawn, and the defense's and
repair's own random draws), so a number in table 1 can be told from the luck of one draw.
    .venv/bin/python bench/bench_defenses.py --defenses --no-recovered --no-sweep   # table 4 only
Evaluation always uses the samples of the committed evaluation set that the fit split left out.
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
sys.path.insert(0, str(ROOT))
BACKDOORED = ["badnets_cnn", "badnets5_left_t2", "blended_t4", "sig_t6", "wanet_t3", "badnets_all2all"]
DEFAULT = "activation-edit"


def model_path(stem: str) -> Path:
    for d in ("models", "zoo"):
        p = ROOT / "fixtures" / d / f"{stem}.pt"
        if p.exists():
            return p
    raise SystemExit(f"no fixture model {stem}")


def clean_model_asr(session, trigger) -> tuple[float, float]:
    """The trigger's 'ASR' on the clean fixture model, and the share of images it moves there (sent there
    with it, elsewhere without): what no defense can be expected to beat."""
    from auditor.loading import LoadRequest, load_model

    # a clean model of the same input: for 3x32x32 the CIFAR-style CNN's (committed) or the ResNet-18
    # pair's (built on demand), else the small-CNN fixture
    same_input = ROOT / "fixtures" / "models" / "clean_cnn.pt"
    if session.handle.input_shape == (3, 32, 32):
        order = ("resnet18", "cifar_cnn") if session.config.model.stem.startswith("resnet18") else ("cifar_cnn", "resnet18")
        same_input = next((p for p in (ROOT / "fixtures" / "zoo" / f"{n}_clean.pt" for n in order) if p.exists()), same_input)
    clean = load_model(LoadRequest(path=same_input))
    attack = session.evaluation.measure_attack(clean, trigger)
    return attack["asr"], attack["asr_trigger_flips"]


def recovered_asr(handle, data, triggers) -> float:
    """Mean ASR of (at most 16 of) the recovered triggers on the evaluation samples."""
    from auditor.metrics import attack_success_rate

    rates = [attack_success_rate(handle.predict(t.apply(data.x)), data.y, t.target_labels(data.y, handle.num_classes))
             for t in triggers[:16]]
    return sum(rates) / len(rates)


def run_one(stem: str, defense: str, mode: str, per_class: int, scan: str, seed: int = 0) -> dict:
    from auditor.config import AuditConfig
    from auditor.defense_stage import classes_to_unlearn, triggers_to_unlearn
    from auditor.defenses import unlearn
    from auditor.registry import SCANS
    from auditor.session import AuditSession
    import auditor.scans  # noqa: F401

    path = model_path(stem)
    trigger = path.with_suffix(".trigger.json")
    session = AuditSession(AuditConfig(model=path, trigger=trigger, clean_samples=per_class, seed=seed), progress=lambda m: None)
    session.prepare()
    if session.errors:
        return {"error": "; ".join(session.errors.values())}
    known = session.known_trigger
    floor_asr, floor_moved = clean_model_asr(session, known)
    out = {"fit": len(session.split.fit), "eval": len(session.split.eval), "target": known.target,
           "floor_asr": floor_asr, "floor_moved": floor_moved}
    before = session.evaluation.measure(session.handle, known)
    start = time.perf_counter()
    if mode == "known":
        triggers = [known]
    else:
        result = SCANS.get(scan).factory(session.handle, session.split, {}, seed, None)
        flagged = session.flagged(result)
        out["flagged"] = flagged
        out["rec_asr"] = result.recovered_asr[flagged[0]] if flagged and getattr(result, "recovered_asr", None) else None
        triggers = triggers_to_unlearn(None, result, session.handle.input_shape, session.thresholds)  # what `auditor scan` unlearns
        out["unlearned"] = classes_to_unlearn(result, session.thresholds)
        out["scan_seconds"] = time.perf_counter() - start
        if not triggers:
            out.update(before=before, seconds=time.perf_counter() - start)
            return out
    d_start = time.perf_counter()
    done = unlearn(session.handle, session.split.fit, triggers, defense, {}, True, {}, seed)  # what `auditor scan` runs
    outcome, repaired, stats = done.outcome, done.final, done.repair_stats
    edited = session.evaluation.measure(done.edited, known)
    if mode != "known":
        out["rec_asr_before"] = recovered_asr(session.handle, session.split.eval, triggers)
        out["rec_asr_after"] = recovered_asr(repaired, session.split.eval, triggers)
    out.update(before=before, edit=edited, repaired=session.evaluation.measure(repaired, known), defense_seconds=outcome.seconds,
               repair_seconds=stats["seconds"], repair_steps=stats["steps"], fallen=stats["fallen_classes"],
               defense_repair_seconds=time.perf_counter() - d_start, seconds=time.perf_counter() - start)
    return out


def measure(args: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    try:
        data = json.loads(out.decode().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        data = {"error": f"exit status {status}"}
    data.update(wall=time.perf_counter() - start, rss_mb=usage.ru_maxrss / 1024)
    return data


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def target_acc(m: dict, target) -> str:
    return "—" if target is None else pct(m["per_class_acc"][target])


def row(stem: str, label: str, r: dict) -> str:
    if "error" in r:
        return f"| {stem} | {label} | error: {r['error']} |"
    b, t = r["before"], r["target"]
    if "flagged" in r:  # a recovered-trigger row: its extra column is the recovered triggers' ASR
        extra = f"{pct(r.get('rec_asr_before'))} → {pct(r.get('rec_asr_after'))}" if "rec_asr_before" in r else "—"
    else:
        extra = f"{pct(r['floor_asr'])} / {pct(r['floor_moved'])}"
    if "edit" not in r:
        return (f"| {stem} | {label} | {r['fit']} | {pct(b['asr'])} | nothing flagged: no defense | | | | | | | {extra} | | "
                f"{r['wall']:.1f} | {r['rss_mb']:.0f} |")
    e, a = r["edit"], r["repaired"]
    return (f"| {stem} | {label} | {r['fit']} | {pct(b['asr'])} | {pct(e['asr'])} | **{pct(a['asr'])}** | "
            f"{pct(b.get('asr_no_trigger'))} → {pct(a.get('asr_no_trigger'))} / {pct(a.get('asr_trigger_flips'))} | {pct(b['c_acc'])} | "
            f"{pct(e['c_acc'])} | {pct(a['c_acc'])} (**{100 * (a['c_acc'] - b['c_acc']):+.2f}**) | "
            f"{target_acc(b, t)} → {target_acc(e, t)} → {target_acc(a, t)} | {extra} | "
            f"{r['defense_seconds']:.2f} + {r['repair_seconds']:.2f} ({r['repair_steps']} steps) | {r['wall']:.1f} | {r['rss_mb']:.0f} |")


HEADER = ("| model | {label} | fit samples | true ASR before | after defense | after repair | to the target without the trigger, "
          "before → after repair / moved by it after repair | C-ACC before | after defense | "
          "after repair (Δ) | target-class acc before → defense → repair | {extra} | defense + repair (s) | wall (s) | peak RSS (MB) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
FLOOR = "true trigger on the clean model: ASR / moved by it (floor)"
RECOVERED = "recovered triggers' ASR before → after"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="*", default=BACKDOORED)
    parser.add_argument("--defenses", nargs="*", default=["activation-edit", "baerase", "nc-unlearn", "finetune"])
    parser.add_argument("--scans", nargs="*", default=["neural-cleanse", "generative"], help="scans for the no-backdoor-knowledge table")
    parser.add_argument("--no-recovered", action="store_true")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--per-class", nargs="*", type=int, default=[1, 5, 10, 50], help="budgets of the sweep")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2],
                        help="seeds of the by-seed table (fit split, defense, repair); none: no table")
    parser.add_argument("--seed-per-class", nargs="*", type=int, default=[10], help="budgets of the by-seed table")
    args = parser.parse_args()
    if args.child:
        stem, defense, mode, per_class, scan, seed = args.child
        print(json.dumps(run_one(stem, defense, mode, int(per_class), scan, int(seed)), default=float))
        return
    print("### Known trigger, 10 clean samples per class\n")
    print(HEADER.format(label="defense", extra=FLOOR))
    for stem in args.models:
        for defense in args.defenses:
            print(row(stem, defense, measure([stem, defense, "known", "10", "-", "0"])), flush=True)
    if not args.no_recovered:
        print(f"\n### Trigger recovered by the scan (no backdoor knowledge), {DEFAULT} + repair, 10 per class\n")
        print(HEADER.format(label="scan: flagged", extra=RECOVERED))
        for stem in args.models:
            for scan in args.scans:
                r = measure([stem, DEFAULT, "recovered", "10", scan, "0"])
                also = [c for c in r.get("unlearned", []) if c not in r.get("flagged", [])]
                print(row(stem, f"{scan}: {r.get('flagged', '')}" + (f", also unlearned {also}" if also else ""), r), flush=True)
    if not args.no_sweep:
        print(f"\n### {DEFAULT} + repair, known trigger, by clean samples per class\n")
        print(HEADER.format(label="per class", extra=FLOOR))
        for stem in args.models:
            for n in args.per_class:
                print(row(stem, str(n), measure([stem, DEFAULT, "known", str(n), "-", "0"])), flush=True)
    if args.seeds:
        print(f"\n### {DEFAULT} + repair, known trigger, by seed (which samples are drawn, and the defense's own draws)\n")
        print(HEADER.format(label="per class, seed", extra=FLOOR))
        for stem in args.models:
            for n in args.seed_per_class:
                for seed in args.seeds:
                    print(row(stem, f"{n}, seed {seed}", measure([stem, DEFAULT, "known", str(n), "-", str(seed)])), flush=True)


if __name__ == "__main__":
    main()
