"""Fine-tuning a causal LM, plainly or with DP-SGD through Opacus.

Both paths share the data pipeline and the loss: each sequence's loss is the mean NLL of
its own tokens (padding ignored), and a batch's loss is the mean over sequences.  With
Opacus that makes each example's gradient depend on that example alone, so the clip norm
bounds the sensitivity (Hugging Face's ``outputs.loss`` averages tokens across the whole
batch and would not).  ``position_ids`` are passed with shape [B, T]: GPT-2 otherwise
builds them as [1, T] and Opacus computes a per-sample gradient of batch 1 for the
position embedding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leakaudit.io import write_json
from leakaudit.models.tokenize import encode
from leakaudit.report.schema import PrivacyRecord

ProgressFn = Callable[[int, int, float], None]


class TrainSettings(BaseModel):
    """Optimisation settings shared by plain and DP training."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(default=3, ge=1, description="Passes over the training set.")
    batch_size: int = Field(default=32, ge=1, description="(Expected) examples per optimizer step.")
    lr: float = Field(default=1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0)
    max_length: int = Field(default=256, ge=8, description="Longer sequences are truncated for training.")
    seed: int = 0


class DPSettings(BaseModel):
    """DP-SGD settings.  delta defaults to min(1e-5, 1 / (10 N))."""

    model_config = ConfigDict(extra="forbid")
    target_epsilon: float = Field(gt=0, description="Epsilon to reach after all epochs.")
    delta: float | None = Field(default=None, gt=0, lt=1, description="Target delta; below 1/N.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Per-sample gradient clip norm.")
    accountant: Literal["prv", "rdp"] = "prv"


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


def sequence_losses(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean token NLL of each sequence (shape [B]); padding contributes nothing."""
    width = int(mask.sum(1).max())
    ids, mask = ids[:, :width], mask[:, :width]
    pos = torch.arange(width, device=ids.device).unsqueeze(0).repeat(ids.shape[0], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    tmask = mask[:, 1:].float()
    return -(tok * tmask).sum(1) / tmask.sum(1).clamp_min(1.0)


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
    Poisson-sampled batches, clips each example's gradient and adds Gaussian noise calibrated
    so that ``dp.target_epsilon`` is reached after ``settings.epochs`` epochs.
    """
    if not texts:
        raise ValueError("no training texts")
    device = next(model.parameters()).device
    torch.manual_seed(settings.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [e.ids for e in encode(tokenizer, texts, add_eos=True)]
    data = _Tokens(ids, settings.max_length, int(pad))
    gen = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(data, batch_size=min(settings.batch_size, len(data)), shuffle=True, generator=gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    train_module: torch.nn.Module = model
    engine = None
    delta = None
    if dp is not None:
        from opacus import PrivacyEngine

        delta = dp.delta if dp.delta is not None else default_delta(len(data))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            warnings.filterwarnings("ignore", message=".*[Oo]ptimal order.*")
            engine = PrivacyEngine(accountant=dp.accountant, secure_mode=False)
            train_module, optimizer, loader = engine.make_private_with_epsilon(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                target_epsilon=dp.target_epsilon,
                target_delta=delta,
                epochs=settings.epochs,
                max_grad_norm=dp.max_grad_norm,
                poisson_sampling=True,
                noise_generator=torch.Generator(device=device).manual_seed(settings.seed + 1),
            )
    total = settings.epochs * len(loader)
    step = 0
    for _ in range(settings.epochs):
        for x, m in loader:
            step += 1
            if x.shape[0] == 0:
                # An empty Poisson batch: no model update, but the step still counts towards eps.
                engine.accountant.step(noise_multiplier=optimizer.noise_multiplier, sample_rate=_q(loader))
                continue
            x, m = x.to(device), m.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = sequence_losses(train_module, x, m).mean()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
                loss.backward()
            optimizer.step()
            if progress:
                progress(step, total, loss.item())
    if engine is not None:
        optimizer.zero_grad(set_to_none=True)
        train_module.to_standard_module()  # removes Opacus's hooks and per-sample gradient attributes
    model.eval()
    if engine is None:
        return PrivacyRecord(
            steps=step, epochs=float(settings.epochs), dataset_size=len(data),
            sample_rate=min(settings.batch_size, len(data)) / len(data),
        )
    return PrivacyRecord(
        epsilon=float(engine.get_epsilon(delta)),
        delta=delta,
        noise_multiplier=float(optimizer.noise_multiplier),
        sample_rate=_q(loader),
        steps=step,
        max_grad_norm=dp.max_grad_norm,
        accountant=dp.accountant,
        epochs=float(settings.epochs),
        dataset_size=len(data),
    )


def _q(loader: DataLoader) -> float:
    sampler = getattr(loader, "batch_sampler", None)
    q = getattr(sampler, "sample_rate", None)
    return float(q) if q is not None else 1.0 / len(loader)


def save_trained(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, record: PrivacyRecord
) -> None:
    """Save a model in Hugging Face format (safetensors) with ``privacy.json`` beside it."""
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_json(out / "privacy.json", record.model_dump(mode="json"))
