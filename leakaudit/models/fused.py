"""Kernel substitutions that leave a model's function unchanged.

GPT-2-family models compute their tanh-approximated GELU (``gelu_new``) as about eight separate
elementwise operations, each a pass over the MLP's widest activations; ``torch``'s own
``gelu(approximate="tanh")`` is the same formula in one kernel (and, in bf16, rounds once instead
of after every step).  On a GPU the composite form costs about as much memory traffic as the
rest of the block's elementwise work together.  The scoring and generation engines swap it in.
"""

from __future__ import annotations

import torch
from torch import nn


class TanhGELU(nn.Module):
    """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), one fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


def fuse_activations(model: nn.Module) -> int:
    """Replace every composite tanh-GELU module of ``model`` by :class:`TanhGELU`; returns how many."""
    from transformers.activations import NewGELUActivation

    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, TanhGELU())
                swapped += 1
    return swapped
