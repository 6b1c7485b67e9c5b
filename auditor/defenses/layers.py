"""Finding a model's linear layers and reading what flows into and out of them.

Works on any torch module (hand-written, torchvision, or an onnx2torch conversion of an ONNX
file) because it uses forward hooks rather than the module's structure."""

from __future__ import annotations

import torch
from torch import nn


def linear_layers(handle, module: nn.Module) -> list[str]:
    """Names of the nn.Linear layers applied once per sample, in the order the forward pass calls them.

    A layer that sees several rows per sample (a transformer's per-token projections) is left out: an
    edit that pins each sample's output has no single row to pin there; a ViT's classifier head stays."""
    order: list[str] = []
    rows: dict[str, int] = {}

    def seen(mod, inputs, output, name):
        order.append(name)
        rows[name] = max(rows.get(name, 0), inputs[0].numel() // mod.in_features)

    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen(mod, i, o, n))
             for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            _with_normalisation(handle, module).forward(torch.zeros(2, *handle.input_shape))
    finally:
        for h in hooks:
            h.remove()
    return [name for name in dict.fromkeys(order) if rows[name] == 2]


@torch.no_grad()
def layer_io(handle, module: nn.Module, name: str, x: torch.Tensor, batch_size: int = 512):
    """(inputs, outputs) of the named linear layer for pixel batch x, as rows (N x in, N x out) on the CPU."""
    layer = dict(module.named_modules())[name]
    ins, outs = [], []

    def hook(mod, inputs, output):
        ins.append(inputs[0].detach().reshape(-1, mod.in_features).float().cpu())
        outs.append(output.detach().reshape(-1, mod.out_features).float().cpu())

    runner = _with_normalisation(handle, module)
    handle_hook = layer.register_forward_hook(hook)
    try:
        for i in range(0, len(x), batch_size):
            runner.forward(x[i : i + batch_size])
    finally:
        handle_hook.remove()
    return torch.cat(ins), torch.cat(outs)


def _with_normalisation(handle, module):
    """A handle that puts `handle`'s normalisation in front of `module` (an edited copy, not its own)."""
    return handle.derived(module)
