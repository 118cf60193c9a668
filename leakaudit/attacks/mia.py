"""Membership-inference attacks that need no shadow models (higher = member)."""

from __future__ import annotations

import numpy as np

from leakaudit.attacks.registry import FRACTION, OPTIONAL_NAME, AttackInputs, register_attack
from leakaudit.errors import LeakauditError


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest ``k`` fraction of values (at least one value; never NaN)."""
    if values.size == 0:
        return 0.0
    n = max(1, int(np.floor(k * values.size)))
    return float(np.mean(np.partition(values.astype(np.float64), n - 1)[:n]))


@register_attack(
    "loss",
    paper="Yeom et al. 2018, Privacy Risk in Machine Learning (arXiv:1709.01604)",
    threat_model="black-box: per-token log-probabilities of the target",
    summary="mean token log-probability (the negative loss)",
)
def loss_attack(inp: AttackInputs) -> np.ndarray:
    return inp.target["mean_logprob"].to_numpy(np.float64)


@register_attack(
    "zlib",
    paper="Carlini et al. 2021, Extracting Training Data from Large Language Models (arXiv:2012.07805)",
    threat_model="black-box: per-token log-probabilities of the target",
    summary="negative loss divided by the zlib-compressed length of the text",
)
def zlib_attack(inp: AttackInputs) -> np.ndarray:
    return inp.target["mean_logprob"].to_numpy(np.float64) / inp.target["zlib_len"].to_numpy(np.float64)


@register_attack(
    "lowercase",
    paper="Carlini et al. 2021, Extracting Training Data from Large Language Models (arXiv:2012.07805)",
    threat_model="black-box: per-token log-probabilities of the target on the text and its lower-cased copy",
    summary="loss of the lower-cased text divided by the loss of the text",
    requires=("target", "lowercase"),
)
def lowercase_attack(inp: AttackInputs) -> np.ndarray:
    lower = -inp.target["lower_mean_logprob"].to_numpy(np.float64)
    loss = -inp.target["mean_logprob"].to_numpy(np.float64)
    return lower / np.maximum(loss, 1e-6)


@register_attack(
    "min_k",
    paper="Shi et al. 2024, Detecting Pretraining Data from Large Language Models (arXiv:2310.16789)",
    threat_model="black-box: per-token log-probabilities of the target",
    summary="mean of the lowest k fraction of token log-probabilities",
    params={"k": 0.2},
    checks={"k": FRACTION},
)
def min_k_attack(inp: AttackInputs, k: float) -> np.ndarray:
    return np.array([_lowest_k_mean(lp, k) for lp in inp.target["token_logprobs"]])


@register_attack(
    "min_k_pp",
    paper="Zhang et al. 2025, Min-K%++: Improved Baseline for Detecting Pre-Training Data (arXiv:2404.02936)",
    threat_model="grey-box: per-token log-probabilities and the full next-token distribution of the target",
    summary="mean of the lowest k fraction of (log p - mu) / sigma, mu and sigma over the vocabulary",
    requires=("target", "vocab_stats"),
    params={"k": 0.2},
    checks={"k": FRACTION},
)
def min_k_pp_attack(inp: AttackInputs, k: float) -> np.ndarray:
    t = inp.target
    return np.array([
        _lowest_k_mean((lp - mu) / np.sqrt(np.maximum(var, 1e-12)), k)
        for lp, mu, var in zip(t["token_logprobs"], t["token_mu"], t["token_var"])
    ])


def _reference_loss(inp: AttackInputs, reference: str | None) -> np.ndarray:
    if reference is not None:
        if reference not in inp.references:
            raise LeakauditError(f"attack parameter reference={reference!r}: no reference model of that name (the "
                                 f"references of this model: {', '.join(sorted(inp.references)) or 'none'})")
        return -inp.references[reference]["mean_logprob"].to_numpy(np.float64)
    return -np.mean([r["mean_logprob"].to_numpy(np.float64) for r in inp.references.values()], axis=0)


@register_attack(
    "reference",
    paper="Carlini et al. 2021 (arXiv:2012.07805); Mireshghallah et al. 2022, Quantifying Privacy Risks of "
    "Masked Language Models Using Membership Inference Attacks (arXiv:2203.03929)",
    threat_model="black-box target plus a reference model trained on similar data",
    summary="reference model's loss minus the target's loss (each with its own tokenizer)",
    requires=("target", "reference"),
    params={"reference": None},
    checks={"reference": OPTIONAL_NAME},
)
def reference_attack(inp: AttackInputs, reference: str | None) -> np.ndarray:
    return _reference_loss(inp, reference) + inp.target["mean_logprob"].to_numpy(np.float64)


@register_attack(
    "reference_ratio",
    paper="Carlini et al. 2021, Extracting Training Data from Large Language Models (arXiv:2012.07805)",
    threat_model="black-box target plus a reference model trained on similar data",
    summary="reference model's loss divided by the target's loss",
    requires=("target", "reference"),
    params={"reference": None},
    checks={"reference": OPTIONAL_NAME},
)
def reference_ratio_attack(inp: AttackInputs, reference: str | None) -> np.ndarray:
    loss = -inp.target["mean_logprob"].to_numpy(np.float64)
    return _reference_loss(inp, reference) / np.maximum(loss, 1e-6)


@register_attack(
    "neighbourhood",
    paper="Mattern et al. 2023, Membership Inference Attacks against Language Models via Neighbourhood "
    "Comparison (arXiv:2305.18462)",
    threat_model="black-box: the target's losses on the text and on perturbed copies of it",
    summary="mean loss of perturbed neighbours minus the loss of the text",
    requires=("target", "neighbours"),
)
def neighbourhood_attack(inp: AttackInputs) -> np.ndarray:
    t = inp.target
    return t["mean_logprob"].to_numpy(np.float64) - t["neighbour_mean_logprob"].to_numpy(np.float64)
