"""Score tables: one row per sample, built from one pass of the model, kept as Parquet.

Columns: ``id``, ``member`` (bool), ``n_tokens``, ``mean_logprob`` (natural log),
``zlib_len`` (bytes of the zlib-compressed UTF-8 text), ``token_logprobs``, ``token_mu`` and
``token_var`` (per-token arrays: log p of each token, and the mean and variance of log p over the
vocabulary at its position).  Optional columns: ``lower_mean_logprob`` (the lower-cased text)
and ``neighbour_mean_logprob`` (mean over perturbed neighbours).  Attacks read only these
tables, so re-running an attack never re-runs the model.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from leakaudit.attacks.neighbours import neighbours as make_neighbours
from leakaudit.errors import LeakauditError
from leakaudit.io import write_parquet
from leakaudit.models.target import Target

ARRAY_COLUMNS = ("token_logprobs", "token_mu", "token_var")


def zlib_len(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def _mean(lp: np.ndarray) -> float:
    return float(np.mean(lp, dtype=np.float64)) if len(lp) else 0.0


def build_score_table(
    target: Target,
    ids: list[str],
    texts: list[str],
    members: list[bool],
    *,
    lowercase: bool = False,
    n_neighbours: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Score every text once (plus lower-cased copies and neighbours when asked).

    A text with no token to score (one token under a tokenizer that puts no BOS before it) is
    refused: its mean log-prob would be empty, and any number put there would rank it for or
    against membership without evidence.
    """
    stats = target.score_stats(texts)
    empty = [i for i, s in enumerate(stats) if len(s.lp) == 0]
    if empty:
        raise LeakauditError(
            f"membership scoring: {len(empty)} of {len(texts)} records have no token to score (ids "
            f"{', '.join(str(ids[i]) for i in empty[:5])}{', ...' if len(empty) > 5 else ''}): each is a single token "
            "and the tokenizer puts no BOS token before it; remove such records or give them more text"
        )
    table = pd.DataFrame(
        {
            "id": ids,
            "member": members,
            "n_tokens": [len(s.lp) for s in stats],
            "mean_logprob": [_mean(s.lp) for s in stats],
            "zlib_len": [zlib_len(t) for t in texts],
            "token_logprobs": [s.lp for s in stats],
            "token_mu": [s.mu for s in stats],
            "token_var": [s.var for s in stats],
        }
    )
    if lowercase:
        table["lower_mean_logprob"] = [_mean(lp) for lp in target.score([t.lower() for t in texts])]
    if n_neighbours:
        nb = make_neighbours(texts, n=n_neighbours, seed=seed)
        flat = target.score([x for copies in nb for x in copies])
        means = np.array([_mean(lp) for lp in flat]).reshape(len(texts), n_neighbours)
        table["neighbour_mean_logprob"] = means.mean(1)
    return table


def save_score_table(table: pd.DataFrame, path: str | Path) -> None:
    write_parquet(table, path)


def load_score_table(path: str | Path) -> pd.DataFrame:
    table = pd.read_parquet(path)
    for col in ARRAY_COLUMNS:
        if col in table:
            table[col] = [np.asarray(x, dtype=np.float32) for x in table[col]]
    return table
