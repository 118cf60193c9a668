"""Per-example clipped gradients in one backward pass ("book-keeping" clipping, Bu et al. 2023).

DP-SGD needs, for every example i of a batch, the norm of its own gradient, to scale it by
``c_i = min(1, C / ||grad_i||)`` before summing.  Opacus's hooks mode materialises every
per-example gradient (memory B x parameters); its ghost mode computes the norms without them but
runs two backward passes, each with its weight gradients.  Here:

1. one forward pass records, for every module that owns a trainable weight, its input ``a`` and
   its output tensor;
2. one backward pass (``torch.autograd.grad`` of the summed per-sequence losses with respect to
   those outputs) gives each module's output gradient ``g``; no weight gradient is computed in it;
3. from ``a`` and ``g`` alone, each example's squared gradient norm is summed over the modules:
   - ``nn.Linear`` (and GPT-2's ``Conv1D``), whose per-example gradient is ``g_i^T a_i``: by the
     ghost norm ``sum_{t,s} (a_t . a_s)(g_t . g_s)`` (about ``B T^2 (in + out)`` operations) or by
     the explicit per-example gradient (``B T in out``), whichever is cheaper; the explicit one
     is kept and reused in step 4;
   - ``nn.Embedding``: ``sum_{t,s} [x_t = x_s] (g_t . g_s)`` over token ids ``x``;
   - a weight shared by an embedding and an output projection (tied embeddings): the two norms
     plus twice the cross term ``sum_{t,s} gl_s[x_t] (ge_t . h_s)``;
   - ``nn.LayerNorm``, and RMSNorm layers of the Llama family (checked on the module itself):
     explicit per-example gradients, ``sum_t g_t * xhat_t`` (and ``sum_t g_t`` for a bias);
   - any other module with trainable weights of its own (the RMSNorm variants, subclasses that
     change ``forward``): explicit per-example gradients by ``torch.func`` (``vmap`` of the
     module's vector-Jacobian product);
4. the clipped sum ``sum_i c_i grad_i`` is computed per module directly: ``(c . g)^T a`` for a
   linear layer (one product, the cost of its ordinary weight gradient), an index-add for an
   embedding, a weighted sum of the explicit per-example gradients otherwise.

The result equals Opacus's flat clipping (same ``C / (norm + 1e-6)`` factor); the tests check the
norms and the clipped sums against each example's gradient computed alone, on the six tested
architectures, full and LoRA.  What the rules cannot handle is refused with an error naming the
module, never approximated: inputs whose first dimension is not the batch (OPT's flattened MLP is
unflattened by the training loop's ``_dp_compatible``), modules with several tensor inputs,
subclasses that change ``forward``, parameters kept in containers no forward call uses (peft's
LoRA-on-embedding, IA3, DoRA), modules owning trainable weights that were not called, inputs
modified in place after the call, gradient checkpointing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

try:  # transformers' GPT-2 projection: y = x @ W + b with W stored as [in, out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()  # type: ignore[assignment,misc]

# Per-example gradients of one linear layer are kept (rather than ghost norms used) only while they
# take at most this many bytes, so a wide output head never materialises B x V x d floats.
EXPLICIT_BYTES = 256 * 2**20
# Modules without a specific rule get explicit per-example gradients; refused above this size.
GENERIC_BYTES = 2**30


@dataclass
class _Site:
    """One module that owns trainable weights, and what one batch recorded for it."""

    name: str
    module: nn.Module
    kind: str  # "linear", "conv1d", "embedding", "layernorm", "rmsnorm" or "other" (the generic rule)
    params: list[nn.Parameter]  # its own trainable parameters
    calls: list[tuple] = field(default_factory=list)  # (input, (output's gradient edge, shape, dtype)) per call
    a: torch.Tensor | None = None  # input, [B, T, in] (ids [B, T] for an embedding)
    g: torch.Tensor | None = None  # output gradient, [B, T, out]
    per_example: dict[int, torch.Tensor] = field(default_factory=dict)  # id(param) -> [B, *shape]


_RULES: list[tuple[str, type, set[str]]] = [
    ("linear", nn.Linear, {"weight", "bias"}),
    ("embedding", nn.Embedding, {"weight"}),
    ("layernorm", nn.LayerNorm, {"weight", "bias"}),
] + ([("conv1d", Conv1D, {"weight", "bias"})] if Conv1D else [])


def _kind(m: nn.Module, names: list[str]) -> str:
    """The rule for a module: only for the exact computation the rule assumes.

    A subclass that overrides ``forward`` (a scaled embedding, a layer with extra terms) or that
    carries parameters besides its weight and bias gets the generic rule ("other").
    """
    for kind, cls, allowed in _RULES:
        if isinstance(m, cls) and type(m).forward is cls.forward and set(names) <= allowed:
            return kind
    return "rmsnorm" if _is_rms_norm(m) else "other"


def _rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The RMS normalisation of the Llama family's norm layers (in float32, cast back)."""
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rms_eps(m: nn.Module):
    return getattr(m, "variance_epsilon", getattr(m, "eps", None))


def _is_rms_norm(m: nn.Module) -> bool:
    """Whether ``m`` computes ``weight * rms_normalise(x)`` (Llama, Qwen2, Mistral and the like).

    Checked on the module itself, with a random weight (a rule must not hold only at the
    all-ones initial weight) and a random input: many architectures define their own RMSNorm class,
    and some scale by ``1 + weight`` or normalise differently; those keep the generic rule.
    """
    names = [n for n, _ in m.named_parameters(recurse=False)]
    eps = _rms_eps(m)
    w = getattr(m, "weight", None)
    if names != ["weight"] or not isinstance(eps, float) or w is None or w.dim() != 1 or any(m.children()):
        return False
    from torch.func import functional_call

    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, 3, w.shape[0], generator=gen).to(w.device, w.dtype)
    wt = torch.randn(w.shape[0], generator=gen).to(w.device, w.dtype)
    try:
        with torch.no_grad():
            y = functional_call(m, {"weight": wt}, (x,))
    except Exception:  # noqa: BLE001 - any module that cannot run this probe keeps the generic rule
        return False
    return isinstance(y, torch.Tensor) and y.shape == x.shape and torch.equal(y, wt * _rms_normalise(x, eps))


def _refuse(name: str, m: nn.Module, why: str) -> ValueError:
    return ValueError(f"book-keeping clipping: module {name!r} ({type(m).__name__}) {why}")


class BookKeeper:
    """Clipped per-example gradient sums for ``params`` of ``model``, one backward pass per batch.

    ``accumulate`` adds one (physical) batch's clipped sum into ``summed``; the caller adds the
    noise and steps once per logical batch.  ``explicit_bytes``: the memory allowed for one
    linear layer's explicit per-example gradients (0: always ghost norms).
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter], max_grad_norm: float,
                 *, explicit_bytes: int = EXPLICIT_BYTES):
        self.max_grad_norm = float(max_grad_norm)
        self.explicit_bytes = explicit_bytes
        self.params = list(params)
        trainable = {id(p) for p in self.params}
        self.sites: list[_Site] = []
        owners: dict[int, list[_Site]] = {}
        for name, m in model.named_modules():
            own = [p for p in m.parameters(recurse=False) if id(p) in trainable]
            if not own:
                continue
            names = {id(q): n for n, q in m.named_parameters(recurse=False)}
            site = _Site(name or "(model)", m, _kind(m, [names[id(q)] for q in own]), own)
            if isinstance(m, (nn.ParameterDict, nn.ParameterList)):
                raise _refuse(site.name, m, "holds trainable parameters that no forward call of its own uses "
                              "(peft keeps LoRA-on-embedding, IA3 and DoRA weights this way); its per-example "
                              "gradients cannot be attributed")
            if site.kind == "other" and any(True for _ in m.children()):
                raise _refuse(site.name, m, "owns trainable parameters and has sub-modules; no per-example "
                              "rule applies to it")
            if site.kind == "embedding" and (m.max_norm is not None or m.scale_grad_by_freq or m.sparse):
                raise _refuse(site.name, m, "uses max_norm, scale_grad_by_freq or sparse gradients, which "
                              "book-keeping clipping does not support")
            self.sites.append(site)
            for p in own:
                owners.setdefault(id(p), []).append(site)
        # transformers marks the checkpointed modules (the model's deprecated property is avoided: peft forwards it)
        if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
            raise ValueError("book-keeping clipping does not support gradient checkpointing (recomputed layers "
                             "would be recorded twice); switch it off or use grad_sample_mode hooks")
        missing = trainable - set(owners)
        if missing:
            raise ValueError(f"book-keeping clipping: {len(missing)} trainable parameter(s) not owned by any module")
        self.ties: dict[int, tuple[_Site, _Site]] = {}
        for pid, sites in owners.items():
            if len(sites) == 1:
                continue
            kinds = sorted(s.kind for s in sites)
            if kinds != ["embedding", "linear"]:
                names = ", ".join(s.name for s in sites)
                raise ValueError(f"book-keeping clipping: a parameter shared by {names} is supported only "
                                 "between one embedding and one linear output projection")
            emb, lin = sorted(sites, key=lambda s: s.kind)
            if lin.module.weight is not emb.module.weight:
                raise ValueError(f"book-keeping clipping: {lin.name!r} shares a parameter with {emb.name!r} "
                                 "other than its weight")
            self.ties[pid] = (emb, lin)
        self.summed: dict[int, torch.Tensor] = {}
        self._grams: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------ recording

    @contextmanager
    def _recording(self) -> Iterator[None]:
        def hook(site: _Site):
            def record(m, args, kwargs, out):
                tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
                if len(tensors) != 1 or not isinstance(out, torch.Tensor):
                    raise _refuse(site.name, m, f"was called with {len(tensors)} tensor inputs or returned "
                                  "something other than one tensor; its per-example rule needs exactly one of each")
                try:
                    # the output's place in the graph, not the output: the tensor itself is freed as soon as
                    # nothing else needs it (a layer's output is often not saved for the backward pass)
                    edge = get_gradient_edge(out)
                except RuntimeError as e:
                    raise _refuse(site.name, m, f"returned an output outside the autograd graph ({e}); "
                                  "reentrant gradient checkpointing does this") from None
                x = tensors[0]
                site.calls.append((x, x._version, (edge, out.shape, out.dtype)))
            return record

        handles = [s.module.register_forward_hook(hook(s), with_kwargs=True) for s in self.sites]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def accumulate(self, losses_fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``losses_fn`` (one loss per example, shape [B]), add the clipped gradient sum to ``summed``.

        Returns the per-example losses (detached) and the per-example gradient norms before clipping.
        """
        for s in self.sites:
            s.calls, s.a, s.g, s.per_example = [], None, None, {}
        try:
            with self._recording():
                losses = losses_fn()
            b = losses.shape[0]
            for s in self.sites:
                if not s.calls:
                    raise _refuse(s.name, s.module, "owns trainable parameters but was not called in the forward "
                                  "pass, so their per-example gradients cannot be attributed")
                for x, _, (_, shape, _) in s.calls:
                    if x.shape[0] != b or shape[0] != b:
                        raise _refuse(s.name, s.module, f"was called on an input of shape {tuple(x.shape)} (output "
                                      f"{tuple(shape)}) whose first dimension is not the batch ({b}); per-example "
                                      "gradients need batch-first inputs")
            edges = [edge for s in self.sites for _, _, (edge, _, _) in s.calls]
            grads = list(torch.autograd.grad(losses.sum(), edges, allow_unused=True)) if edges else []
            metas = [meta for s in self.sites for _, _, (_, *meta) in s.calls]
            del edges
            k = 0
            for s in self.sites:
                ins, gs = [], []
                for x, version, _ in s.calls:
                    g, (shape, dtype) = grads[k], metas[k]
                    grads[k] = None
                    k += 1
                    if x._version != version:
                        raise _refuse(s.name, s.module, "had its input modified in place after the call; the "
                                      "recorded input is no longer the one its gradient belongs to")
                    x = x.detach()  # inputs are activations of the graph: what follows must not extend it
                    ins.append(x.reshape(b, -1) if s.kind == "embedding" else x.reshape(b, -1, x.shape[-1]))
                    gs.append((x.new_zeros(shape, dtype=dtype) if g is None else g).reshape(b, -1, shape[-1]))
                if ins:  # a module called several times: its calls' tokens side by side
                    s.a = torch.cat(ins, 1) if len(ins) > 1 else ins[0]
                    s.g = torch.cat(gs, 1) if len(gs) > 1 else gs[0]
                s.calls = []
            with torch.no_grad():
                self._grams = {}
                norms = torch.sqrt(self._squared_norms(b).clamp_min(0.0))  # ghost sums can round below 0
                self._grams = {}
                scale = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
                self._add_clipped(scale)
        finally:
            for s in self.sites:
                s.calls, s.a, s.g, s.per_example = [], None, None, {}
        return losses.detach(), norms

    # ---------------------------------------------------------------------------------------- norms

    def _squared_norms(self, b: int) -> torch.Tensor:
        dev = self.params[0].device
        total = torch.zeros(b, dtype=torch.float32, device=dev)
        for s in self.sites:
            if s.a is None:
                continue
            for p in s.params:
                if id(p) in self.ties:
                    continue  # below, with its cross term
                total += self._site_norm2(s, p)
        for emb, lin in self.ties.values():
            if emb.a is None and lin.a is None:
                continue
            if emb.a is not None:
                total += self._site_norm2(emb, emb.module.weight)
            if lin.a is not None:
                total += self._site_norm2(lin, lin.module.weight)
            if emb.a is not None and lin.a is not None:
                total += 2 * _tied_cross(emb.a, emb.g.float(), lin.a.float(), lin.g.float(), emb.module.padding_idx)
        return total

    def _site_norm2(self, s: _Site, p: nn.Parameter) -> torch.Tensor:
        a, g = s.a, s.g.float()
        if s.kind in ("linear", "conv1d"):
            if p is getattr(s.module, "bias", None):
                return g.sum(1).pow(2).sum(1)
            a = a.float()
            b, t, d_in = a.shape
            d_out = g.shape[-1]
            explicit_cost, ghost_cost = d_in * d_out, t * (d_in + d_out)
            if explicit_cost <= ghost_cost and b * d_in * d_out * 4 <= self.explicit_bytes:
                # [B, out, in] like nn.Linear's weight; [B, in, out] like Conv1D's
                per = torch.bmm(g.transpose(1, 2), a) if s.kind == "linear" else torch.bmm(a.transpose(1, 2), g)
                s.per_example[id(p)] = per
                return per.pow(2).sum((1, 2))
            return (self._gram(s.a) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        if s.kind == "embedding":
            same = a.unsqueeze(2) == a.unsqueeze(1)
            if s.module.padding_idx is not None:  # the padding row takes no gradient
                keep = a != s.module.padding_idx
                same = same & keep.unsqueeze(2) & keep.unsqueeze(1)
            return (torch.bmm(g, g.transpose(1, 2)) * same).sum((1, 2))
        return self._per_example(s)[id(p)].flatten(1).float().pow(2).sum(1)

    def _per_example(self, s: _Site) -> dict[int, torch.Tensor]:
        """Explicit per-example gradients ([B, *shape]) of a norm layer's or a generic module's parameters.

        Normalisation layers ``y = xhat * w (+ b)``: ``sum_t g_t * xhat_t`` (and ``sum_t g_t``);
        anything else: :meth:`_functional_per_example`.
        """
        if s.per_example:
            return s.per_example
        m = s.module
        if s.kind == "layernorm":
            a = s.a.reshape(s.a.shape[0], -1, *m.normalized_shape).float()
            xhat = torch.nn.functional.layer_norm(a, m.normalized_shape, None, None, m.eps)
        elif s.kind == "rmsnorm":
            a = s.a
            xhat = _rms_normalise(a, _rms_eps(m)).float()
        else:
            return self._functional_per_example(s)
        g = s.g.reshape(xhat.shape).float()
        s.per_example = {id(p): (g * xhat).sum(1) if p is m.weight else g.sum(1) for p in s.params}
        return s.per_example

    def _gram(self, a: torch.Tensor) -> torch.Tensor:
        """``a a^T`` per example ([B, T, T], float32), once per input tensor: layers reading the same
        input (Llama's q/k/v and gate/up projections, a LoRA adapter and its base) share it."""
        key = (a.data_ptr(), tuple(a.shape), tuple(a.stride()), a.dtype)
        if key not in self._grams:
            af = a.float()
            self._grams[key] = torch.bmm(af, af.transpose(1, 2))
        return self._grams[key]

    def _functional_per_example(self, s: _Site) -> dict[int, torch.Tensor]:
        """Per-example gradients of a module's own trainable parameters: vmap of its vector-Jacobian product."""
        if s.per_example:
            return s.per_example
        from torch.func import functional_call, grad, vmap

        size = s.a.shape[0] * sum(p.numel() for p in s.params) * 4
        if size > GENERIC_BYTES:
            raise _refuse(s.name, s.module, f"has no specific per-example rule, and its explicit per-example "
                          f"gradients would take {size / 2**30:.1f} GiB")

        names = {id(p): n for n, p in s.module.named_parameters(recurse=False)}
        keys = [names[id(p)] for p in s.params]

        def inner(weights: dict, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            out = functional_call(s.module, weights, (x.unsqueeze(0),))
            return (out.float() * g.unsqueeze(0)).sum()

        weights = {n: p.detach() for n, p in zip(keys, s.params)}
        per = vmap(grad(inner), in_dims=(None, 0, 0))(weights, s.a.detach(), s.g.float())
        s.per_example = {id(p): per[n] for n, p in zip(keys, s.params)}
        return s.per_example

    # ---------------------------------------------------------------------------------- clipped sum

    def _add_clipped(self, scale: torch.Tensor) -> None:
        for s in self.sites:
            if s.a is None:
                continue
            for p in s.params:
                self._add(p, self._site_clipped(s, p, scale))
            s.a, s.g, s.per_example = None, None, {}  # freed layer by layer

    def _site_clipped(self, s: _Site, p: nn.Parameter, scale: torch.Tensor) -> torch.Tensor:
        if id(p) in s.per_example:
            return torch.tensordot(scale, s.per_example[id(p)].float(), dims=1)
        gc = s.g.float() * scale.view(-1, 1, 1)
        if s.kind in ("linear", "conv1d"):
            if p is getattr(s.module, "bias", None):
                return gc.sum((0, 1))
            a = s.a.float().flatten(0, 1)
            gc = gc.flatten(0, 1)
            return gc.T @ a if s.kind == "linear" else a.T @ gc
        if s.kind == "embedding":
            ids = s.a.flatten()
            gc = gc.flatten(0, 1)
            if s.module.padding_idx is not None:
                gc = gc * (ids != s.module.padding_idx).unsqueeze(1)
            out = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            return out.index_add_(0, ids, gc)
        return torch.tensordot(scale, self._per_example(s)[id(p)].float(), dims=1)

    def _add(self, p: nn.Parameter, value: torch.Tensor) -> None:
        have = self.summed.get(id(p))
        self.summed[id(p)] = value if have is None else have + value

    def take(self) -> dict[int, torch.Tensor]:
        """The clipped sums accumulated so far (float32, by ``id(param)``), and reset."""
        out, self.summed = self.summed, {}
        return out


def _tied_cross(ids: torch.Tensor, ge: torch.Tensor, h: torch.Tensor, gl: torch.Tensor,
                padding_idx: int | None) -> torch.Tensor:
    """Per-example ``<E_i, H_i>``: E the embedding's gradient (ids, ge), H the output projection's (h, gl).

    ``E[j] = sum_{t: x_t = j} ge_t`` and ``H[j] = sum_s gl_s[j] h_s``, so
    ``<E, H> = sum_{t,s} gl_s[x_t] (ge_t . h_s)``.
    """
    b, t = ids.shape
    s = h.shape[1]
    picked = gl.gather(2, ids.unsqueeze(1).expand(b, s, t))  # [B, S, T]: gl_s[x_t]
    if padding_idx is not None:
        picked = picked * (ids != padding_idx).unsqueeze(1)
    return (torch.bmm(h, ge.transpose(1, 2)) * picked).sum((1, 2))  # h_s . ge_t, [B, S, T]
