"""Finding a model's linear layers and reading what flows into and out of them.

Works on any torch module (hand-written, torchvision, or an onnx2torch conversion of an ONNX
file) because it uses forward hooks rather than the module's structure."""

from __future__ import annotations

import torch
from torch import nn


def linear_layers(handle, module: nn.Module) -> list[str]:
    """Names of the nn.Linear layers in the order the forward pass calls them."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
             for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            _with_normalisation(handle, module).forward(torch.zeros(1, *handle.input_shape))
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


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
