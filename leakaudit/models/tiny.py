"""Small models and tokenizers built in code, for the demo and the tests.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the public corpus and a
GPT-2-style or Llama-style model is initialised from a config.  Embeddings are untied, as
DP training with per-sample gradients is simpler without tied weights.
"""

from __future__ import annotations

from typing import Literal

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIAL = {"bos": "<|endoftext|>", "pad": "<|pad|>"}


def train_tokenizer(texts: list[str], *, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic for the same input)."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[SPECIAL["bos"], SPECIAL["pad"]],
        show_progress=False,
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["bos"],
        unk_token=None,
        pad_token=SPECIAL["pad"],
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )
    return tok


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    arch: Literal["gpt2", "llama"] = "gpt2",
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    context: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """A freshly initialised causal LM sized for a CPU."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if arch == "gpt2":
        cfg = GPT2Config(
            n_positions=context, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
        model: PreTrainedModel = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(
            hidden_size=n_embd, intermediate_size=4 * n_embd, num_hidden_layers=n_layer,
            num_attention_heads=n_head, num_key_value_heads=n_head, max_position_embeddings=context,
            **common,
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"unknown architecture '{arch}' (gpt2 or llama)")
    return model
