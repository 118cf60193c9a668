"""``torch.compile`` with a way back: what every compiled path of the engines shares.

A :class:`Compiled` callable compiles ``fn`` on first use and returns ``None`` where the caller
must take its uncompiled path instead: always once compiling has failed (no compiler, no Triton,
an unsupported operation; one warning names the reason and compiling stays off for that
callable), and for a single call that ran out of device memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (the type alone for an empty message)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


class Compiled:
    """``fn`` through ``torch.compile`` on first use; ``None`` from a call means: run it uncompiled.

    ``dynamic`` goes to ``torch.compile``; ``mark_rows`` leaves the first dimension of every
    tensor argument dynamic (the number of rows of a reduction).  ``failed`` holds the reason
    once compiling has failed.
    """

    def __init__(self, fn: Callable, name: str, *, dynamic: bool | None = None, mark_rows: bool = False):
        self.fn, self.name, self.dynamic, self.mark_rows = fn, name, dynamic, mark_rows
        self.compiled: Callable | None = None
        self.failed: str | None = None

    def __call__(self, *args, **kwargs):
        if self.failed is not None:
            return None
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, dynamic=self.dynamic)
            if self.mark_rows:
                for a in args:
                    if isinstance(a, torch.Tensor) and a.dim() >= 1:
                        torch._dynamo.maybe_mark_dynamic(a, 0)
            return self.compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            return None  # this call only: the uncompiled path may work in smaller pieces
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, but say why
            self.failed = first_line(e)
            warnings.warn(f"{self.name} runs uncompiled: it could not be compiled ({self.failed[:300]})",
                          RuntimeWarning, stacklevel=3)
            return None
