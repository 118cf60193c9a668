"""The attack registry: plain dicts filled by decorators, with metadata on every entry.

A membership attack is a pure function from a score table (one row per sample, see
:mod:`leakaudit.attacks.scores`) to one score per row, **higher = more likely a member**.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from leakaudit.errors import LeakauditError

AttackFn = Callable[[pd.DataFrame], np.ndarray]


@dataclass(frozen=True)
class AttackInfo:
    name: str
    fn: AttackFn
    paper: str
    threat_model: str
    summary: str
    requires: tuple[str, ...] = field(default_factory=tuple)
    direction: str = "higher = member"


ATTACKS: dict[str, AttackInfo] = {}


def register_attack(
    name: str, *, paper: str, threat_model: str, summary: str, requires: tuple[str, ...] = ()
) -> Callable[[AttackFn], AttackFn]:
    def deco(fn: AttackFn) -> AttackFn:
        if name in ATTACKS:
            raise ValueError(f"attack '{name}' registered twice")
        ATTACKS[name] = AttackInfo(name, fn, paper, threat_model, summary, tuple(requires))
        return fn

    return deco


def get_attack(name: str) -> AttackInfo:
    if name not in ATTACKS:
        raise LeakauditError(f"--attacks: unknown attack '{name}' (known: {', '.join(sorted(ATTACKS))})")
    return ATTACKS[name]


def run_attack(name: str, table: pd.DataFrame) -> np.ndarray:
    """Scores of one attack on a score table; refuses non-finite scores."""
    scores = np.asarray(get_attack(name).fn(table), dtype=np.float64)
    if scores.shape != (len(table),):
        raise RuntimeError(f"attack '{name}' returned {scores.shape} scores for {len(table)} rows")
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise RuntimeError(f"attack '{name}' gave {bad} non-finite score(s); refusing to drop them silently")
    return scores
