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
class ParamCheck:
    """What values an attack parameter accepts: ``ok(value)`` and the words for an error message."""

    expected: str
    ok: Callable[[Any], bool]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v  # not NaN


FRACTION = ParamCheck("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1)
POSITIVE = ParamCheck("a number > 0", lambda v: _number(v) and 0 < v < float("inf"))
OPTIONAL_UNIT = ParamCheck("null (tuned) or a number in [0, 1]", lambda v: v is None or (_number(v) and 0 <= v <= 1))
OPTIONAL_NAME = ParamCheck("null or a reference model's name", lambda v: v is None or isinstance(v, str))


def one_of(*values: str) -> ParamCheck:
    return ParamCheck("one of " + ", ".join(values), lambda v: v in values)


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
    checks: dict[str, ParamCheck] = field(default_factory=dict)


ATTACKS: dict[str, AttackInfo] = {}


def register_attack(
    name: str,
    *,
    paper: str,
    threat_model: str,
    summary: str,
    requires: tuple[str, ...] = ("target",),
    params: dict[str, Any] | None = None,
    checks: dict[str, ParamCheck] | None = None,
) -> Callable[[AttackFn], AttackFn]:
    """Register ``fn(inputs, **params) -> scores`` under ``name``; ``checks`` says what each parameter accepts."""
    unknown = set(requires) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"attack '{name}' requires unknown inputs {sorted(unknown)}")
    params, checks = dict(params or {}), dict(checks or {})
    if set(checks) != set(params):
        raise ValueError(f"attack '{name}': every parameter needs a check (params {sorted(params)}, "
                         f"checks {sorted(checks)})")

    def deco(fn: AttackFn) -> AttackFn:
        if name in ATTACKS:
            raise ValueError(f"attack '{name}' registered twice")
        ATTACKS[name] = AttackInfo(name, fn, paper, threat_model, summary, tuple(requires), params, checks=checks)
        return fn

    return deco


def get_attack(name: str, where: str = "--attacks") -> AttackInfo:
    if name not in ATTACKS:
        raise LeakauditError(f"{where}: unknown attack '{name}' (known: {', '.join(sorted(ATTACKS))})")
    return ATTACKS[name]


def check_params(name: str, params: dict[str, Any], where: str = "--param") -> None:
    """Refuse unknown parameters and values an attack does not accept, naming ``where``."""
    info = get_attack(name, where or "--attacks")
    lead = f"{where} " if where else ""
    unknown = set(params) - set(info.params)
    if unknown:
        raise LeakauditError(f"{lead}{name}.{sorted(unknown)[0]}: unknown parameter of attack '{name}' "
                             f"(it has {', '.join(sorted(info.params)) or 'none'})")
    for key, value in params.items():
        check = info.checks[key]
        if not check.ok(value):
            raise LeakauditError(f"{lead}{name}.{key}: expected {check.expected} (got {value!r})")


def missing_requirements(name: str, inputs: AttackInputs) -> list[str]:
    return [r for r in get_attack(name).requires if r not in inputs.available()]


def run_attack(name: str, inputs: AttackInputs, params: dict[str, Any] | None = None) -> np.ndarray:
    """Scores of one attack; refuses missing inputs, unknown parameters and non-finite scores."""
    info = get_attack(name)
    missing = missing_requirements(name, inputs)
    if missing:
        raise LeakauditError(f"attack '{name}' needs {', '.join(REQUIREMENTS[m] for m in missing)}")
    params = dict(params or {})
    check_params(name, params)
    scores = np.asarray(info.fn(inputs, **{**info.params, **params}), dtype=np.float64)
    n = len(inputs.target)
    if scores.shape != (n,):
        raise RuntimeError(f"attack '{name}' returned {scores.shape} scores for {n} rows")
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise RuntimeError(f"attack '{name}' gave {bad} non-finite score(s); refusing to drop them silently")
    return scores
