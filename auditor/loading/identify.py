"""Which torchvision or timm classifier a bare state_dict is, from its key names and tensor shapes alone.

A weights-only file carries no architecture. When its keys are exactly a known classifier's and every
shape matches once the head is sized by the file (the class count is the head's first dimension),
that architecture can hold these weights. Several architectures can (timm's `resnet18` has
torchvision's keys; `efficientnet_b0` and `tf_efficientnet_b0` differ only in padding): the
candidates are loaded with the weights and run on the same random batch, and they count as one
architecture only when their outputs agree. Otherwise the user is asked for `--arch`, with the
candidates named.

Building ~1,400 timm architectures to read their keys takes minutes, so the keys come from an index
shipped with the package (`arch_index.json`: per architecture, a hash of its sorted key names, the
key count and its two-level module prefixes), written by `python -m auditor.loading.identify`.
The index only proposes; every candidate is rebuilt (on the meta device, no memory) and checked
exactly before it is used, so an index from another library version can miss an architecture but
never pick a wrong one.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

INDEX_PATH = Path(__file__).with_name("arch_index.json")
TIMM_PREFIX = "timm:"
# timm.create_model arguments that fetch or read files, or replace the architecture's configuration:
# never taken, whoever asks.
TIMM_REFUSED_KWARGS = ("pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def key_hash(keys) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def prefixes(keys) -> list[str]:
    """Two-level module names ('layer1.0', 'blocks.3'): depth and layout, without the per-layer detail."""
    return sorted({".".join(k.split(".")[:2]) for k in keys})


def build(spec: str, **kwargs) -> torch.nn.Module:
    """A torchvision name, or `timm:NAME`, built without weights (no download)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.startswith(TIMM_PREFIX):
            import timm

            return timm.create_model(spec[len(TIMM_PREFIX):], pretrained=False, **kwargs)
        import torchvision

        return torchvision.models.get_model(spec, weights=None, **kwargs)


def _library_versions() -> dict[str, str]:
    import torchvision

    versions = {"torchvision": torchvision.__version__.split("+")[0]}
    try:
        import timm

        versions["timm"] = timm.__version__
    except ImportError:
        pass
    return versions


def _all_specs() -> list[str]:
    import torchvision

    specs = list(torchvision.models.list_models(module=torchvision.models))
    try:
        import timm

        specs += [TIMM_PREFIX + n for n in timm.list_models()]
    except ImportError:
        pass
    return specs


def write_index(path: Path = INDEX_PATH, progress=print) -> dict:
    """Build every architecture on the meta device and record its keys (a few minutes)."""
    models = {}
    for i, spec in enumerate(_all_specs()):
        try:
            with torch.device("meta"):
                keys = list(build(spec).state_dict())
        except Exception:  # a few initialise with data (RegNet-Y) or need arguments: not identifiable
            continue
        models[spec] = {"keys": key_hash(keys), "n": len(keys), "prefixes": " ".join(prefixes(keys))}
        if progress and i % 200 == 0:
            progress(f"{i} architectures indexed")
    index = {"versions": _library_versions(), "models": models}
    # one architecture per line, in build order (torchvision first: it is preferred among equals)
    lines = [f"{json.dumps(spec)}: {json.dumps(entry)}" for spec, entry in models.items()]
    path.write_text('{"versions": ' + json.dumps(index["versions"]) + ',\n"models": {\n' + ",\n".join(lines) + "\n}}\n")
    return index


@lru_cache(maxsize=1)
def _index() -> dict:
    return json.loads(INDEX_PATH.read_text())


def _shapes(spec: str, num_classes: int | None) -> dict[str, tuple]:
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build(spec, **kwargs).state_dict().items()}


def _fit(spec: str, shapes: dict[str, tuple]) -> int | None:
    """The class count with which `spec` has exactly these keys and shapes, or None."""
    try:
        default = _shapes(spec, None)
    except Exception:
        return None
    if default.keys() != shapes.keys():
        return None
    differ = [k for k in default if default[k] != shapes[k]]
    if not differ:
        return _head_size(spec)
    heads = {shapes[k][0] for k in differ if shapes[k]}
    if len(heads) != 1:
        return None
    num_classes = heads.pop()
    try:
        return num_classes if _shapes(spec, num_classes) == shapes else None
    except Exception:
        return None


def _head_size(spec: str) -> int:
    with torch.device("meta"):
        out = build(spec)
    return int(getattr(out, "num_classes", 0) or 1000)


@dataclass(frozen=True)
class Identification:
    spec: str | None  # the architecture to build (torchvision name or timm:NAME); None: ask for --arch
    num_classes: int | None
    same_function: tuple[str, ...] = ()  # other candidates that compute the same outputs with these weights
    different_function: tuple[str, ...] = ()  # candidates with the same tensors but other outputs (not chosen)
    message: str = ""  # why there is no answer: the candidates that fit, or the closest ones


def _outputs(spec: str, num_classes: int, state: dict, batch: torch.Tensor) -> torch.Tensor | None:
    try:
        model = build(spec, num_classes=num_classes).eval()
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        with torch.no_grad():
            return model(batch).float()
    except Exception:  # wrong input size for this architecture, and the like: not the same function
        return None


def _same_function_groups(found: list[tuple[str, int]], state: dict, input_shape) -> list[list[tuple[str, int]]]:
    """Candidates grouped by their outputs on one seeded random batch with these weights."""
    shape = tuple(input_shape) if input_shape else (3, 224, 224)
    batch = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
    groups: list[tuple[torch.Tensor | None, list]] = []
    for spec, n in found:
        out = _outputs(spec, n, state, batch)
        for ref, members in groups:
            if out is not None and ref is not None and ref.shape == out.shape and _agree(ref, out):
                members.append((spec, n))
                break
        else:
            groups.append((out, [(spec, n)]))
    return [members for _, members in groups]


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float error relative to the outputs' scale (freshly initialised timm models give
    logits of 1e-6, where any absolute tolerance would call every architecture the same)."""
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-30)
    return (a - b).abs().max().item() <= 1e-4 * scale


def _closest(shapes: dict[str, tuple], top: int = 3) -> list[str]:
    """The indexed architectures nearest these keys (module layout first, then key count), with what differs."""
    mine = set(prefixes(shapes))
    scored = []
    for spec, entry in _index()["models"].items():
        theirs = set(entry["prefixes"].split())
        jaccard = len(mine & theirs) / max(1, len(mine | theirs))
        scored.append((-jaccard, abs(entry["n"] - len(shapes)), spec))
    out = []
    for _, _, spec in sorted(scored)[:top]:
        try:
            theirs = _shapes(spec, None)
        except Exception:
            continue
        missing = len(theirs.keys() - shapes.keys())
        extra = len(shapes.keys() - theirs.keys())
        out.append(f"{spec} ({missing} keys missing, {extra} extra)")
    return out


def identify(state: dict, input_shape=None) -> Identification:
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    index = _index()
    wanted = key_hash(shapes)
    candidates = [spec for spec, entry in index["models"].items() if entry["keys"] == wanted]
    found = [(spec, n) for spec in candidates if (n := _fit(spec, shapes)) is not None]
    stale = [f"{lib} {v}" for lib, v in index["versions"].items() if _library_versions().get(lib) != v]
    note = f" (the key index was made with {', '.join(stale)})" if stale else ""
    if not found:
        closest = _closest(shapes)
        return Identification(None, None, message=(
            "its keys and shapes fit no torchvision or timm classifier" + note
            + (f"; closest: {'; '.join(closest)}" if closest else "")))
    groups = _same_function_groups(found, state, input_shape) if len(found) > 1 else [found]
    chosen = groups[0] if len(groups) == 1 else _torchvision_group(groups)
    if chosen is None:
        names = ", ".join(spec for g in groups for spec, _ in g)
        return Identification(None, None, message=(
            f"its keys and shapes fit {len(found)} classifiers that compute different outputs ({names})"))
    (spec, num_classes), *others = chosen
    differ = tuple(s for g in groups if g is not chosen for s, _ in g)
    return Identification(spec, num_classes, tuple(s for s, _ in others), differ)


def _torchvision_group(groups: list[list[tuple[str, int]]]) -> list[tuple[str, int]] | None:
    """Among candidates that compute different outputs, torchvision's architecture when exactly one
    group has it: timm's variants with the same tensors (resnetblur18: a parameter-free blur pool)
    are far rarer than the model every tutorial saves. A wrong guess shows as lost clean accuracy,
    and the report names the alternatives."""
    with_torchvision = [g for g in groups if any(not s.startswith(TIMM_PREFIX) for s, _ in g)]
    return with_torchvision[0] if len(with_torchvision) == 1 else None


if __name__ == "__main__":
    written = write_index()
    print(f"{len(written['models'])} architectures, {written['versions']} -> {INDEX_PATH}")
