"""Choose the Neural Cleanse detection statistic by measurement over the zoo.

    .venv/bin/python bench/bench_statistic.py        # about 3 minutes on 2 CPU cores
    .venv/bin/python bench/bench_statistic.py --models resnet18_clean resnet18_badnets --max-steps 100 --no-after

Runs the NC scan (default budget, 10 clean samples per class) on every zoo model, and on each
backdoored one again after `activation-edit` + repair with its known trigger (the after stage of
an audit), then prints which classes each candidate statistic flags: the MAD index of the raw mask
norms (Neural Cleanse's) and of the log norms, at several thresholds, each combined with the
mask-ratio rule (mask at most `max_mask_ratio` of the median), next to the true target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = ["clean_cnn", "clean_s2", "clean_s3", "clean_s4", "clean_s5", "clean_s6", "badnets_cnn", "badnets5_left_t2",
          "blended_t4", "sig_t6", "wanet_t3", "badnets_all2all"]
CANDIDATES = [("raw", 2.0), ("log", 2.0), ("log", 2.5), ("log", 3.0)]

from bench_defenses import model_path  # noqa: E402  (bench/ is on sys.path when a script in it runs)


def scan_norms(stems: list[str], nc_params: dict, after: bool) -> dict[str, tuple[list[float], int | str | None]]:
    """{row name: (mask norms, true target)} for each model and (`after`) each backdoored model after the defense."""
    from auditor.config import AuditConfig
    from auditor.defenses import RepairParams, defense_share, repair
    from auditor.registry import DEFENSES, SCANS
    from auditor.session import AuditSession

    rows = {}
    for stem in stems:
        path = model_path(stem)
        trigger = path.with_suffix(".trigger.json")
        session = AuditSession(AuditConfig(model=path, trigger=trigger if trigger.exists() else None), progress=lambda m: None)
        session.prepare()
        known = session.known_trigger
        target = None if known is None else ("all-to-all" if known.target is None else known.target)
        nc = SCANS.get("neural-cleanse").factory
        rows[stem] = (nc(session.handle, session.split, nc_params, 0, None).norms, target)
        print(f"scanned {stem}", file=sys.stderr, flush=True)
        if known is None or not after:
            continue
        fit = session.split.fit
        outcome = DEFENSES.get("activation-edit").factory(
            session.handle, defense_share(fit, RepairParams(), session.handle.num_classes, 0), [known], {}, 0)
        repaired, _ = repair(session.handle, outcome.handle, fit, [known], [t for t in [known.target] if t is not None], RepairParams(), 0,
                             defense_stats=outcome.stats)
        rows[f"{stem} (after defense)"] = (nc(repaired, session.split, nc_params, 0, None).norms, "—")
        print(f"scanned {stem} after the defense", file=sys.stderr, flush=True)
    return rows


def flags(norms: torch.Tensor, scale: str, threshold: float, max_ratio: float) -> list[int]:
    from auditor.scans.neural_cleanse import mad_index

    index = mad_index(norms.log() if scale == "log" else norms)
    ratio = norms / norms.median()
    return [c for c in sorted(range(len(norms)), key=lambda c: -index[c]) if index[c] > threshold and ratio[c] <= max_ratio]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--max-mask-ratio", type=float, default=0.5)
    parser.add_argument("--max-steps", type=int, default=None, help="NC optimisation budget (default: the scan's, 600)")
    parser.add_argument("--no-after", action="store_true", help="skip the scans of the repaired backdoored models")
    args = parser.parse_args()
    from auditor.scans.neural_cleanse import mad_index

    rows = scan_norms(args.models, {"max_steps": args.max_steps} if args.max_steps else {}, not args.no_after)
    heads = [f"{scale} > {threshold:g}" for scale, threshold in CANDIDATES]
    print("| model | true target | " + " | ".join(heads) + " | smallest masks: class (L1, share of median, raw index, log index) |")
    print("|---|---|" + "---|" * len(heads) + "---|")
    for name, (norms, target) in rows.items():
        n = torch.tensor(norms)
        raw, log, ratio = mad_index(n), mad_index(n.log()), n / n.median()
        cells = [str(flags(n, scale, threshold, args.max_mask_ratio)) for scale, threshold in CANDIDATES]
        small = sorted(range(len(n)), key=lambda c: n[c])[:3]
        detail = "; ".join(f"{c} ({n[c]:.1f}, {ratio[c]:.2f}, {raw[c]:.2f}, {log[c]:.2f})" for c in small)
        print(f"| {name} | {'—' if target is None else target} | " + " | ".join(cells) + f" | {detail} |", flush=True)


if __name__ == "__main__":
    main()
