"""Score tables: one row per sample, built from one pass of the model, kept as Parquet.

Columns: ``id``, ``member`` (bool), ``n_tokens``, ``mean_logprob`` (natural log),
``zlib_len`` (bytes of the zlib-compressed UTF-8 text) and ``token_logprobs`` (the per-token
array).  Attacks read only this table, so re-running an attack never re-runs the model.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from leakaudit.models.target import Target


def zlib_len(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def build_score_table(target: Target, ids: list[str], texts: list[str], members: list[bool]) -> pd.DataFrame:
    """Score every text once and tabulate what the attacks need."""
    lps = target.score(texts)
    return pd.DataFrame(
        {
            "id": ids,
            "member": members,
            "n_tokens": [len(lp) for lp in lps],
            "mean_logprob": [float(np.mean(lp, dtype=np.float64)) if len(lp) else np.nan for lp in lps],
            "zlib_len": [zlib_len(t) for t in texts],
            "token_logprobs": [lp.astype(np.float32) for lp in lps],
        }
    )


def save_score_table(table: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)


def load_score_table(path: str | Path) -> pd.DataFrame:
    table = pd.read_parquet(path)
    table["token_logprobs"] = [np.asarray(x, dtype=np.float32) for x in table["token_logprobs"]]
    return table
