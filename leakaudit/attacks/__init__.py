"""Attacks: membership inference and canary exposure, sharing one registry and one score table."""

from leakaudit.attacks import lira as _lira  # noqa: F401  (registers the attacks)
from leakaudit.attacks import mia as _mia  # noqa: F401
from leakaudit.attacks import rmia as _rmia  # noqa: F401
from leakaudit.attacks.exposure import canary_exposures, exposure_groups, interpolation_exposure
from leakaudit.attacks.metrics import attack_result, auc, roc_curve, tpr_at_fpr
from leakaudit.attacks.registry import ATTACKS, AttackInfo, AttackInputs, get_attack, register_attack, run_attack
from leakaudit.attacks.scores import build_score_table, load_score_table, save_score_table

__all__ = [
    "ATTACKS",
    "AttackInfo",
    "AttackInputs",
    "attack_result",
    "auc",
    "build_score_table",
    "canary_exposures",
    "exposure_groups",
    "get_attack",
    "interpolation_exposure",
    "load_score_table",
    "register_attack",
    "roc_curve",
    "run_attack",
    "save_score_table",
    "tpr_at_fpr",
]
