"""Model folders as hubs deliver them: transformers image classifiers and timm models.

transformers: `config.json` (`architectures` / `model_type`), weights in `model.safetensors`, sharded
safetensors with their index, or a legacy `pytorch_model.bin` (through the fail-closed pickle path);
`preprocessor_config.json` gives the input size, mean and std, `id2label` the class names. timm:
`config.json` with `architecture`, `num_classes`, `model_args` and `pretrained_cfg` (input size, mean,
std, label names). The model is built from the config alone (no download, no network: the hub
libraries run offline) and its weights are read by our own loaders. A config that asks for remote
code (`auto_map`, `trust_remote_code`) is refused, and so is a folder holding any pickle that would
import something (a `training_args.bin`, say): the folder is the input, all of it is read first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from torch import nn

from ...errors import AuditorInputError, UnsafeModelError
from . import FileProbe, LoadedModule

CONFIG_LIMIT = 4 * 2**20  # bytes of a config file we parse
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
REMOTE_CODE_HINT = ("the folder asks to run its own Python code; audit the weights with a local architecture "
                    "instead (--arch) or a folder whose config names a built-in architecture")


def read_json(folder: Path, name: str) -> dict | None:
    path = folder / name
    if not path.is_file():
        return None
    if path.stat().st_size > CONFIG_LIMIT:
        raise AuditorInputError(f"{path}: {path.stat().st_size:,} bytes is too large for a config file")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise AuditorInputError(f"{path}: unreadable JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AuditorInputError(f"{path}: expected a JSON object")
    return value


def remote_code_requests(value, where: str = "config.json") -> list[str]:
    """Every place a config asks for code from outside the installed libraries."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "auto_map":
                found.append(f"{where} asks for remote code (auto_map: {', '.join(map(str, item)) if isinstance(item, dict) else item})")
            elif key == "trust_remote_code" and item:
                found.append(f"{where} asks for remote code (trust_remote_code: {item})")
            else:
                found += remote_code_requests(item, f"{where}:{key}")
    elif isinstance(value, list):
        for item in value:
            found += remote_code_requests(item, where)
    return found


def _offline() -> None:
    """The hub libraries must never reach the network from an audit."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"


def folder_findings(probe: FileProbe, report, config_name: str = "config.json") -> None:
    """Static findings over every file of the folder; each names the file."""
    from ..safety import SafetyReport, container_findings, pickle_findings, safetensors_findings

    folder = probe.path
    for rel in probe.folder:
        path = folder / rel
        sub = SafetyReport(str(path), "")
        lower = rel.lower()
        if lower.endswith(".safetensors"):
            safetensors_findings(path, path.stat().st_size, sub)
        elif lower.endswith(PICKLE_SUFFIXES):
            import zipfile

            if zipfile.is_zipfile(path):
                container_findings(path, sub)
            pickle_findings(path, sub)
        elif lower.endswith(".py"):
            report.info.append(f"{rel}: Python source in the folder (never imported)")
        elif lower.endswith(".json"):
            try:
                config = read_json(folder, rel)
            except AuditorInputError as exc:
                sub.problems.append(str(exc).replace(f"{path}: ", ""))
            else:
                sub.findings += [f.replace("config.json", rel) for f in remote_code_requests(config)]
                if lower.endswith(".index.json"):
                    shards = set((config.get("weight_map") or {}).values()) if isinstance(config.get("weight_map"), dict) else {None}
                    sub.findings += [f"the weight map names {name!r}, not a file of the folder"
                                     for name in sorted(map(str, shards)) if name not in probe.folder]
        report.findings += [f"{rel}: {line}" for line in sub.findings]
        report.problems += [f"{rel}: {line}" for line in sub.problems]
        report.info += [f"{rel}: {line}" for line in sub.info]


def refuse_unsafe_folder(probe: FileProbe) -> None:
    """load() reads the folder as the serialization check does, and refuses what it would flag."""
    from ..safety import SafetyReport

    report = SafetyReport(str(probe.path), "")
    folder_findings(probe, report)
    bad = report.findings + report.problems
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UnsafeModelError(f"{probe.path}: refused: {bad[0]}{more}")


def load_weights(folder: Path, files: tuple[str, ...]) -> dict:
    """model.safetensors, its shards (by the index), or pytorch_model.bin (pickle path), by that preference."""
    from ..files import safetensors_header
    from ..torch_files import load_safetensors_file, load_state_dict_file

    def shards(index_name: str) -> list[str]:
        index = read_json(folder, index_name) or {}
        names = sorted(set((index.get("weight_map") or {}).values()))
        bad = [n for n in names if not isinstance(n, str) or n not in files]
        if not names or bad:
            raise AuditorInputError(f"{folder / index_name}: the weight map names {bad[0] if bad else 'no'} shard file in the folder")
        return names

    def safetensors(name: str) -> dict:
        path = folder / name
        size = path.stat().st_size
        header = safetensors_header(path, size)
        if header is None:
            raise AuditorInputError(f"{path}: not a safetensors file")
        return load_safetensors_file(path, header, size)

    if "model.safetensors" in files:
        return safetensors("model.safetensors")
    if "model.safetensors.index.json" in files:
        return {k: v for name in shards("model.safetensors.index.json") for k, v in safetensors(name).items()}
    if "pytorch_model.bin" in files:
        return load_state_dict_file(folder / "pytorch_model.bin", zipped=True)
    if "pytorch_model.bin.index.json" in files:
        return {k: v for name in shards("pytorch_model.bin.index.json") for k, v in
                load_state_dict_file(folder / name, zipped=True).items()}
    raise AuditorInputError(f"{folder}: no weights (model.safetensors, its shards, or pytorch_model.bin)")


def _sized(build, limit: int, what: str):
    """Build the model on the meta device first: a config can ask for any size."""
    with torch.device("meta"):
        biggest = max((t.numel() * t.element_size() for t in build().state_dict().values()), default=0)
    if biggest > limit:
        raise UnsafeModelError(f"{what} makes a tensor of {biggest:,} bytes, over the limit of {limit:,}")
    return build()


def _apply(module, state: dict, folder: Path, arch: str) -> None:
    from ..torch_files import apply_state_dict

    expected = module.state_dict()
    parameters = {name for name, _ in module.named_parameters()}
    # buffers the model computes itself (position ids...) are often not saved; every parameter must be there
    state = {**{k: v for k, v in expected.items() if k not in state and k not in parameters}, **state}
    apply_state_dict(module, state, folder, arch)


def write_folder(handle, source, output_dir: Path, stem: str, protected: tuple[Path, ...]) -> dict[str, Path]:
    """The source folder's configs copied, the weights replaced by a model.safetensors: a folder the hub
    library loads as it is."""
    from safetensors.torch import save_file

    src = Path(source.info.path)
    target = output_dir / f"{stem}.repaired"
    if any(target.resolve() == Path(p).resolve() for p in protected if p is not None) or target.resolve() == src.resolve():
        raise AuditorInputError(f"{target}: refusing to write over an input")
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=output_dir))
    try:
        for rel in sorted(p.relative_to(src).as_posix() for p in src.iterdir() if p.is_file()):
            if rel.endswith(".json") and not rel.endswith(".index.json"):
                shutil.copyfile(src / rel, tmp / rel)
        inner = handle.module.model
        state = {k: v.detach().cpu().contiguous().clone() for k, v in inner.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=output_dir))
            os.replace(target, old / "previous")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    handle.module.to(handle.device)
    return {"folder": target}


class TransformersLogits(nn.Module):
    """A transformers image classifier as pixels -> logits (it returns an output object)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


class TimmLogits(nn.Module):
    """A timm model under the same `.model` attribute, so a repaired folder is written the same way."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


class _HubFolder:
    """What both folder formats share: the config decides, every file is inspected, a folder is written."""

    name = ""
    needs_arch = False
    folder = True
    unreadable_config_is_mine = False  # an unreadable config.json: which format's load() explains it

    def is_mine(self, config: dict) -> bool:
        raise NotImplementedError

    def sniff(self, probe: FileProbe) -> bool:
        if "config.json" not in probe.folder:
            return False
        try:
            config = read_json(probe.path, "config.json")
        except AuditorInputError:
            return self.unreadable_config_is_mine
        return bool(config) and self.is_mine(config)

    def label(self, probe: FileProbe) -> str:
        return f"{self.name} folder"

    def inspect(self, probe: FileProbe, report, max_tensor_bytes: int) -> None:
        folder_findings(probe, report)
        report.info.append(f"{len(probe.folder)} files read; configs parsed as JSON, no Python imported")

    def write(self, handle, source, output_dir: Path, stem: str, protected: tuple[Path, ...]) -> dict[str, Path]:
        return write_folder(handle, source, output_dir, stem, protected)


class TransformersFolder(_HubFolder):
    name = "transformers"
    unreadable_config_is_mine = True

    def is_mine(self, config: dict) -> bool:
        return ("architectures" in config or "model_type" in config) and "architecture" not in config

    def load(self, request, probe: FileProbe, meta: dict, meta_path, device) -> LoadedModule:
        folder = probe.path
        refuse_unsafe_folder(probe)
        config = read_json(folder, "config.json") or {}
        if remote_code_requests(config):
            raise UnsafeModelError(f"{folder}: refused: {remote_code_requests(config)[0]}; {REMOTE_CODE_HINT}")
        _offline()
        try:
            from transformers import AutoConfig, AutoModelForImageClassification
        except ImportError:
            raise AuditorInputError(f"{folder}: a transformers folder needs the transformers package (pip install transformers)") from None
        try:
            cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
            name = (config.get("architectures") or [type(cfg).__name__])[0]
            _sized(lambda: AutoModelForImageClassification.from_config(cfg), request.max_tensor_bytes,
                   f"{folder / 'config.json'} ({name})")
            # transformers maps the published key names onto the classes it builds today (they were
            # renamed in 5.0), so it reads the weights; every file was inspected above, safetensors hold
            # no code and its torch.load of a .bin file is weights_only after our own opcode walk
            model, loading = AutoModelForImageClassification.from_pretrained(
                str(folder), config=cfg, local_files_only=True, trust_remote_code=False, output_loading_info=True)
        except (ValueError, KeyError, TypeError, OSError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AuditorInputError(f"{folder}: not a transformers image classifier this version can build: {first}") from None
        arch = f"transformers:{name}"
        gaps = [(kind, keys) for kind in ("missing_keys", "mismatched_keys") if (keys := list(loading.get(kind) or []))]
        if gaps:
            kind, keys = gaps[0]
            raise AuditorInputError(f"{folder}: weights do not fit {arch}: {len(keys)} {kind.replace('_', ' ')} "
                                    f"(e.g. {keys[0]})")
        model.eval()
        return LoadedModule(TransformersLogits(model), arch, metadata=self._metadata(folder, cfg))

    @staticmethod
    def _metadata(folder: Path, cfg) -> dict:
        pre = read_json(folder, "preprocessor_config.json") or {}
        size = pre.get("crop_size") if pre.get("do_center_crop") and isinstance(pre.get("crop_size"), dict) else pre.get("size")
        if isinstance(size, dict):
            height = size.get("height") or size.get("shortest_edge")
            width = size.get("width") or size.get("shortest_edge")
        else:
            height = width = size if isinstance(size, int) else None
        inp = {"channels": int(getattr(cfg, "num_channels", 3) or 3)}
        if isinstance(height, int) and isinstance(width, int):
            inp.update(height=height, width=width)
        if pre.get("do_normalize", True) and "image_mean" in pre and "image_std" in pre:
            inp.update(mean=list(pre["image_mean"]), std=list(pre["image_std"]))
        id2label = getattr(cfg, "id2label", None) or {}
        names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(int(cfg.num_labels))]
        return {"input": inp, "class_names": names, "num_classes": int(cfg.num_labels)}


class TimmFolder(_HubFolder):
    name = "timm"

    def is_mine(self, config: dict) -> bool:
        return isinstance(config.get("architecture"), str)

    def load(self, request, probe: FileProbe, meta: dict, meta_path, device) -> LoadedModule:
        folder = probe.path
        refuse_unsafe_folder(probe)
        config = read_json(folder, "config.json") or {}
        _offline()
        try:
            import timm
        except ImportError:
            raise AuditorInputError(f"{folder}: a timm folder needs the timm package (pip install timm)") from None
        arch = config["architecture"]
        if not timm.is_model(arch):
            raise AuditorInputError(f"{folder / 'config.json'}: {arch!r} is not an architecture timm knows")
        args = config.get("model_args") or {}
        if not isinstance(args, dict) or not all(isinstance(k, str) and isinstance(v, (int, float, str, bool, type(None)))
                                                 for k, v in args.items()):
            raise AuditorInputError(f"{folder / 'config.json'}: model_args must map names to numbers, strings or booleans")
        pretrained = config.get("pretrained_cfg") or {}
        args = {**args, "num_classes": int(config.get("num_classes", args.get("num_classes", 1000)))}
        try:
            model = _sized(lambda: timm.create_model(arch, pretrained=False, **args), request.max_tensor_bytes,
                           f"{folder / 'config.json'} ({arch})")
        except (TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AuditorInputError(f"{folder / 'config.json'}: timm cannot build {arch} with {args}: {first}") from None
        _apply(model, load_weights(folder, probe.folder), folder, f"timm:{arch}")
        model.eval()
        metadata: dict = {"num_classes": args["num_classes"]}
        size = pretrained.get("input_size")
        if isinstance(size, list) and len(size) == 3 and all(isinstance(d, int) and d > 0 for d in size):
            metadata["input"] = {"channels": size[0], "height": size[1], "width": size[2]}
            if isinstance(pretrained.get("mean"), list) and isinstance(pretrained.get("std"), list):
                metadata["input"].update(mean=pretrained["mean"], std=pretrained["std"])
        labels = config.get("label_names") or pretrained.get("label_names")
        if isinstance(labels, list) and len(labels) == args["num_classes"]:
            metadata["class_names"] = [str(n) for n in labels]
        return LoadedModule(TimmLogits(model), f"timm:{arch}", metadata=metadata)


TRANSFORMERS = TransformersFolder()
TIMM = TimmFolder()
