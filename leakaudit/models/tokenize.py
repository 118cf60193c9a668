"""One way to turn text into token ids, shared by training and scoring.

Training and scoring must tokenize identically, or the scores measure a mismatch instead
of memorization.  Both go through :func:`encode`: the tokenizer's own special tokens when it
adds a BOS itself (Llama-style), otherwise its ``bos_token`` prepended by hand (GPT-2 style),
so that the first real token of a text is scored too.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Encoded:
    """Token ids of one text and, per token, its character span in the text ((0, 0) for BOS)."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    n_special: int  # leading special tokens (BOS): they are context, never scored


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def bos_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id to prepend to every text, or None when the tokenizer has no BOS (or adds it itself)."""
    if tokenizer.bos_token_id is None or _adds_bos(tokenizer):
        return None
    return int(tokenizer.bos_token_id)


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], *, add_eos: bool = False) -> list[Encoded]:
    """Tokenize texts with character offsets, a BOS in front and optionally an EOS at the end."""
    adds_bos = _adds_bos(tokenizer)
    enc = tokenizer(
        texts,
        add_special_tokens=adds_bos,
        return_offsets_mapping=True,
        return_attention_mask=False,
    )
    pre = bos_id(tokenizer)
    out = []
    for ids, offs in zip(enc["input_ids"], enc["offset_mapping"]):
        ids, offs = list(ids), [tuple(o) for o in offs]
        n_special = 0
        if adds_bos:
            # the tokenizer's own leading specials (offsets (0, 0)); strip any trailing specials
            while n_special < len(ids) and ids[n_special] in tokenizer.all_special_ids:
                n_special += 1
            while len(ids) > n_special and ids[-1] in tokenizer.all_special_ids:
                ids.pop()
                offs.pop()
        elif pre is not None:
            ids, offs, n_special = [pre, *ids], [(0, 0), *offs], 1
        if add_eos and tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
            offs.append((offs[-1][1], offs[-1][1]) if offs else (0, 0))
        out.append(Encoded(ids=ids, offsets=offs, n_special=n_special))
    return out
