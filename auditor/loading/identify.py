"""Which torchvision classifier a bare state_dict is, from its key names and tensor shapes alone.

A weights-only file carries no architecture. When its keys are exactly a torchvision classifier's and
every shape matches once the head is sized by the file (the class count is the head's first
dimension), that architecture is the only one that can hold these weights: it is used and named in
the report. Candidates are built on the meta device (no memory, no weights), once per process.
"""

from __future__ import annotations

import warnings
from functools import lru_cache


@lru_cache(maxsize=1)
def _signatures() -> dict[str, dict[str, tuple]]:
    import torch
    import torchvision

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in torchvision.models.list_models(module=torchvision.models):
            try:
                with torch.device("meta"):
                    model = torchvision.models.get_model(name, weights=None)
            except Exception:  # a few initialise with data (RegNet-Y) and cannot be built on meta
                continue
            out[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return out


def _fits(name: str, num_classes: int, shapes: dict[str, tuple]) -> bool:
    import torch
    import torchvision

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


def identify_torchvision(state: dict) -> list[tuple[str, int]]:
    """(torchvision name, class count) for every classifier whose keys and shapes are exactly `state`'s."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = []
    for name, signature in _signatures().items():
        if signature.keys() != shapes.keys():
            continue
        differ = [k for k in signature if signature[k] != shapes[k]]
        if not differ:
            found.append((name, 1000))
            continue
        heads = {shapes[k][0] for k in differ if shapes[k]}
        if len(heads) == 1 and _fits(name, heads.pop(), shapes):
            found.append((name, next(shapes[k][0] for k in differ)))
    return found
