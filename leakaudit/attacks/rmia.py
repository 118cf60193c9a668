"""RMIA: the robust membership-inference attack, offline form (Zarifzadeh et al. 2024).

``ratio(x) = p(x | target) / p(x)`` with the sequence probability ``exp(mean token log-prob)``
and, offline, ``p(x) = ((1 + a) / 2) * mean_OUT p(x | shadow) + (1 - a) / 2``: the OUT
shadows' average scaled towards what an IN model would give.  The score is the fraction of
population samples z with ``ratio(x) / ratio(z) > gamma``.  The population is the set of audited
texts itself (no membership labels are used).  ``a`` is tuned, when IN shadows exist, by
attacking one shadow model with the others as references (a "paired" model) and keeping the
``a`` with the best AUC; otherwise (fewer than 4 shadows leave no OUT reference for some text once
one is held out) ``a = 1``, ``p(x) = mean_OUT``.  The paper's usual default 0.3 adds a constant of
0.35 on the probability scale: right for a classifier's confidences near 1, but a text's
``exp(mean lp)`` is about 0.01-0.2, so the constant swamps the reference and the ratio ranks as
LOSS does (simulated, 2 shadows: AUC 0.59 as LOSS's 0.58, against 0.92 with ``a = 1``; where
tuning works on such data it picks 1).
"""

from __future__ import annotations

import numpy as np

from leakaudit.attacks.metrics import auc
from leakaudit.attacks.registry import OPTIONAL_UNIT, POSITIVE, AttackInputs, register_attack

A_GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
UNTUNED_A = 1.0  # when no shadow can be attacked from the others (see the module's note)


def _out_mean_prob(stats: np.ndarray, out: np.ndarray) -> np.ndarray:
    w = out.astype(np.float64)
    return (np.exp(stats) * w).sum(0) / np.maximum(w.sum(0), 1)


def rmia_scores(p_target: np.ndarray, p_out: np.ndarray, a: float, gamma: float) -> np.ndarray:
    ratio = p_target / (((1 + a) / 2) * p_out + (1 - a) / 2)
    z = np.sort(ratio)
    # fraction of z with ratio(x) / ratio(z) > gamma, i.e. ratio(z) < ratio(x) / gamma
    return np.searchsorted(z, ratio / gamma, side="left") / z.size


def tune_a(stats: np.ndarray, member: np.ndarray, gamma: float = 1.0) -> float:
    """The ``a`` that best attacks each shadow in turn from the others' OUT statistics (mean AUC);
    ``UNTUNED_A`` when no shadow can be attacked so (every text needs an OUT reference among the others)."""
    best, best_auc = UNTUNED_A, -1.0
    n = stats.shape[0]
    for a in A_GRID:
        aucs = []
        for k in range(n):
            rest = np.arange(n) != k
            out = ~member[rest]
            usable = (out.sum(0) > 0) & member[k].any() & (~member[k]).any()
            if not usable.all():
                continue
            s = rmia_scores(np.exp(stats[k]), _out_mean_prob(stats[rest], out), float(a), gamma)
            aucs.append(auc(s[member[k]], s[~member[k]]))
        if aucs and np.mean(aucs) > best_auc:
            best, best_auc = float(a), float(np.mean(aucs))
    return best


@register_attack(
    "rmia",
    paper="Zarifzadeh et al. 2024, Low-Cost High-Power Membership Inference Attacks (arXiv:2312.03262)",
    threat_model="black-box target plus shadow models trained without each example (offline)",
    summary="fraction of population samples whose likelihood ratio x dominates by more than gamma",
    requires=("target", "shadows_out"),
    params={"a": None, "gamma": 1.0},
    checks={"a": OPTIONAL_UNIT, "gamma": POSITIVE},
)
def rmia(inp: AttackInputs, a: float | None, gamma: float) -> np.ndarray:
    if a is None:
        a = tune_a(inp.shadow_stats, inp.shadow_in, gamma) if inp.shadow_stats.shape[0] >= 2 else UNTUNED_A
    p_target = np.exp(inp.target["mean_logprob"].to_numpy(np.float64))
    return rmia_scores(p_target, _out_mean_prob(inp.shadow_stats, ~inp.shadow_in), a, gamma)
