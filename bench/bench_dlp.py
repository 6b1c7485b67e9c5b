"""DLP against plain training on the zoo's poisoned training sets.

    python fixtures/build_zoo.py --datasets          # once: fixtures/zoo/data/<name>.train.npz
    python bench/bench_dlp.py [--only NAME ...] [--train-size N] [--epochs 6]

Per data set, three models of the fixtures' small CNN, same seed, same epochs, same batches:
  plain     trained on the poisoned set as it is;
  reference trained on the set with the planted samples removed (what DLP should come close to);
  dlp       auditor.dlp.train_dlp on the poisoned set (the `auditor train` method; the command also
            holds out a validation share, which this benchmark does not, so the three see the same data).
Prints C-ACC and true ASR on the Fashion-MNIST test split (10,000 images; the ASR on the non-target
images with the trigger applied), DLP's isolation precision and recall against the `poison` flags
(suspects: labels dropped; named: the planted samples it names), and wall times with the ratio
DLP / plain. With --scan-plain it also audits the plain-trained model as a user would (`auditor scan`
defaults, no trigger given, no defense): does the gate catch on the plain model what DLP prevented?
Needs the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fixtures"))

import build  # noqa: E402
import build_zoo  # noqa: E402
from auditor.data import ImageSet, load_npz  # noqa: E402
from auditor.dlp import DLPParams, train_dlp  # noqa: E402
from auditor.triggers import trigger_from_spec  # noqa: E402
from auditor.zoo import small_cnn  # noqa: E402

DATA = ROOT / "fixtures" / "zoo" / "data"


def asr(model, trigger, x_test, y_test) -> float:
    targets = trigger.target_labels(y_test, 10)
    keep = targets != y_test
    return float((build.predict(model, trigger.apply(x_test[keep])) == targets[keep]).float().mean())


def c_acc(model, x_test, y_test) -> float:
    return float((build.predict(model, x_test) == y_test).float().mean())


def precision_recall(selected: torch.Tensor, poison: torch.Tensor) -> tuple[float | None, float]:
    hits = int(poison[selected].sum()) if len(selected) else 0
    return (hits / len(selected) if len(selected) else None), hits / max(1, int(poison.sum()))


def scan_plain(model, seed: int) -> tuple[str, list]:
    """Audit the plain-trained model blind (no trigger, no defense) on the bundled clean subset."""
    from auditor.config import AuditConfig, with_outputs
    from auditor.runner import run_audit

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plain.pt"
        torch.save(model.state_dict(), path)
        meta = {"auditor_metadata": 1, "arch": build.ARCH, "num_classes": 10, "class_names": build.CLASS_NAMES,
                "input": {"channels": 1, "height": 28, "width": 28, "mean": build.MEAN, "std": build.STD}}
        path.with_suffix(".json").write_text(json.dumps(meta))
        config = with_outputs(AuditConfig(model=path, data=str(ROOT / "fixtures" / "data" / "fashion_mnist_eval.npz"),
                                          seed=seed, defense="none", output_dir=Path(tmp), quiet=True))
        code, result = run_audit(config)
    failed = [c["name"].removeprefix("check_") for c in result["checks"] if c["outcome"] in ("failed", "error")]
    return result["verdict"], (result.get("scan") or {}).get("flagged_classes") or [], failed


def run(name: str, epochs: int, train_size: int | None, seed: int, x_test, y_test, scan: bool) -> dict:
    data = load_npz(DATA / f"{name}.train.npz")
    import numpy as np

    with np.load(DATA / f"{name}.train.npz") as npz:
        poison = torch.from_numpy(npz["poison"].astype(bool))
    x, y = data.x, data.y
    if train_size:
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:train_size].sort().values
        x, y, poison = x[keep], y[keep], poison[keep]
    trigger = trigger_from_spec(json.loads((DATA / f"{name}.trigger.json").read_text()), 1, 28, 28)
    row = {"name": name, "samples": len(y), "planted": int(poison.sum())}

    start = time.time()
    plain = build.train(x, y, seed, epochs)
    row["plain_seconds"] = time.time() - start
    row["plain"] = (c_acc(plain, x_test, y_test), asr(plain, trigger, x_test, y_test))

    if scan:
        row["plain_scan"] = scan_plain(plain, seed)
    reference = build.train(x[~poison], y[~poison], seed, epochs)
    row["reference"] = (c_acc(reference, x_test, y_test), asr(reference, trigger, x_test, y_test))

    torch.manual_seed(seed)
    model = small_cnn(in_channels=1, num_classes=10, image_size=28)
    start = time.time()
    result = train_dlp(model, ImageSet(x, y, name), 10, lambda v: model(build.normalise(v)), DLPParams(epochs=epochs),
                       seed=seed, progress=lambda m: print(f"  {m}", file=sys.stderr))
    row["dlp_seconds"] = time.time() - start
    row["dlp"] = (c_acc(model, x_test, y_test), asr(model, trigger, x_test, y_test))
    row["suspects"] = (len(result.suspects), *precision_recall(result.suspects, poison))
    row["named"] = (len(result.named), *precision_recall(result.named, poison))
    return row


def fmt(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(build_zoo.DATASETS), choices=list(build_zoo.DATASETS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=None, help="subsample each training set (shorter runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scan-plain", action="store_true", help="also audit the plain-trained model blind")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x_test, y_test = build.load_split("t10k")
    missing = [n for n in args.only if not (DATA / f"{n}.train.npz").is_file()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run python fixtures/build_zoo.py --datasets")
    print("| data set | planted | plain C-ACC / ASR | reference (planted removed) C-ACC / ASR | DLP C-ACC / ASR | "
          "suspects n / precision / recall | named n / precision / recall | plain s | DLP s | DLP / plain |"
          + (" scan of plain model |" if args.scan_plain else ""))
    print("|---|---:|---|---|---|---|---|---:|---:|---:|" + ("---|" if args.scan_plain else ""))
    for name in args.only:
        r = run(name, args.epochs, args.train_size, args.seed, x_test, y_test, args.scan_plain)
        scan = ""
        if args.scan_plain:
            verdict, flagged, failed = r["plain_scan"]
            scan = f" {verdict}: flagged {', '.join(map(str, flagged)) or 'none'}; failed {', '.join(failed) or 'none'} |"
        print(f"| {name} | {r['planted']} of {r['samples']} | {fmt(r['plain'][0])} / {fmt(r['plain'][1])} | "
              f"{fmt(r['reference'][0])} / {fmt(r['reference'][1])} | {fmt(r['dlp'][0])} / {fmt(r['dlp'][1])} | "
              f"{r['suspects'][0]} / {fmt(r['suspects'][1])} / {fmt(r['suspects'][2])} | "
              f"{r['named'][0]} / {fmt(r['named'][1])} / {fmt(r['named'][2])} | {r['plain_seconds']:.0f} | "
              f"{r['dlp_seconds']:.0f} | {r['dlp_seconds'] / r['plain_seconds']:.2f} |{scan}", flush=True)


if __name__ == "__main__":
    main()
