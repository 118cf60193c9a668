"""Privacy auditing: empirical lower bounds on the epsilon of a (supposedly) DP model."""

from leakaudit.privacy.empirical import (
    EmpiricalPrivacy,
    OneRunAudit,
    OneRunGuess,
    ThresholdAudit,
    clopper_pearson_bound,
    compare_with_accountant,
    default_k_grid,
    one_run_audit,
    one_run_bound,
    one_run_p_value,
    threshold_bound,
)

__all__ = [
    "EmpiricalPrivacy",
    "OneRunAudit",
    "OneRunGuess",
    "ThresholdAudit",
    "clopper_pearson_bound",
    "compare_with_accountant",
    "default_k_grid",
    "one_run_audit",
    "one_run_bound",
    "one_run_p_value",
    "threshold_bound",
]
