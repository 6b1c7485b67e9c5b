"""`auditor train`: a model trained with DLP on an untrusted labelled data set, its files, and the audit
of the result. The data is checked in full before anything is written; the files are written with
new names only (atomic renames), then audited like any delivered model."""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import ImageSet, load_data
from .errors import AuditorInputError

MIN_PER_CLASS = 4  # a class needs samples on both sides of the validation split, and more than one to learn


@dataclass(frozen=True)
class TrainConfig:
    data: str
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    epochs: int = 6
    dlp_params: dict[str, Any] = field(default_factory=dict)
    validation_share: float = 0.1
    seed: int = 0
    device: str = "auto"
    name: str | None = None
    output_dir: Path = Path("reports")
    html: Path | None = None
    json: Path | None = None
    junitxml: Path | None = None
    scan: str | None = None  # the trained model's audit: its trigger scan and parameters (default: scan's own)
    scan_params: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False


def poison_indicator(spec: str, n: int) -> np.ndarray | None:
    """The optional `poison` array of an .npz data set (the zoo's datasets carry it): 1 for a planted
    sample. Only measures the isolation; training never reads it."""
    path = Path(spec)
    if path.suffix != ".npz" or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        if "poison" not in npz.files:
            return None
        poison = np.asarray(npz["poison"]).astype(bool)
    if poison.shape != (n,):
        raise AuditorInputError(f"{path}: 'poison' must hold one flag per image ({n}), got shape {poison.shape}")
    return poison


def check_classes(data: ImageSet, class_names: list[str] | None) -> int:
    """Every class from 0 to the highest label needs MIN_PER_CLASS samples; returns the class count."""
    if data.y.min() < 0:
        raise AuditorInputError(f"{data.source}: labels must be 0 or more, found {int(data.y.min())}")
    num_classes = len(class_names) if class_names else int(data.y.max()) + 1
    if num_classes > max(2, len(data) // MIN_PER_CLASS):
        raise AuditorInputError(f"{data.source}: labels reach {num_classes - 1}, too many classes for {len(data)} samples "
                                f"(at least {MIN_PER_CLASS} per class; labels must run 0..classes-1)")
    if num_classes < 2:
        raise AuditorInputError(f"{data.source}: a classifier needs at least 2 classes, the data has {num_classes}")
    counts = torch.bincount(data.y, minlength=num_classes)
    empty = [(class_names[c] if class_names else str(c)) for c in range(num_classes) if counts[c] == 0]
    if empty:
        raise AuditorInputError(f"{data.source}: class {', '.join(empty)} has no samples (labels must run 0..{num_classes - 1} with every class present)")
    few = [c for c in range(num_classes) if counts[c] < MIN_PER_CLASS]
    if few:
        name = class_names[few[0]] if class_names else str(few[0])
        raise AuditorInputError(f"{data.source}: class {name} has {int(counts[few[0]])} samples; at least {MIN_PER_CLASS} per class "
                                "are needed to split off a validation share and train")
    return num_classes


def validation_split(y: torch.Tensor, share: float, seed: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified and seeded: `share` of each class (at least one sample) is held out for validation."""
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(num_classes):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        take = max(1, round(share * len(idx)))
        val_idx.append(idx[:take])
        train_idx.append(idx[take:])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


def build_model(config: TrainConfig, channels: int, side: int, width: int, num_classes: int) -> torch.nn.Module:
    """The architecture from --arch, given the class count (and the input channels and size when its
    constructor takes them) unless --arch-arg says otherwise."""
    from .loading.torch_files import TIMM_PREFIX, build_arch

    kwargs = dict(config.arch_kwargs)
    if config.arch.startswith(TIMM_PREFIX):
        kwargs.setdefault("num_classes", num_classes)
        kwargs.setdefault("in_chans", channels)
    elif ":" in config.arch:
        import importlib

        module_name, _, attr = config.arch.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
            accepted = inspect.signature(target).parameters
        except (ImportError, AttributeError, TypeError, ValueError):
            accepted = {}
        for key, value in (("num_classes", num_classes), ("in_channels", channels), ("image_size", side)):
            if key in accepted:
                kwargs.setdefault(key, value)
    else:
        kwargs.setdefault("num_classes", num_classes)
    model = build_arch(config.arch, kwargs, trusted_only=False)
    try:  # a model that cannot take the data's shape fails here, before anything is trained or written
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, channels, side, width))
    except Exception as exc:  # noqa: BLE001  (any error of the user's architecture on this input)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AuditorInputError(f"--arch {config.arch}: cannot run on {channels}x{side}x{width} input ({first}); "
                                "pass --input-size (grey data trains at 3,H,W for RGB architectures) or --arch-arg") from None
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise AuditorInputError(f"--arch {config.arch}: outputs {tuple(out.shape)}, expected (batch, {num_classes}) for the data's "
                                f"{num_classes} classes")
    return model.train(), kwargs


def run_training(config: TrainConfig, progress=None) -> tuple[int, dict]:
    from .data import conform
    from .dlp import DLPParams, train_dlp
    from .model import resolve_device
    from .session import progress_printer

    config = with_train_outputs(config)
    say = progress or progress_printer(config.quiet)
    started = time.time()
    try:
        params = DLPParams(**{"epochs": config.epochs, **config.dlp_params})
    except (TypeError, ValueError) as exc:
        raise AuditorInputError(f"--dlp-param: {exc}") from None
    if not 0 < config.validation_share < 0.5:
        raise AuditorInputError("--validation-share must be between 0 and 0.5")
    from .runner import validate_names

    validate_names(audit_config(config, config.output_dir / "model.pt", config.output_dir / "data.npz"))
    data = load_data(config.data)
    class_names = list(data.class_names) if data.class_names else None
    num_classes = check_classes(data, class_names)
    poison = poison_indicator(config.data, len(data))
    channels, height, width = config.input_shape or tuple(data.x.shape[1:])
    data = conform(data, channels, height, width, num_classes)
    train_idx, val_idx = validation_split(data.y, config.validation_share, config.seed, num_classes)
    train = data.subset(train_idx)
    mean = torch.tensor(config.mean or train.x.mean(dim=(0, 2, 3)).tolist())
    std = torch.tensor(config.std or train.x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    if len(mean) != channels or len(std) != channels:
        raise AuditorInputError(f"--mean/--std: need {channels} values (one per channel)")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model, arch_kwargs = build_model(config, channels, height, width, num_classes)
    model = model.to(device)
    m, s = mean.view(1, -1, 1, 1).to(device), std.view(1, -1, 1, 1).to(device)

    def forward(x):
        return model((x.to(device) - m) / s)

    name = config.name
    say(f"training {config.arch} on {len(train)} of {len(data)} samples ({len(val_idx)} held out for validation), "
        f"{num_classes} classes, input {channels}x{height}x{width}, {params.epochs} epochs with DLP")
    result = train_dlp(model, ImageSet(train.x.to(device), train.y.to(device), train.source), num_classes, forward, params,
                       seed=config.seed, progress=say)
    model = result.model.cpu().eval()
    trained_seconds = time.time() - started

    # suspects as indices into DATA as given (and file paths for folder data)
    suspects = train_idx[result.suspects.cpu()]
    named = train_idx[result.named.cpu()]
    val = data.subset(val_idx)
    val_pred = _predict(model, val.x, mean, std)
    summary = _summary(config, data, class_names, num_classes, train_idx, val_idx, val, val_pred, suspects, named,
                       result, poison, channels, height, width, mean, std, params, trained_seconds)
    summary["suspects"]["most_suspicious"] = _most_suspicious(model, data, train_idx, result, mean, std, data.paths)
    outputs = _write_outputs(config, name, model, arch_kwargs, summary, val, val_idx, poison, channels, height, width)
    summary["outputs"] = {k: str(v) for k, v in outputs.items()}
    code, audit = _audit(config, outputs, say)
    summary["audit"] = audit
    summary["exit_code"] = code
    summary["verdict"] = audit.get("verdict", "error")
    summary["seconds"] = round(time.time() - started, 1)
    from .report.train_html import write_train_report
    from .runner import write_json

    summary["outputs"]["html"] = str(config.html)
    poison_local = torch.from_numpy(poison[train_idx.numpy()]) if poison is not None else None
    write_train_report(config.html, summary, data, result, suspects, train_idx, poison_local, class_names, num_classes)
    if config.json:
        summary["outputs"]["json"] = str(config.json)
        write_json(config.json, summary)
    return code, summary


@torch.inference_mode()
def _predict(model, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes of the trained model (on the CPU) for pixel-space images."""
    m, s = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    return torch.cat([model((x[i : i + batch_size] - m) / s).argmax(1) for i in range(0, len(x), batch_size)])


def _summary(config, data, class_names, num_classes, train_idx, val_idx, val, val_pred, suspects, named, result, poison,
             channels, height, width, mean, std, params, trained_seconds) -> dict:
    from .metrics import per_class_accuracy

    counts = torch.bincount(data.y, minlength=num_classes).tolist()
    per_label_suspects = torch.bincount(data.y[suspects], minlength=num_classes).tolist() if len(suspects) else [0] * num_classes
    per_label_named = torch.bincount(data.y[named], minlength=num_classes).tolist() if len(named) else [0] * num_classes
    val_clean = torch.ones(len(val_idx), dtype=torch.bool)
    if poison is not None:
        val_clean = ~torch.from_numpy(poison[val_idx.numpy()])
    acc = float((val_pred[val_clean] == val.y[val_clean]).float().mean())
    out = {
        "command": "train", "method": "dlp", "data": str(config.data), "arch": config.arch, "seed": config.seed,
        "dataset": {"samples": len(data), "classes": num_classes, "class_names": class_names, "per_class": counts,
                    "input": [channels, height, width], "training_samples": len(train_idx),
                    "validation_samples": len(val_idx), "validation_share": config.validation_share},
        "normalisation": {"mean": [round(v, 6) for v in mean.tolist()], "std": [round(v, 6) for v in std.tolist()],
                          "from": "given" if config.mean else "the training share"},
        "suspects": {"indices": suspects.tolist(), "named_indices": named.tolist(),
                     "count": len(suspects), "named": len(named),
                     "per_label": per_label_suspects, "named_per_label": per_label_named,
                     "isolated_by_learning_speed": result.stats["isolated_stage1"],
                     "isolated_by_loss_rise": result.stats["isolated_stage2"],
                     "note": "suspects: the training samples whose labels stage 3 dropped; named: the suspects whose given "
                             "label the trained model rejects (the planted samples this run names). The validation share "
                             "is not screened."},
        "validation": {"accuracy": round(acc, 4), "per_class": per_class_accuracy(val_pred[val_clean], val.y[val_clean], num_classes),
                       "samples": int(val_clean.sum()),
                       "note": ("planted samples (the data's 'poison' flags) left out" if poison is not None
                                else "the held-out share as labelled: it may hold planted samples")},
        "dlp": {**result.stats, "recorded_at_epochs": result.recorded_at},
        "training_seconds": round(trained_seconds, 1),
    }
    if data.paths is not None:
        out["suspects"]["files"] = [data.paths[i] for i in suspects.tolist()]
        out["suspects"]["named_files"] = [data.paths[i] for i in named.tolist()]
    if poison is not None:
        truth = torch.from_numpy(poison)
        train_truth = truth[train_idx]
        planted = int(train_truth.sum())

        def pr(indices):
            hits = int(truth[indices].sum()) if len(indices) else 0
            return {"selected": len(indices), "true_positives": hits,
                    "precision": round(hits / len(indices), 4) if len(indices) else None,
                    "recall": round(hits / planted, 4) if planted else None}

        out["isolation"] = {"planted_in_training_share": planted, "suspects": pr(suspects), "named": pr(named)}
    return out


def _most_suspicious(model, data, train_idx, result, mean, std, paths, count: int = 24) -> list[dict]:
    """Named samples first, then the other suspects; each group fastest-learned (lowest score) first."""
    local_named = set(result.named.cpu().tolist())
    local = sorted(result.suspects.cpu().tolist(), key=lambda i: (i not in local_named, float(result.scores[i])))[:count]
    if not local:
        return []
    index = train_idx[torch.tensor(local)]
    pred = _predict(model, data.x[index], mean, std)
    out = []
    for i, d, p in zip(local, index.tolist(), pred.tolist()):
        item = {"index": d, "label": int(data.y[d]), "predicted": int(p), "score": round(float(result.scores[i]), 3)}
        if paths is not None:
            item["file"] = paths[d]
        out.append(item)
    return out


def _write_outputs(config, name, model, arch_kwargs, summary, val, val_idx, poison, channels, height, width) -> dict:
    from .outputs import atomic_write, export_onnx

    out_dir = config.output_dir
    protected = (Path(config.data),) if Path(config.data).exists() else ()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {
        "auditor_metadata": 1, "name": name, "arch": {"callable": config.arch, "kwargs": arch_kwargs},
        "input": {"channels": channels, "height": height, "width": width, **{k: summary["normalisation"][k] for k in ("mean", "std")}},
        "num_classes": summary["dataset"]["classes"],
        **({"class_names": summary["dataset"]["class_names"]} if summary["dataset"]["class_names"] else {}),
        "training": {"method": "dlp", "data": str(config.data), "seed": config.seed, "epochs": config.epochs,
                     "samples": summary["dataset"]["training_samples"], "dlp": summary["dlp"]["params"],
                     "suspects_unlabelled": summary["suspects"]["count"]},
        "metrics": {"c_acc": summary["validation"]["accuracy"], "evaluated_on": f"validation share ({summary['validation']['note']})"},
    }
    outputs = {}
    outputs["state_dict"] = atomic_write(out_dir / f"{name}.pt", lambda p: torch.save(state, p), protected)
    text = json.dumps(meta, indent=1) + "\n"
    outputs["metadata"] = atomic_write(out_dir / f"{name}.json", lambda p: p.write_text(text), protected)
    outputs["onnx"] = atomic_write(out_dir / f"{name}.onnx", lambda p: export_onnx(model, p, (channels, height, width), "input"), protected)
    keep = np.ones(len(val_idx), dtype=bool) if poison is None else ~poison[val_idx.numpy()]
    x = (val.x[torch.from_numpy(keep)] * 255).round().to(torch.uint8).numpy()
    y = val.y[torch.from_numpy(keep)].numpy()
    outputs["validation_data"] = atomic_write(out_dir / f"{name}.validation.npz",
                                              lambda p: np.savez_compressed(open(p, "wb"), x=x, y=y, index=val_idx.numpy()[keep]),
                                              protected)
    return outputs


def audit_config(config: TrainConfig, model: Path, data: Path):
    from .config import AuditConfig, with_outputs

    return with_outputs(AuditConfig(
        model=model, data=str(data), seed=config.seed, device=config.device,
        output_dir=config.output_dir, json=config.output_dir / f"{Path(model).name}.audit.json",
        junitxml=config.junitxml, quiet=config.quiet, scan_params=dict(config.scan_params),
        **({"scan": config.scan} if config.scan else {}),
    ))


def _audit(config, outputs, say) -> tuple[int, dict]:
    """The usual checks on the trained weights, with the validation share as clean data."""
    from .runner import run_audit

    say("auditing the trained model (the usual checks, trigger scan included)")
    audit = audit_config(config, outputs["state_dict"], outputs["validation_data"])
    code, result = run_audit(audit, progress=say if not config.quiet else None)
    checks = [{"name": c["name"], "stage": c["stage"], "outcome": c["outcome"], "message": c["message"]} for c in result["checks"]]
    return code, {"verdict": result["verdict"], "exit_code": code, "checks": checks, "html": str(audit.html),
                  "json": str(audit.json), "flagged": (result.get("scan") or {}).get("flagged_classes"),
                  "errors": result["errors"]}


def with_train_outputs(config: TrainConfig) -> TrainConfig:
    name = config.name or f"{Path(str(config.data).rstrip('/')).stem}.dlp"
    html = config.html or config.output_dir / f"{name}.train.html"
    return replace(config, name=name, html=html)
