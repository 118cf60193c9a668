"""The attack registry: plain dicts filled by decorators, with metadata on every entry.

A membership attack is a pure function of :class:`AttackInputs` (the target's score table
and, when it needs them, reference models' tables, shadow-model statistics, scores of
lower-cased texts or of perturbed neighbours) returning one score per row, **higher = more
likely a member**.  Attacks never call a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from leakaudit.errors import LeakauditError

REQUIREMENTS = {
    "target": "the target model's per-token log-probabilities (black box)",
    "vocab_stats": "the mean and variance of log p over the vocabulary at each position (full logits)",
    "lowercase": "the target's scores of the lower-cased texts (one more pass)",
    "neighbours": "the target's scores of perturbed copies of each text (several more passes)",
    "reference": "a reference model trained on similar data without the audited records",
    "shadows_out": "shadow models trained without each record (membership matrix)",
    "shadows_in": "shadow models trained with each record for about half of them (online)",
}


@dataclass
class AttackInputs:
    """Everything an attack may read; rows are aligned with ``target``."""

    target: pd.DataFrame
    references: dict[str, pd.DataFrame] = field(default_factory=dict)
    shadow_stats: np.ndarray | None = None  # [n_shadows, n_rows]: mean token log-prob under each shadow
    shadow_in: np.ndarray | None = None  # [n_shadows, n_rows]: row in that shadow's training set

    def available(self) -> set[str]:
        have = {"target"}
        cols = set(self.target.columns)
        if "token_mu" in cols:
            have.add("vocab_stats")
        if "lower_mean_logprob" in cols:
            have.add("lowercase")
        if "neighbour_mean_logprob" in cols:
            have.add("neighbours")
        if self.references:
            have.add("reference")
        if self.shadow_stats is not None and self.shadow_in is not None:
            out_per_row = (~self.shadow_in).sum(0)
            in_per_row = self.shadow_in.sum(0)
            if out_per_row.min() >= 1:
                have.add("shadows_out")
            if in_per_row.min() >= 1 and out_per_row.min() >= 1:
                have.add("shadows_in")
        return have


AttackFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class AttackInfo:
    name: str
    fn: AttackFn
    paper: str
    threat_model: str
    summary: str
    requires: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    direction: str = "higher = member"


ATTACKS: dict[str, AttackInfo] = {}


def register_attack(
    name: str,
    *,
    paper: str,
    threat_model: str,
    summary: str,
    requires: tuple[str, ...] = ("target",),
    params: dict[str, Any] | None = None,
) -> Callable[[AttackFn], AttackFn]:
    """Register ``fn(inputs, **params) -> scores`` under ``name``."""
    unknown = set(requires) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"attack '{name}' requires unknown inputs {sorted(unknown)}")

    def deco(fn: AttackFn) -> AttackFn:
        if name in ATTACKS:
            raise ValueError(f"attack '{name}' registered twice")
        ATTACKS[name] = AttackInfo(name, fn, paper, threat_model, summary, tuple(requires), dict(params or {}))
        return fn

    return deco


def get_attack(name: str) -> AttackInfo:
    if name not in ATTACKS:
        raise LeakauditError(f"--attacks: unknown attack '{name}' (known: {', '.join(sorted(ATTACKS))})")
    return ATTACKS[name]


def missing_requirements(name: str, inputs: AttackInputs) -> list[str]:
    return [r for r in get_attack(name).requires if r not in inputs.available()]


def run_attack(name: str, inputs: AttackInputs, params: dict[str, Any] | None = None) -> np.ndarray:
    """Scores of one attack; refuses missing inputs, unknown parameters and non-finite scores."""
    info = get_attack(name)
    missing = missing_requirements(name, inputs)
    if missing:
        raise LeakauditError(f"attack '{name}' needs {', '.join(REQUIREMENTS[m] for m in missing)}")
    params = dict(params or {})
    unknown = set(params) - set(info.params)
    if unknown:
        raise LeakauditError(f"attack '{name}': unknown parameter(s) {sorted(unknown)} (has {sorted(info.params)})")
    scores = np.asarray(info.fn(inputs, **{**info.params, **params}), dtype=np.float64)
    n = len(inputs.target)
    if scores.shape != (n,):
        raise RuntimeError(f"attack '{name}' returned {scores.shape} scores for {n} rows")
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise RuntimeError(f"attack '{name}' gave {bad} non-finite score(s); refusing to drop them silently")
    return scores
