"""Membership-inference attacks on a score table (higher = member)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from leakaudit.attacks.registry import register_attack


@register_attack(
    "loss",
    paper="Yeom et al. 2018, Privacy Risk in Machine Learning (arXiv:1709.01604)",
    threat_model="black-box: per-token log-probabilities of the target",
    summary="mean token log-probability (the negative loss)",
)
def loss_attack(table: pd.DataFrame) -> np.ndarray:
    return table["mean_logprob"].to_numpy(np.float64)


@register_attack(
    "zlib",
    paper="Carlini et al. 2021, Extracting Training Data from Large Language Models (arXiv:2012.07805)",
    threat_model="black-box: per-token log-probabilities of the target",
    summary="negative loss divided by the zlib-compressed length of the text",
)
def zlib_attack(table: pd.DataFrame) -> np.ndarray:
    return table["mean_logprob"].to_numpy(np.float64) / table["zlib_len"].to_numpy(np.float64)
