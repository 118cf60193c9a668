"""One way to turn text into token ids, shared by training and scoring.

Training and scoring must tokenize identically, or the scores measure a mismatch instead
of memorization.  Both go through :func:`encode`: the tokenizer's own special tokens when it
adds a BOS itself (Llama-style), otherwise its ``bos_token`` prepended by hand (GPT-2 style),
so that the first real token of a text is scored too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding
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


def scored_start(prefix: str) -> int:
    """Where the scored span of a secret after ``prefix`` begins: before the whitespace that ends the prefix.

    A secret's cost is that of the tokens covering any character of it *or of the whitespace
    before it*.  With byte-level BPE that space merges into the secret's first token for some
    candidates ("is 42" -> "is", " 42") and is a token of its own for others ("is ed" -> "is",
    " ", "ed", when " ed" is not in the vocabulary): counting only tokens that touch the secret
    would charge the space to the first kind and not to the second, and rank the second kind up
    to ``-log p(" ")`` nats too high.  Charging the space to every candidate is what the
    extraction search pays too.
    """
    return len(prefix.rstrip())


@dataclass(frozen=True)
class Continuations:
    """``prefix + c`` for many ``c``, tokenized as ``head`` (shared, BOS included) then one tail each.

    ``tails[i]`` holds the token ids of ``prefix[cut:] + c_i``, so that ``head.ids + tails[i]``
    equals ``encode(prefix + c_i).ids``.  The leading tail tokens a tail shares with ``rest_ids``
    (the tokens of ``prefix[cut:scored_start(prefix)]`` alone) lie wholly before the scored span
    (:func:`scored_start`: ``c_i`` and the whitespace before it); every later one covers part of it.
    """

    head: Encoded
    tail_ids: np.ndarray  # every tail's tokens, concatenated (int64)
    tail_lens: np.ndarray  # tokens per tail
    rest_ids: list[int]
    cut: int

    @property
    def tails(self) -> list[list[int]]:
        """The tails as lists (the arrays are what scoring reads)."""
        return [t.tolist() for t in np.split(self.tail_ids, np.cumsum(self.tail_lens)[:-1])]

    def token_matrix(self) -> np.ndarray:
        """The tails as a zero-padded int64 matrix [n, longest tail]."""
        lens = self.tail_lens
        mat = np.zeros((len(lens), int(lens.max(initial=0))), dtype=np.int64)
        mat[np.arange(mat.shape[1])[None, :] < lens[:, None]] = self.tail_ids
        return mat


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class TailCache:
    """Tails already tokenized, per ``rest`` (the words a prefix ends with): the canaries of one spec share
    those words and score the same null secrets, so each canary after the first tokenizes only its own new
    candidates.  Bounded: past ``max_entries`` tails nothing more is kept.  One cache per tokenizer."""

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        self._by_rest: dict[str, dict[str, np.ndarray]] = {}
        self._size = 0

    def tails(self, backend, rest: str, continuations: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(every tail's ids concatenated, tokens per tail) of ``rest + c`` for each continuation."""
        known = self._by_rest.setdefault(rest, {})
        missing = [c for c in dict.fromkeys(continuations) if c not in known]
        new: dict[str, np.ndarray] = {}
        if missing:
            flat, lens = _encode_tails(backend, rest, missing)
            new = dict(zip(missing, np.split(flat, np.cumsum(lens)[:-1])))
            if self._size + len(new) <= self.max_entries:
                known.update(new)
                self._size += len(new)
        parts = [known[c] if c in known else new[c] for c in continuations]
        return np.concatenate(parts), np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))


def _encode_tails(backend, rest: str, continuations: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids of ``rest + c`` for each continuation, concatenated, and their lengths (the fast tokenizer's batch
    encoder without offsets: building them costs more than the tokenizing)."""
    batch = getattr(backend, "encode_batch_fast", backend.encode_batch)
    encs = batch([rest + c for c in continuations], add_special_tokens=False)
    # one merged encoding: its ids come back as one list, not one list per continuation
    flat = np.asarray(Encoding.merge(encs, growing_offsets=False).ids, dtype=np.int64)
    return flat, np.fromiter(map(len, encs), dtype=np.int64, count=len(encs))


def encode_continuations(
    tokenizer: PreTrainedTokenizerBase, prefix: str, continuations: list[str], *, check: int = 16, seed: int = 0,
    cache: TailCache | None = None,
) -> Continuations | None:
    """Tokenize many continuations of one prefix without re-tokenizing the prefix each time.

    The prefix is cut at a word boundary near its end (``"... code is| 123456"``, else before
    the last or second-last word); only the rest and each continuation are tokenized, by the
    fast tokenizer's batch encoder and without offsets (building them costs more than the
    tokenizing).  The tokens of ``rest + c`` that lie wholly before the scored span (``c`` and
    the whitespace before it, :func:`scored_start`) are the ones it shares with the tokenization
    of ``rest`` without that whitespace.  Both facts (the split reproduces the full tokenization;
    the shared tokens are exactly those before the span) are checked with offsets on
    ``check`` continuations (the first, the last, random ones); the next cut is tried when they
    fail, and None is returned when no cut holds or the tokenizer has no fast backend, so callers
    fall back to :func:`encode`.  ``cache``: tails tokenized by earlier calls with the same tokenizer.
    """
    import random
    import re

    words = list(re.finditer(r"\S+", prefix))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if len(words) < 3 or backend is None or not continuations:
        return None
    cuts = [words[-1].end()] if words[-1].end() < len(prefix) else []
    for w in (words[-1], words[-2]):
        cut = w.start()
        while cut > 0 and prefix[cut - 1].isspace():
            cut -= 1
        cuts.append(cut)
    rng = random.Random(seed)
    probe = sorted({0, len(continuations) - 1, *(rng.randrange(len(continuations)) for _ in range(max(0, check - 2)))})
    full = encode(tokenizer, [prefix + continuations[i] for i in probe])
    start = scored_start(prefix)
    for cut in cuts:
        head = encode(tokenizer, [prefix[:cut]])[0]
        rest = prefix[cut:]
        rest_ids = backend.encode(prefix[cut:max(cut, start)], add_special_tokens=False).ids
        if _split_holds(backend, head, rest, rest_ids, start, [continuations[i] for i in probe], full):
            flat, lens = (cache.tails(backend, rest, continuations) if cache is not None
                          else _encode_tails(backend, rest, continuations))
            return Continuations(head=head, tail_ids=flat, tail_lens=lens, rest_ids=list(rest_ids), cut=cut)
    return None


def _split_holds(backend, head: Encoded, rest: str, rest_ids: list[int], start: int, probes: list[str],
                 full: list[Encoded]) -> bool:
    """The split reproduces each probe's full tokenization, and its shared tokens end by ``start``."""
    for c, f in zip(probes, full):
        ids = backend.encode(rest + c, add_special_tokens=False).ids
        if f.ids != head.ids + list(ids):
            return False
        ends = [b for _, b in f.offsets[len(head.ids):]]
        n_before = _common_prefix(ids, rest_ids)
        if any(b > start for b in ends[:n_before]) or any(b <= start for b in ends[n_before:]):
            return False
    return True
