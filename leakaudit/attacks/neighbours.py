"""Neighbours of a text for the neighbourhood attack, made without any model.

Mattern et al. draw neighbours from a masked language model; leakaudit downloads nothing, so a
neighbour here replaces a random ``rate`` fraction of the words with words drawn from the word
distribution of the audited texts themselves (a plain-text perturbation that keeps length and
style).  The neighbours are seeded, so the attack is reproducible.
"""

from __future__ import annotations

import random
import re
from collections import Counter

_WORD = re.compile(r"[A-Za-z]+")


def neighbours(texts: list[str], *, n: int = 8, rate: float = 0.15, seed: int = 0) -> list[list[str]]:
    """``n`` perturbed copies of every text."""
    counts = Counter(w.lower() for t in texts for w in _WORD.findall(t))
    vocab = [w for w, c in counts.most_common(5000) if len(w) > 2]
    if not vocab:
        vocab = ["the"]
    out = []
    for i, text in enumerate(texts):
        rng = random.Random(f"{seed}-{i}")
        spans = [m.span() for m in _WORD.finditer(text)]
        copies = []
        for _ in range(n):
            k = max(1, round(rate * len(spans))) if spans else 0
            chosen = sorted(rng.sample(range(len(spans)), min(k, len(spans))))
            pieces, last = [], 0
            for j in chosen:
                a, b = spans[j]
                word = rng.choice(vocab)
                if text[a].isupper():
                    word = word.capitalize()
                pieces += [text[last:a], word]
                last = b
            pieces.append(text[last:])
            copies.append("".join(pieces))
        out.append(copies)
    return out
