"""Reductions over the vocabulary: per-token log-probs, Min-K%++'s statistics, log-sum-exp.

After the model, the scoring engine's work is a reduction over every scored position's logits:
the log-prob of the token that came next and, for Min-K%++, the mean and variance of log p under p.
Written as tensor operations (a float32 copy, a log-softmax, an exponential, two products, two sums)
each step is a pass over a [tokens, vocabulary] float32 tensor: about 50 bytes of memory traffic per
logit, against the 2 bytes the bf16 logits themselves take.  On an H200 the float copy and the
log-softmax alone took 0.145 s of a 0.546 s scoring pass (GPT-2-small size, 390k tokens).

The same values come from one streaming pass: with ``m`` the row's maximum, ``y = x - m``,
``s = sum e^y``, ``a = sum e^y y / s`` and ``b = sum e^y y^2 / s``:

    log p(target) = x[target] - m - log s
    mean of log p = a - log s                 (log p = y - log s)
    var of log p  = b - a^2                   (a shift does not change a variance)

:func:`fused_logprobs` writes it that way; compiled (``torch.compile``) it becomes one or two
kernels reading the logits in their own dtype and writing only the per-token results.  It is
used where compiling pays and works: on CUDA devices by default; ``LEAKAUDIT_COMPILE=1`` forces it
anywhere (a C++ compiler is then needed on a CPU), ``LEAKAUDIT_COMPILE=0`` turns it off.  If
compiling fails the engine warns once, naming the reason, and goes on with the tensor-operation
form (:func:`eager_logprobs`), which keeps its float32 copy to ``chunk`` rows at a time.
"""

from __future__ import annotations

import os
from functools import partial

import torch

from leakaudit.errors import LeakauditError
from leakaudit.models.compiling import Compiled

ENV = "LEAKAUDIT_COMPILE"
_ROWS = 4096  # rows per compiled call: bounds anything materialised (as the eager form's chunks do)


def compile_wanted(device: torch.device) -> bool:
    """Whether vocabulary reductions on ``device`` should be compiled (``LEAKAUDIT_COMPILE``)."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    if value not in ("", "auto"):
        raise LeakauditError(f"environment variable {ENV}={value!r}: use 1, 0 or auto")
    return device.type == "cuda"


def eager_logprobs(logits: torch.Tensor, targets: torch.Tensor, stats: bool, chunk: int = 4096) -> torch.Tensor:
    """[1, n] log-probs of ``targets`` [n] under ``logits`` [n, V] (or [3, n]: with mean and variance of log p).

    Plain tensor operations; the float32 copy is made ``chunk`` rows at a time.
    """
    parts = []
    for i in range(0, logits.shape[0], chunk):
        logp = torch.log_softmax(logits[i : i + chunk].float(), dim=-1)
        lp = logp.gather(-1, targets[i : i + chunk, None]).squeeze(-1)
        if not stats:
            parts.append(lp[None])
            continue
        p = logp.exp()
        plogp = torch.where(p > 0, p * logp, 0.0)  # a token with logit -inf adds nothing (not 0 * -inf)
        mu = plogp.sum(-1)
        # sum p (log p - mu)^2, not sum p log^2 p - mu^2: for a flat distribution over a large vocabulary both
        # of those terms are about log^2 V (~117 at 50,257 tokens) and float32 would lose the variance
        dev = logp - mu[:, None]
        var = torch.where(p > 0, p * dev * dev, 0.0).sum(-1)
        parts.append(torch.stack([lp, mu, var]))
    if not parts:
        return torch.zeros((3 if stats else 1, 0), device=logits.device)
    return torch.cat(parts, dim=1)


def fused_logprobs(logits: torch.Tensor, targets: torch.Tensor, stats: bool) -> torch.Tensor:
    """:func:`eager_logprobs` as one streaming reduction (see the module's formulas); meant to be compiled."""
    x = logits.float()
    m = x.amax(-1, keepdim=True)
    y = x - m
    e = y.exp()
    s = e.sum(-1)
    log_s = s.log()
    lp = y.gather(-1, targets[:, None]).squeeze(-1) - log_s
    if not stats:
        return lp[None]
    ey = torch.where(e > 0, e * y, 0.0)  # a token with logit -inf adds nothing (not 0 * -inf)
    a = ey.sum(-1) / s
    b = torch.where(e > 0, ey * y, 0.0).sum(-1) / s
    return torch.stack([lp, a - log_s, (b - a * a).clamp_min(0.0)])


def _logsumexp(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.float(), dim=-1)


_Compiled = partial(Compiled, mark_rows=True)  # reductions: the number of rows stays dynamic
_fused = _Compiled(fused_logprobs, "the per-token log-prob reduction")
_lse = _Compiled(_logsumexp, "the log-sum-exp over the vocabulary")


def compiled_available() -> bool:
    """False once compiling the per-token reduction has failed in this process."""
    return _fused.failed is None


def _in_chunks(op: Compiled, x: torch.Tensor, *rest) -> torch.Tensor | None:
    """``op`` over ``_ROWS`` rows of ``x`` (and of each tensor in ``rest``) at a time, concatenated along the
    rows (the results' last dimension); None when compiling is off or failed (then nothing is kept)."""
    parts = []
    for i in range(0, x.shape[0], _ROWS):
        out = op(x[i : i + _ROWS], *(r[i : i + _ROWS] if isinstance(r, torch.Tensor) else r for r in rest))
        if out is None:
            return None
        parts.append(out)
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, stats: bool, *, compiled: bool) -> torch.Tensor:
    """[1, n] (or with ``stats`` [3, n]) float32 per-token values of ``logits`` [n, V], ``targets`` [n]."""
    out = _in_chunks(_fused, logits, targets, stats) if compiled and logits.shape[0] else None
    return out if out is not None else eager_logprobs(logits, targets, stats)


def logsumexp(logits: torch.Tensor, *, compiled: bool) -> torch.Tensor:
    """float32 log-sum-exp over the last dimension of ``logits`` [..., V]."""
    if compiled and logits.numel():
        out = _in_chunks(_lse, logits.reshape(-1, logits.shape[-1]))
        if out is not None:
            return out.reshape(logits.shape[:-1])
    return _logsumexp(logits)
