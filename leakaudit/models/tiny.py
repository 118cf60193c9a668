"""Small models and tokenizers built in code, for the demo and the tests.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the public corpus and a
causal LM of one of the common architectures (GPT-2, Llama, Qwen2, Mistral, GPT-NeoX, OPT)
is initialised from a tiny config.  Embeddings are untied (DP training with per-sample
gradients, and ghost clipping in particular, is simpler without tied weights) and every
dropout is 0.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SPECIAL = {"bos": "<|endoftext|>", "pad": "<|pad|>"}

Arch = Literal["gpt2", "llama", "qwen2", "mistral", "gpt_neox", "opt"]
ARCHS: tuple[str, ...] = get_args(Arch)


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


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    arch: Arch = "gpt2",
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    context: int = 256,
) -> PretrainedConfig:
    """The config of a small ``arch`` model: untied embeddings, no dropout, MLP width 4 x ``n_embd``."""
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    ffn = 4 * n_embd
    if arch == "gpt2":
        return GPT2Config(
            n_positions=context, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
    rope = dict(
        hidden_size=n_embd, intermediate_size=ffn, num_hidden_layers=n_layer, num_attention_heads=n_head,
        num_key_value_heads=n_head, max_position_embeddings=context, attention_dropout=0.0,
    )
    if arch == "llama":
        return LlamaConfig(**rope, **common)
    if arch == "qwen2":
        return Qwen2Config(**rope, use_sliding_window=False, **common)
    if arch == "mistral":
        return MistralConfig(**rope, sliding_window=None, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=n_embd, intermediate_size=ffn, num_hidden_layers=n_layer, num_attention_heads=n_head,
            max_position_embeddings=context, hidden_dropout=0.0, attention_dropout=0.0, **common,
        )
    if arch == "opt":
        return OPTConfig(
            hidden_size=n_embd, ffn_dim=ffn, num_hidden_layers=n_layer, num_attention_heads=n_head,
            max_position_embeddings=context, word_embed_proj_dim=n_embd, do_layer_norm_before=True,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0, **common,
        )
    raise ValueError(f"unknown architecture '{arch}' (one of {', '.join(ARCHS)})")


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    arch: Arch = "gpt2",
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    context: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """A freshly initialised causal LM of architecture ``arch``, sized for a CPU."""
    cfg = tiny_config(tokenizer, arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, context=context)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    return model
