"""LiRA: the likelihood-ratio attack with shadow models (Carlini et al. 2022).

The statistic of a sequence is its mean token log-probability.  For each example, Gaussians
are fitted to its statistic under the shadow models that trained on it (IN) and those that did
not (OUT).  With fewer than 64 shadow models a global variance (pooled over examples) is used
for each side, as the paper recommends; the IN and OUT spreads are pooled separately (a
reference implementation's fixed-variance branch reuses the IN spread for OUT, a known slip).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from leakaudit.attacks.registry import AttackInputs, one_of, register_attack

_FLOOR = 1e-4


def _fit(stats: np.ndarray, member: np.ndarray, variance: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and standard deviation of ``stats`` over the shadows selected by ``member``.

    ``per_example``: an example with fewer than two such shadows has no spread of its own (one value: 0, and
    scores of millions from the floor) and takes the pooled one, as ``global`` gives every example."""
    w = member.astype(np.float64)
    n = w.sum(0)
    mu = (stats * w).sum(0) / np.maximum(n, 1)
    resid2 = ((stats - mu) ** 2) * w
    pooled = np.sqrt(resid2.sum() / max(w.sum() - stats.shape[1], 1))
    if variance == "global":
        sd = np.full(stats.shape[1], pooled)
    else:
        sd = np.where(n >= 2, np.sqrt(resid2.sum(0) / np.maximum(n - 1, 1)), pooled)
    return mu, np.maximum(sd, _FLOOR)


def _variance_mode(variance: str, n_shadows: int) -> str:
    if variance == "auto":
        return "per_example" if n_shadows >= 64 else "global"
    if variance not in ("global", "per_example"):
        raise ValueError(f"variance must be auto, global or per_example (got {variance})")
    return variance


@register_attack(
    "lira_online",
    paper="Carlini et al. 2022, Membership Inference Attacks From First Principles (arXiv:2112.03570)",
    threat_model="black-box target plus shadow models trained with and without each example",
    summary="log-likelihood ratio of the statistic under the IN and OUT Gaussians of the shadow models",
    requires=("target", "shadows_in"),
    params={"variance": "auto"},
    checks={"variance": one_of("auto", "global", "per_example")},
)
def lira_online(inp: AttackInputs, variance: str) -> np.ndarray:
    s = inp.target["mean_logprob"].to_numpy(np.float64)
    mode = _variance_mode(variance, inp.shadow_stats.shape[0])
    mu_in, sd_in = _fit(inp.shadow_stats, inp.shadow_in, mode)
    mu_out, sd_out = _fit(inp.shadow_stats, ~inp.shadow_in, mode)
    return norm.logpdf(s, mu_in, sd_in) - norm.logpdf(s, mu_out, sd_out)


@register_attack(
    "lira_offline",
    paper="Carlini et al. 2022, Membership Inference Attacks From First Principles (arXiv:2112.03570)",
    threat_model="black-box target plus shadow models trained without each example",
    summary="one-sided: how far the statistic lies above the OUT Gaussian of the shadow models (its standard score, "
    "which ranks as the log CDF does)",
    requires=("target", "shadows_out"),
    params={"variance": "auto"},
    checks={"variance": one_of("auto", "global", "per_example")},
)
def lira_offline(inp: AttackInputs, variance: str) -> np.ndarray:
    s = inp.target["mean_logprob"].to_numpy(np.float64)
    mode = _variance_mode(variance, inp.shadow_stats.shape[0])
    mu_out, sd_out = _fit(inp.shadow_stats, ~inp.shadow_in, mode)
    # the standard score orders examples exactly as log Phi(z) (a strictly increasing map), but log Phi(z) rounds to
    # exactly 0 for every z above about 38: strongly leaked examples would all tie
    return (s - mu_out) / sd_out
