"""Kernel substitutions that leave a model's function unchanged.

GPT-2-family models compute their tanh-approximated GELU (``gelu_new``) as about eight separate
elementwise operations, each a pass over the MLP's widest activations; ``torch``'s own
``gelu(approximate="tanh")`` is the same formula in one kernel (and, in bf16, rounds once instead
of after every step).  On a GPU the composite form costs about as much memory traffic as the
rest of the block's elementwise work together.  The scoring and generation engines swap it in.

A vocabulary that is not a multiple of 64 (GPT-2's 50,257) makes the output projection the
slowest product on a GPU; :func:`padded_head` computes it with padded rows instead.
"""

from __future__ import annotations

from contextlib import contextmanager

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


class PaddedHead(nn.Module):
    """A model's output projection computed with its rows padded to a multiple of 64.

    GPT-2's 50,257-token vocabulary is odd, so its logits matrix cannot be stored with the
    16-byte row alignment the fast GPU matrix kernels need, and cuBLAS falls back to a generic
    kernel: on an H200 that one product took 39% of the scoring engine's time.  The padded copy
    of the weight (zero rows) is made once and refreshed in place when the weight changes (so a
    captured CUDA graph that reads it stays valid); the extra logits are cut off, so callers see
    the model's own vocabulary.  For inference only: under autograd it is the plain projection.
    """

    def __init__(self, head: nn.Linear, multiple: int = 64):
        super().__init__()
        self.head = head
        self.n = head.out_features
        self.width = -(-self.n // multiple) * multiple
        self._w: torch.Tensor | None = None
        self._b: torch.Tensor | None = None
        self._key: tuple | None = None

    @property
    def weight(self) -> torch.Tensor:  # what callers reading ``get_output_embeddings().weight`` expect
        return self.head.weight

    def refresh(self, force: bool = False) -> None:
        """Copy the head's weight (and bias) into the padded buffers when it changed, or always with ``force``.

        ``force``: edits through ``.data`` do not bump a tensor's version, so every
        :func:`padded_head` block starts with a full copy (one vocabulary x width copy).
        """
        w, b = self.head.weight, self.head.bias
        if self._w is None or self._w.dtype != w.dtype or self._w.device != w.device:
            with torch.inference_mode(False):  # plain tensors, updatable in and out of inference mode
                self._w = torch.zeros((self.width, w.shape[1]), dtype=w.dtype, device=w.device)
                self._b = None if b is None else torch.zeros(self.width, dtype=b.dtype, device=b.device)
            self._key = None
        key = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
        if force or key != self._key:
            with torch.no_grad():
                self._w[: self.n].copy_(w)
                if b is not None:
                    self._b[: self.n].copy_(b)
            self._key = key

    def release(self) -> None:
        """Free the padded copy (the next use makes it again)."""
        self._w = self._b = self._key = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.head(x)
        self.refresh()
        return nn.functional.linear(x, self._w, self._b)[..., : self.n]


_padded: dict[int, PaddedHead] = {}  # by id(model); an entry lives while its model does (weakref callback)


@contextmanager
def padded_head(model: nn.Module, *, force: bool = False):
    """Within the block, ``model``'s output projection runs through a :class:`PaddedHead`.

    Only where it pays: an ``nn.Linear`` head on a GPU whose vocabulary is not a multiple of 64
    (``force`` applies it anywhere, for tests).  The same padded weight is reused by every block
    for the same model.  The model is restored on exit.
    """
    import weakref

    get, put = getattr(model, "get_output_embeddings", None), getattr(model, "set_output_embeddings", None)
    head = get() if get is not None else None
    if put is None or not _plain_linear(head) or head.out_features % 64 == 0 or not (
            force or head.weight.device.type == "cuda"):
        yield None
        return
    ph = _padded.get(id(model))
    if ph is None or ph.head is not head:
        ph = _padded[id(model)] = PaddedHead(head)
        weakref.finalize(model, _padded.pop, id(model), None)
    try:
        put(ph)
    except (AttributeError, NotImplementedError):  # a model without a settable head: leave it alone
        yield None
        return
    if get() is not ph:  # the setter put it somewhere the model does not read from
        put(head)
        yield None
        return
    try:
        ph.refresh(force=True)
        yield ph
    finally:
        put(head)


def _plain_linear(head) -> bool:
    """An ``nn.Linear`` exactly, whose forward nothing else wraps: no hooks (accelerate's device
    placement, a user's), no instance-level forward, a plain weight of the declared shape."""
    return (type(head) is nn.Linear and not head._forward_hooks and not head._forward_pre_hooks
            and not hasattr(head, "_hf_hook") and "forward" not in vars(head)
            and type(head.weight) in (nn.Parameter, torch.Tensor)
            and tuple(head.weight.shape) == (head.out_features, head.in_features))


def release_padded(model: nn.Module) -> None:
    """Free the padded copy of ``model``'s output projection, if one was made."""
    ph = _padded.pop(id(model), None)
    if ph is not None:
        ph.release()
