"""Fine-tuning a causal LM, plainly or with DP-SGD through Opacus, fully or with LoRA.

Both paths share the data pipeline and the loss: each sequence's loss is the mean NLL of
its own tokens (padding ignored), and a batch's loss is the mean over sequences.  With
Opacus that makes each example's gradient depend on that example alone, so the clip norm
bounds the sensitivity (Hugging Face's ``outputs.loss`` averages tokens across the whole
batch and would not).

Per-architecture details (GPT-2, Llama, Qwen2, Mistral, GPT-NeoX and OPT are tested):

- ``position_ids`` are passed with shape [B, T]: GPT-2 otherwise builds them as [1, T] and
  Opacus computes a per-sample gradient of batch 1 for the position embedding.  Rotary
  models (Llama, Qwen2, Mistral, GPT-NeoX) accept them too; their rotary tables are
  parameter-free buffers and take no gradient.  OPT derives its positions from the
  attention mask ([B, T] already) and gets none.
- OPT's learned position table is called as ``embed_positions(mask, past_length,
  position_ids=...)``: Opacus cannot record that call (an ``int`` argument) and has no
  per-sample rule for OPT's subclass of ``nn.Embedding``.  OPT's decoder layers also
  flatten the hidden states to [B * T, D] before ``final_layer_norm``, ``fc1`` and ``fc2``,
  so Opacus would take every token for an example.  During DP training both are wrapped
  (:class:`_OPTPositions`, :class:`_Unflatten`, sharing the same weights) and unwrapped
  afterwards.
- Norm layers without an Opacus rule of their own (``LlamaRMSNorm``, ``Qwen2RMSNorm``,
  ``MistralRMSNorm``; Opacus only has one for ``torch.nn.RMSNorm``) and GPT-2's ``Conv1D``
  are trained, not frozen: Opacus computes their per-sample gradients with its functorch
  fallback (``vmap`` of the layer's own gradient: exact, per layer).  In "ghost" mode those
  layers get the same explicit per-sample gradients (Opacus's "fast gradient clipping");
  ``nn.Linear`` and ``nn.Embedding`` get ghost norms.  Nothing is frozen in full fine-tuning.
- Ghost clipping's ``nn.Embedding`` norm flattens the token ids with ``.view``, which fails
  on a column slice of a padded batch ("view size is not compatible with input tensor's
  size and stride"): :func:`sequence_losses` passes contiguous ids, mask and positions.
- With LoRA (peft), only the adapter matrices are trainable, clipped and noised; every
  base weight (embeddings, norms, biases and output head included) is frozen.  Adapters
  are attached after the model is on its device (moving a peft model afterwards has been
  reported to corrupt it) and merged into the base weights at the
  end, so the result is a plain Hugging Face model.

An empty Poisson batch gives a noise-only update (and counts towards epsilon).  Tested:
the six architectures, full and LoRA, in "hooks" mode with per-sample gradients checked
against each example's own gradient, and ghost norms against their norms.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leakaudit.errors import LeakauditError
from leakaudit.io import sha256_file, write_json
from leakaudit.models.generate import context_of
from leakaudit.models.tiny import ARCHS
from leakaudit.models.tokenize import encode
from leakaudit.report.schema import PrivacyRecord

ProgressFn = Callable[[int, int, float], None]

RECORD_VERSION = 3
"""Version of what :func:`save_trained` writes (2: privacy.json names the weights' hashes; 3: a plain run of
fixed steps takes full batches only).  Stages that keep
a trained model put it in their key, so a model saved before is trained again rather than reported with a
record that cannot be tied to its weights."""

# LoRA targets per ``config.model_type``: every attention and MLP projection of a block (never the
# embeddings or the output head).  Other architectures get peft's "all-linear".
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


GHOST_VERIFIED: tuple[str, ...] = ARCHS
"""Model types whose ghost-clipping norms tests/test_dp_archs.py checks against each example's own gradient (full
and LoRA): ghost clipping trains only these."""


class LoraSettings(BaseModel):
    """Low-rank adapters (peft LoRA): only the adapters train; they are merged into the base after training."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(default=8, ge=1, description="Adapter rank.")
    alpha: float = Field(default=16.0, gt=0, description="Scaling numerator: the update is (alpha / r) B A.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        default=None,
        description="Names of the modules to adapt; None: all attention and MLP projections of the "
        "architecture (LORA_TARGETS), or peft's 'all-linear' for an architecture not listed there.",
    )


class TrainSettings(BaseModel):
    """Optimisation settings shared by plain and DP training."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(default=3, ge=1, description="Passes over the training set (ignored when steps is set).")
    steps: int | None = Field(
        default=None, ge=1, description="Optimizer steps to take; overrides epochs (for matched comparisons)."
    )
    batch_size: int = Field(
        default=32, ge=1, description="Examples per optimizer step; with DP the Poisson rate is q = 1 / ceil(N / "
        "batch_size), so the expected batch N q is at most this (N = 40, batch 30: 20).",
    )
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0)
    max_length: int = Field(default=256, ge=8, description="Longer sequences are truncated for training.")
    seed: int = 0
    lora: LoraSettings | None = Field(default=None, description="Train LoRA adapters instead of all weights.")
    max_physical_batch_size: int | None = Field(
        default=None, ge=1,
        description="DP-SGD only: run each (logical, Poisson-sampled) batch in pieces of at most this many "
        "examples (Opacus BatchMemoryManager), so a logical batch may be far larger than fits in memory; "
        "the optimizer steps once per logical batch.",
    )


class DPSettings(BaseModel):
    """DP-SGD settings: give exactly one of ``target_epsilon`` and ``noise_multiplier``.

    delta defaults to min(1e-5, 1 / (10 N)).  With ``target_epsilon`` the noise multiplier is
    calibrated so that the accountant reaches it after all the run's steps; with
    ``noise_multiplier`` the epsilon reached is whatever the accountant reports.
    """

    model_config = ConfigDict(extra="forbid")
    target_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                         description="Epsilon to reach after all steps (finite: inf is no DP).")
    randomness: Literal["secret", "seeded"] = Field(
        default="secret",
        description="secret: the Poisson batches and the noise are drawn from generators seeded from the operating "
        "system's random source, never recorded (the DP guarantee assumes nobody can predict them); seeded: from the "
        "training seed, so a run repeats exactly (experiments, tests) and the guarantee then holds only while that "
        "seed stays secret.",
    )
    noise_multiplier: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                           description="Noise std / clip norm, fixed.")
    delta: float | None = Field(default=None, gt=0, lt=1, description="Target delta; below 1/N.")
    max_grad_norm: float = Field(
        default=1.0, gt=0, description="Per-sample clip norm (the total over all layers; the initial one if adaptive)."
    )
    accountant: Literal["prv", "rdp"] = "prv"
    clipping: Literal["flat", "per_layer", "adaptive"] = Field(
        default="flat",
        description="flat: one norm over all trainable weights; per_layer: each weight tensor clipped to "
        "max_grad_norm / sqrt(#tensors) (same total sensitivity); adaptive: the clip norm tracks a quantile "
        "of the per-sample norms (Andrew et al. 2021), the private quantile estimate paid for out of the noise.",
    )
    grad_sample_mode: Literal["hooks", "ghost", "functorch", "bookkeeping"] = Field(
        default="hooks",
        description="hooks: Opacus's per-layer rules (functorch for layers without one); functorch: functorch for "
        "every layer; ghost: Opacus's ghost clipping (per-sample norms without per-sample gradients, two backward "
        "passes); bookkeeping: leakaudit's one-backward-pass clipping (leakaudit.train.bookkeeping: ghost norms or "
        "explicit per-sample gradients per layer, whichever is cheaper, tied embeddings supported), with Opacus's "
        "Poisson sampling and accountant. ghost and bookkeeping: flat clipping only.",
    )
    target_unclipped_quantile: float = Field(default=0.5, gt=0, lt=1, description="Adaptive clipping's quantile.")
    clipbound_learning_rate: float = Field(default=0.2, gt=0, description="Adaptive clipping's geometric step.")
    unclipped_num_std: float | None = Field(
        default=None, gt=0,
        description="Adaptive clipping: noise std of the unclipped count; must exceed noise_multiplier / 2. "
        "None: max(expected batch / 20, noise_multiplier).",
    )

    @model_validator(mode="after")
    def _one_noise_source(self) -> DPSettings:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of target_epsilon and noise_multiplier")
        if self.grad_sample_mode in ("ghost", "bookkeeping") and self.clipping != "flat":
            raise ValueError(f"{self.grad_sample_mode} clipping supports flat clipping only")
        return self


class _Tokens(Dataset):
    def __init__(self, ids: list[list[int]], max_length: int, pad_id: int):
        self.ids, self.max_length, self.pad_id = ids, max_length, pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        seq = self.ids[i][: self.max_length]
        x = torch.full((self.max_length,), self.pad_id, dtype=torch.long)
        m = torch.zeros(self.max_length, dtype=torch.long)
        x[: len(seq)] = torch.tensor(seq)
        m[: len(seq)] = 1
        return x, m


def default_delta(n: int) -> float:
    return min(1e-5, 1.0 / (10 * n))


def dp_delta(dp: DPSettings, n: int, where: str = "DP delta") -> float:
    """The delta a DP run over ``n`` records uses: the one asked for, refused unless below 1/N, else the default."""
    if dp.delta is None:
        return default_delta(n)
    if dp.delta >= 1.0 / n:
        raise LeakauditError(f"{where} {dp.delta:g} is not below 1/N = {1.0 / n:g} (N = {n} training records): "
                             "such a guarantee allows a whole record to leak; use a delta well below 1/N, or leave "
                             "it out")
    return dp.delta


def _base_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside Opacus's and peft's wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_module") and isinstance(model._module, nn.Module):  # Opacus GradSampleModule
            model = model._module
        elif hasattr(model, "get_base_model"):  # peft PeftModel
            model = model.get_base_model()
        else:
            break
    return model


def _model_type(model: nn.Module) -> str | None:
    cfg = getattr(_base_model(model), "config", None)
    return getattr(cfg, "model_type", None)


def sequence_losses(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean token NLL of each sequence (shape [B]); padding contributes nothing.

    Sequences are right-padded.  ``position_ids`` of shape [B, T] are passed (see the module
    docstring), except to OPT, which derives them from the attention mask itself.
    """
    width = int(mask.sum(1).max())
    # Contiguous copies, not column slices: Opacus's ghost-clipping norm for nn.Embedding flattens its
    # index input with ``.view(-1, 1)``, which fails on a [B, :width] slice of a wider tensor ("view size
    # is not compatible with input tensor's size and stride").  The same holds for position_ids, built
    # with ``repeat`` rather than ``expand`` (stride 0).
    ids, mask = ids[:, :width].contiguous(), mask[:, :width].contiguous()
    kwargs: dict = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if _model_type(model) != "opt":
        kwargs["position_ids"] = torch.arange(width, device=ids.device).unsqueeze(0).repeat(ids.shape[0], 1)
    logits = model(**kwargs).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    tmask = mask[:, 1:].float()
    return -(tok * tmask).sum(1) / tmask.sum(1).clamp_min(1.0)


# --------------------------------------------------------------------------------------------- LoRA


def apply_lora(model: PreTrainedModel, lora: LoraSettings):
    """Wrap ``model`` (already on its device) in peft LoRA adapters; only the adapters are trainable.

    The wrapper modifies ``model`` in place (its linear layers become LoRA layers) until
    :func:`merge_lora` is called.
    """
    from peft import LoraConfig, get_peft_model

    mtype = _model_type(model)
    targets = lora.target_modules or LORA_TARGETS.get(mtype or "", "all-linear")
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=mtype == "gpt2",  # GPT-2's Conv1D stores its weight transposed
    )
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with warnings.catch_warnings():
        # peft reads transformers' deprecated ``is_gradient_checkpointing``
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        peft_model = get_peft_model(model, cfg)
    peft_model._leakaudit_requires_grad = flags  # restored by merge_lora
    return peft_model


def merge_lora(peft_model) -> PreTrainedModel:
    """Merge the adapters into the base weights and return the plain base model (the same object)."""
    flags = getattr(peft_model, "_leakaudit_requires_grad", None)
    base = peft_model.merge_and_unload()
    for n, p in base.named_parameters():
        p.requires_grad_(flags.get(n, True) if flags else True)
    return base


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


# ----------------------------------------------------------------------------------- Opacus helpers


class _OPTPositions(nn.Module):
    """OPT's learned position table as a plain ``nn.Embedding`` (same weight) over explicit position ids.

    OPT calls its table as ``embed_positions(attention_mask, past_length, position_ids=...)``.
    Opacus's forward hook records the positional inputs and calls ``.detach()`` on each,
    which fails on the ``int``; and OPT's table is a subclass of ``nn.Embedding`` with no
    per-sample rule, so Opacus would fall back to functorch, which replays the layer on its
    first positional input only.  Here the table is a child ``nn.Embedding`` called on the
    offset position ids, for which Opacus has exact per-sample and ghost-norm rules.
    """

    def __init__(self, original: nn.Embedding):
        super().__init__()
        self.offset = int(getattr(original, "offset", 2))
        self.table = nn.Embedding(original.num_embeddings, original.embedding_dim, device="meta")
        self.table.weight = original.weight

    def forward(self, attention_mask: torch.Tensor, cache_length: int = 0, position_ids: torch.Tensor | None = None):
        if position_ids is None:
            position_ids = (torch.cumsum(attention_mask, dim=1) * attention_mask - 1).long()[:, cache_length:]
        return self.table(position_ids + self.offset)


class _Unflatten(nn.Module):
    """Gives the wrapped module its input as [B, T, D] where OPT's decoder layer flattened it to [B * T, D].

    OPT's decoder layer reshapes its hidden states to [B * T, D] before ``final_layer_norm``,
    ``fc1`` and ``fc2``; Opacus would then take each token for an example (a per-sample
    gradient of batch B * T).  ``shape`` holds the layer's current (B, T), set by a forward
    pre-hook on the decoder layer.
    """

    def __init__(self, inner: nn.Module, shape: dict):
        super().__init__()
        self.inner = inner
        self._shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = self._shape.get("bt", (None, None))
        if b is not None and x.dim() == 2 and x.shape[0] == b * t:
            return self.inner(x.reshape(b, t, x.shape[-1])).reshape(b * t, -1)
        return self.inner(x)


def _record_bt(shape: dict):
    def hook(_module, args, kwargs):
        h = args[0] if args else kwargs.get("hidden_states")
        shape["bt"] = tuple(h.shape[:2])

    return hook


@contextmanager
def _dp_compatible(model: nn.Module) -> Iterator[None]:
    """Swap modules Opacus cannot handle for equivalents sharing the same parameters; swap back on exit.

    Only OPT needs it: its position table (:class:`_OPTPositions`) and its decoder layers'
    flattened MLP (:class:`_Unflatten`).
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    handles = []
    try:
        from transformers.models.opt.modeling_opt import OPTDecoderLayer, OPTLearnedPositionalEmbedding
    except ImportError:  # pragma: no cover
        OPTDecoderLayer = OPTLearnedPositionalEmbedding = ()  # noqa: N806
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, OPTLearnedPositionalEmbedding) and child.weight.requires_grad:
                setattr(parent, name, _OPTPositions(child))
                swapped.append((parent, name, child))
        if isinstance(parent, OPTDecoderLayer):
            shape: dict = {}
            handles.append(parent.register_forward_pre_hook(_record_bt(shape), with_kwargs=True))
            for name in ("final_layer_norm", "fc1", "fc2"):
                child = getattr(parent, name)
                setattr(parent, name, _Unflatten(child, shape))
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


class _PerSequence:
    """The criterion handed to Opacus's ghost clipping: its input is already one loss per sequence."""

    def __init__(self):
        self.reduction = "mean"

    def __call__(self, losses: torch.Tensor) -> torch.Tensor:
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()


@cache
def _adaptive_optimizer_class():
    from opacus.optimizers import AdaClipDPOptimizer
    from opacus.optimizers.optimizer import _mark_as_processed

    class _AdaClip(AdaClipDPOptimizer):
        """Opacus's adaptive clipping with four fixes applied to the optimizer it returns.

        - The released count is centred, ``sum_i (b_i - 1/2)`` with ``b_i`` = 1 for an unclipped
          example, as in Andrew et al. (2021) and TF Privacy: adding or removing one example moves
          it by 1/2, the sensitivity under which Opacus's split of the noise between the gradient
          (``(sigma^-2 - (2 sigma_b)^-2)^-1/2``) and the count (``sigma_b``) adds up to the
          ``sigma`` the accountant is told.  Opacus counts ``sum_i b_i`` (sensitivity 1), so the
          run was less private than recorded (at eps 1 with sigma_b = sigma: about 1.7).
        - The unclipped fraction is the noisy centred count over the *expected* batch size, plus
          1/2; Opacus divides by the actual batch size, which is private (Poisson sampling) and not
          covered by the accountant, and is 0 for an empty batch.
        - An empty Poisson batch gives a noise-only update instead of failing.
        - With a logical batch split into physical pieces, the unclipped count and sample size
          survive the ``zero_grad`` between pieces (as the summed gradients do): Opacus resets
          them at every ``zero_grad``, so the count covered only the last piece.
        """

        def zero_grad(self, set_to_none: bool = False):
            carried = (self.sample_size, self.unclipped_num) if self._is_last_step_skipped else (0, 0)
            super().zero_grad(set_to_none)
            self.sample_size, self.unclipped_num = carried

        def clip_and_accumulate(self):
            n = len(self.grad_samples[0])
            if n > 0:
                super().clip_and_accumulate()  # adds this piece's unclipped examples to the count
                self.unclipped_num = self.unclipped_num - n / 2  # centred: sum of (b_i - 1/2)
                return
            for p in self.params:
                grad = torch.zeros_like(p)
                p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
                _mark_as_processed(p.grad_sample)
            self.unclipped_num = torch.zeros((), device=self.params[0].device) + self.unclipped_num

        def update_max_grad_norm(self):
            unclipped_frac = self.unclipped_num / (self.expected_batch_size * self.accumulated_iterations) + 0.5
            self.max_grad_norm *= torch.exp(
                -self.clipbound_learning_rate * (unclipped_frac - self.target_unclipped_quantile)
            )
            self.max_grad_norm = float(min(max(self.max_grad_norm, self.min_clipbound), self.max_clipbound))

    return _AdaClip


def _clean_opacus_attributes(model: nn.Module) -> None:
    """Remove what Opacus leaves behind on parameters and modules after its hooks are gone."""
    for p in model.parameters():
        for attr in ("grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample", "summed_grad"):
            if hasattr(p, attr):
                delattr(p, attr)
    for m in model.modules():
        for attr in ("activations", "max_batch_len", "ft_compute_sample_grad"):
            if attr in m.__dict__:
                delattr(m, attr)


def _noise_only_step(optimizer, params: list[nn.Parameter], ghost: bool) -> None:
    """An empty Poisson batch: the update is noise alone, and the step counts towards epsilon.

    Skipping the update instead would publish whether the batch was empty, which the
    accountant's analysis does not cover.
    """
    for p in params:
        if ghost:
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = p.new_zeros((0, *p.shape))
    optimizer.step()


# ------------------------------------------------------------------------------------------ training


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / min(batch_size, n))


def train_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    settings: TrainSettings,
    *,
    dp: DPSettings | None = None,
    progress: ProgressFn | None = None,
) -> PrivacyRecord:
    """Train ``model`` in place on ``texts`` and return its privacy record.

    Without ``dp`` the data is shuffled into fixed batches; with ``dp`` Opacus draws
    Poisson-sampled batches (rate q = 1 / ceil(N / batch_size), so the expected batch is at
    most ``batch_size``), clips each example's gradient and adds Gaussian noise, calibrated
    so that ``dp.target_epsilon`` is reached after the run's steps (``settings.steps``, or
    ``settings.epochs`` passes of 1 / q steps) or set by ``dp.noise_multiplier``.

    With ``settings.lora`` the model (which must already be on its device) gets LoRA
    adapters; only they train, and they are merged into the base weights before returning.
    A model that is already a peft ``PeftModel`` is trained as it is (its trainable
    parameters only) and left unmerged: call :func:`merge_lora` before saving.

    On return the model is a plain module again (Opacus's hooks and attributes removed) in
    eval mode, ready for ``generate`` and :func:`save_trained`.
    """
    if not texts:
        raise ValueError("no training texts")
    device = next(model.parameters()).device
    torch.manual_seed(settings.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [e.ids for e in encode(tokenizer, texts, add_eos=True)]
    context = context_of(_base_model(model).config)
    max_length = settings.max_length
    if context and max_length > context:  # a longer sequence would index past the position embeddings
        max_length = int(context)
        cut = sum(len(x) > context for x in ids)
        if cut:
            warnings.warn(f"max_length {settings.max_length} exceeds the model's {context} positions: {cut} "
                          f"sequence(s) truncated at {context} tokens", stacklevel=2)
    data = _Tokens(ids, max_length, int(pad))
    n = len(data)
    own_lora = settings.lora is not None and not _is_peft(model)
    net: nn.Module = apply_lora(model, settings.lora) if own_lora else model
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    gen = torch.Generator().manual_seed(settings.seed)
    # a plain run of fixed steps (a matched comparison) takes full batches only: a last, short batch each epoch
    # (1 record at N = 136, batch 27) would see fewer records than the DP run it is matched with
    full = dp is None and settings.steps is not None and n > settings.batch_size
    loader = DataLoader(data, batch_size=min(settings.batch_size, n), shuffle=True, generator=gen, drop_last=full)
    per_epoch = len(loader)
    total = settings.steps if settings.steps is not None else settings.epochs * per_epoch
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    net.train()
    try:
        if dp is None:
            _run(loader, optimizer, total, _backward_step(net, optimizer, device), progress)
            record = PrivacyRecord(
                steps=total, epochs=total * settings.batch_size / n if full else total / per_epoch, dataset_size=n,
                sample_rate=min(settings.batch_size, n) / n, lora_rank=settings.lora.r if settings.lora else None,
            )
        else:
            with _dp_compatible(net):
                record = _train_dp(net, loader, optimizer, params, total, device, settings, dp, progress)
    finally:
        net.eval()
        if own_lora:
            merge_lora(net)
    model.eval()
    return record


_PIECE = object()  # a step function's answer for one piece of a logical batch: no optimizer step taken yet


def _run(loader, optimizer, total: int, train_step, progress) -> None:
    """``total`` optimizer steps over ``loader`` (again from its start when it runs out).

    ``train_step(x, m)`` handles one batch and returns its mean loss (a tensor), None for an
    empty Poisson batch (a noise-only step: counted, no loss to report), or ``_PIECE`` when it
    only processed a piece of a logical batch; only real steps are counted.
    """
    step = 0
    while step < total:
        for x, m in loader:
            if step >= total:
                break
            loss = train_step(x, m)
            if loss is _PIECE:
                continue
            step += 1
            if progress and loss is not None:
                progress(step, total, loss.item())
    optimizer.zero_grad(set_to_none=True)


def _backward_step(net, optimizer, device, *, criterion=None, on_empty=None):
    """The step function of plain training and of Opacus: one backward pass, then the optimizer.

    With Opacus's BatchMemoryManager the loader yields pieces of logical batches and the DP
    optimizer skips its step on all but a logical batch's last piece (accumulating the clipped
    per-example gradients).
    """
    def train_step(x, m):
        optimizer.zero_grad(set_to_none=True)
        if x.shape[0] == 0:
            on_empty()
            return None
        x, m = x.to(device), m.to(device)
        losses = sequence_losses(net, x, m)
        loss = criterion(losses) if criterion is not None else losses.mean()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
            # Opacus's functorch path opens autocast with the dtype of integer inputs (embeddings) and warns
            warnings.filterwarnings("ignore", message=".*autocast, but the target dtype is not supported.*")
            loss.backward()
        optimizer.step()
        return _PIECE if getattr(optimizer, "_is_last_step_skipped", False) else loss.detach()

    return train_step


def expected_batch(n: int, q: float) -> int:
    """The expected Poisson batch ``N q``, rounded (``int`` would give ``b - 1`` when ``N / ceil(N / b)``
    lands just below ``b`` in floating point, and 0 for a batch of 1)."""
    return max(1, round(n * q))


def _dp_randomness(device: torch.device, settings: TrainSettings, dp: DPSettings
                   ) -> tuple[torch.Generator, torch.Generator]:
    """The noise generator (on ``device``) and the Poisson sampler's generator (on the CPU).

    ``secret``: both, and torch's global generator (dropout), seeded from the operating system's
    random source and the seeds forgotten, so nobody can reproduce the batches or the noise;
    ``seeded``: from the training seed (the sampler's as the plain run's shuffle is).
    """
    if dp.randomness == "seeded":
        return (torch.Generator(device=device).manual_seed(settings.seed + 1),
                torch.Generator().manual_seed(settings.seed))

    def secret() -> int:
        return int.from_bytes(os.urandom(8), "little") >> 1

    torch.manual_seed(secret())
    return torch.Generator(device=device).manual_seed(secret()), torch.Generator().manual_seed(secret())


@contextmanager
def _quiet_opacus() -> Iterator[None]:
    """Opacus's set-up warnings that say nothing to a user here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*[Oo]ptimal order.*")
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
        yield


def _fall_back_to_rdp(what: str) -> str:
    warnings.warn(f"the PRV accountant ran out of memory {what} (its grid grows as the noise shrinks); using the "
                  "RDP accountant instead, whose eps is a valid, looser upper bound (the privacy record says rdp)",
                  RuntimeWarning, stacklevel=3)
    return "rdp"


def _noise_for(dp: DPSettings, delta: float, q: float, total: int) -> tuple[float, str]:
    """The noise multiplier (given, or calibrated to ``dp.target_epsilon`` after ``total`` steps) and the
    accountant that will account for it: ``dp.accountant``, or RDP where PRV cannot (:func:`_epsilon`)."""
    from opacus.accountants.utils import get_noise_multiplier

    def calibrated(accountant: str) -> float:
        with _quiet_opacus(), np.errstate(divide="ignore"):
            return get_noise_multiplier(target_epsilon=dp.target_epsilon, target_delta=delta, sample_rate=q,
                                        steps=total, accountant=accountant)

    sigma, accountant = dp.noise_multiplier, dp.accountant
    if sigma is None:
        try:
            sigma = calibrated(accountant)
        except MemoryError:
            if accountant != "prv":
                raise
            accountant = _fall_back_to_rdp(f"calibrating the noise to eps {dp.target_epsilon:g}")
            sigma = calibrated(accountant)
    return sigma, _epsilon(accountant, sigma, q, total, delta)[1]


@cache  # asked before training (to choose the accountant) and after it (for the record)
def _epsilon(accountant: str, sigma: float, q: float, steps: int, delta: float) -> tuple[float, str]:
    """(eps after ``steps`` steps of noise ``sigma`` at rate ``q``, the accountant that computed it).

    PRV's discretisation grid grows as the noise shrinks (at sigma 0.1, q 0.05 and 1,000 steps it asked
    for 3.5 GiB, at 0.05 for 28 GiB); where it runs out of memory the RDP accountant takes over.
    """
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(sigma), float(q), int(steps))]
    try:
        with _quiet_opacus(), np.errstate(divide="ignore"):  # PRV takes log(0) in its tails, harmlessly
            return float(acc.get_epsilon(delta)), accountant
    except MemoryError:
        if accountant != "prv":
            raise
        return _epsilon(_fall_back_to_rdp(f"at noise multiplier {sigma:g}"), sigma, q, steps, delta)


def _privacy_record(settings, dp, n: int, *, epsilon: float, delta: float, sigma: float, q: float,
                    total: int, accountant: str) -> PrivacyRecord:
    return PrivacyRecord(
        epsilon=epsilon, delta=delta, noise_multiplier=float(sigma), sample_rate=q, steps=total,
        max_grad_norm=dp.max_grad_norm, accountant=accountant, epochs=total * q, dataset_size=n,
        clipping=dp.clipping, grad_sample_mode=dp.grad_sample_mode,
        lora_rank=settings.lora.r if settings.lora is not None else None, randomness=dp.randomness,
    )


def _train_dp(net, loader, optimizer, params, total, device, settings, dp, progress) -> PrivacyRecord:
    from opacus import PrivacyEngine

    n = len(loader.dataset)
    delta = dp_delta(dp, n)
    q = 1.0 / len(loader)  # Opacus's Poisson rate for this loader
    ghost = dp.grad_sample_mode == "ghost"
    if ghost and _model_type(net) not in GHOST_VERIFIED:
        raise LeakauditError(
            f"grad_sample_mode ghost: not verified for model type '{_model_type(net)}' (verified: "
            f"{', '.join(GHOST_VERIFIED)}). Opacus's ghost clipping takes each example's norm from module hooks, so "
            "a weight also used outside its module (a head written as a plain product with the embedding) would "
            "escape clipping; use hooks or bookkeeping"
        )
    noise_gen, sample_gen = _dp_randomness(device, settings, dp)
    # Opacus's Poisson sampler draws from the loader's generator (it has no secure one of its own outside its
    # secure mode): a copy of the loader that draws from the sampling generator, never from the training seed's
    loader = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True, generator=sample_gen)
    # before any training: the noise, and an accountant that can account for it (eps known up front)
    sigma, accountant = _noise_for(dp, delta, q, total)
    if dp.grad_sample_mode == "bookkeeping":
        return _train_bookkeeping(net, loader, optimizer, params, total, device, settings, dp, progress,
                                  sigma=sigma, delta=delta, q=q, noise_gen=noise_gen, accountant=accountant)
    with _quiet_opacus():
        extra: dict = {}
        max_grad_norm: float | list[float] = dp.max_grad_norm
        if dp.clipping == "per_layer":
            max_grad_norm = [dp.max_grad_norm / math.sqrt(len(params))] * len(params)
        elif dp.clipping == "adaptive":
            expected = expected_batch(n, q)
            extra = dict(
                target_unclipped_quantile=dp.target_unclipped_quantile,
                clipbound_learning_rate=dp.clipbound_learning_rate,
                max_clipbound=1e3 * dp.max_grad_norm,
                min_clipbound=1e-3 * dp.max_grad_norm,
                unclipped_num_std=dp.unclipped_num_std or max(expected / 20, sigma),
            )
        if ghost:
            extra["criterion"] = _PerSequence()
        engine = PrivacyEngine(accountant=accountant, secure_mode=False)
        out = engine.make_private(
            module=net,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            clipping=dp.clipping,
            grad_sample_mode=dp.grad_sample_mode,
            noise_generator=noise_gen,
            **extra,
        )
    if ghost:
        gsm, dp_optimizer, criterion, dp_loader = out
    else:
        (gsm, dp_optimizer, dp_loader), criterion = out, None
    # Opacus takes int(N q), which floating point puts one below the batch (0 for a batch of 1: inf updates)
    dp_optimizer.expected_batch_size = expected_batch(n, q)
    if dp.clipping == "adaptive":
        dp_optimizer.__class__ = _adaptive_optimizer_class()  # see _AdaClip: same state, methods replaced
    if settings.max_physical_batch_size is not None:
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        pieces = BatchMemoryManager(
            data_loader=dp_loader, max_physical_batch_size=settings.max_physical_batch_size, optimizer=dp_optimizer
        )
    else:
        pieces = nullcontext(dp_loader)
    try:
        with pieces as run_loader:
            train_step = _backward_step(gsm, dp_optimizer, device, criterion=criterion,
                                        on_empty=lambda: _noise_only_step(dp_optimizer, params, ghost))
            _run(run_loader, dp_optimizer, total, train_step, progress)
    finally:
        gsm.to_standard_module()  # removes Opacus's hooks and per-sample gradient attributes
        _clean_opacus_attributes(net)
    return _record_steps(settings, dp, n, engine.accountant.history, delta=delta, sigma=dp_optimizer.noise_multiplier,
                         q=_q(dp_loader), total=total, accountant=accountant)


def _train_bookkeeping(net, loader, optimizer, params, total, device, settings, dp, progress, *, sigma, delta, q,
                       noise_gen: torch.Generator, accountant: str):
    """DP-SGD with :class:`~leakaudit.train.bookkeeping.BookKeeper` clipping; sampling and accounting by Opacus.

    The same algorithm as Opacus's DP optimizer with flat clipping and a mean loss: Poisson
    batches of rate q (Opacus's DPDataLoader, drawn from the loader's generator: the sampling
    generator of :func:`_dp_randomness`), each example's gradient scaled by ``min(1, C / (norm + 1e-6))``,
    Gaussian noise of std ``sigma * C`` added to the sum once per logical batch, the result divided
    by the expected batch size ``round(N q)``; an empty batch gives a noise-only step.  A logical
    batch runs in pieces of ``max_physical_batch_size`` examples; their clipped sums add up.
    """
    from opacus.accountants import create_accountant
    from opacus.data_loader import DPDataLoader

    from leakaudit.train.bookkeeping import BookKeeper

    n = len(loader.dataset)
    keeper = BookKeeper(net, params, dp.max_grad_norm)
    steps = create_accountant(mechanism=accountant)  # the steps taken, as Opacus's optimizer hook records them
    expected = expected_batch(n, q)
    std = sigma * dp.max_grad_norm

    def train_step(x, m):
        size = settings.max_physical_batch_size or max(1, x.shape[0])
        losses = []
        for lo in range(0, x.shape[0], size):
            xs, ms = x[lo : lo + size].to(device), m[lo : lo + size].to(device)
            losses.append(keeper.accumulate(lambda xs=xs, ms=ms: sequence_losses(net, xs, ms))[0])
        summed = keeper.take()
        optimizer.zero_grad(set_to_none=True)
        for p in params:  # in place: one parameter-sized float32 buffer each, as plain training's .grad
            noise = torch.normal(0.0, std, size=p.shape, device=p.device, generator=noise_gen)
            grad = summed.pop(id(p), None)
            grad = noise if grad is None else grad.add_(noise)
            del noise
            p.grad = grad.div_(expected).to(p.dtype)
        optimizer.step()
        steps.step(noise_multiplier=sigma, sample_rate=q)
        return torch.cat(losses).mean() if losses else None  # an empty batch: a noise-only step

    dp_loader = DPDataLoader.from_data_loader(loader)  # Poisson batches from the loader's generator
    _run(dp_loader, optimizer, total, train_step, progress)
    # the rate the sampler drew at, read from it: the accountant's history must show that one
    return _record_steps(settings, dp, n, steps.history, delta=delta, sigma=sigma, q=_q(dp_loader), total=total,
                         accountant=accountant)


def _record_steps(settings, dp, n: int, history, *, delta: float, sigma: float, q: float, total: int,
                  accountant: str) -> PrivacyRecord:
    """The privacy record of a finished run, once its accountant's history shows the planned steps at one noise
    and rate (the eps is then the one computed before training)."""
    taken = sum(int(steps) for *_, steps in history)
    if taken != total or any((float(s), float(r)) != (float(sigma), float(q)) for s, r, _ in history):
        raise RuntimeError(f"DP accounting: the accountant recorded {taken} steps ({history}), the run planned "
                           f"{total} at noise {sigma:g}, rate {q:g}")
    epsilon = _epsilon(accountant, sigma, q, total, delta)[0]
    return _privacy_record(settings, dp, n, epsilon=epsilon, delta=delta, sigma=sigma, q=q, total=total,
                           accountant=accountant)


def _q(loader: DataLoader) -> float:
    sampler = getattr(loader, "batch_sampler", None)
    q = getattr(sampler, "sample_rate", None)
    return float(q) if q is not None else 1.0 / len(loader)


def matched_settings(
    source: PrivacyRecord | TrainSettings, n_examples: int, *, base: TrainSettings | None = None
) -> TrainSettings:
    """Settings for a plain run matched to a DP run: the same optimizer steps and (expected) batch size.

    ``source`` is the DP run's privacy record, or the ``TrainSettings`` it was (or will be)
    trained with; ``n_examples`` is its training set size.  The DP run's batches are
    Poisson-sampled with rate q, so the plain run uses batches of round(q N) and the same
    number of steps.  Other fields (lr, LoRA, max_length, seed, ...) come from ``base``, or
    from ``source`` when it is a ``TrainSettings``.
    """
    if n_examples < 1:
        raise ValueError("n_examples must be positive")
    if isinstance(source, TrainSettings):
        per_epoch = _steps_per_epoch(n_examples, source.batch_size)
        steps = source.steps if source.steps is not None else source.epochs * per_epoch
        q = 1.0 / per_epoch
        base = base or source
    else:
        if source.steps is None or source.sample_rate is None:
            raise ValueError("the privacy record lacks steps or sample_rate")
        steps, q = source.steps, source.sample_rate
        base = base or TrainSettings()
    batch = max(1, min(n_examples, round(q * n_examples)))
    return base.model_copy(update={"steps": int(steps), "batch_size": batch})


def save_trained(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, record: PrivacyRecord
) -> None:
    """Save a model in Hugging Face format (safetensors) with ``privacy.json`` beside it.

    A peft model still carrying LoRA adapters is merged first, so the directory always
    holds a plain model that ``leakaudit.models.loading.load_model`` can read.
    """
    if _is_peft(model):
        model = merge_lora(model)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # the record names the weights it was saved with, so an audit can tell it from a privacy.json put beside
    # other weights (copied from another model, or written by hand)
    weights = {f.name: sha256_file(f) for f in sorted(out.glob("*.safetensors"))}
    record = record.model_copy(update={"weights_sha256": weights, "bound_to_weights": None})
    write_json(out / "privacy.json", record.model_dump(mode="json"))
