"""Formatting helpers shared by the report's modules: numbers, hashes, lists and Markdown cells.

Every number the reports show is formatted by one of these, so the HTML report, the Markdown
report and the model cards always write the same value the same way.
"""

from __future__ import annotations

import math
from typing import Any

from leakaudit.report.schema import PrivacyRecord

DASH = "—"
SHORT_HASH = 12
DIRTY = "-dirty"
"""The suffix of a git revision recorded with uncommitted changes (kept when the revision is shortened)."""
SEEDED = "seeded: holds only while the training seed stays secret"
"""The condition of a DP guarantee whose batches and noise came from the recorded training seed."""


def _ok(x: Any) -> bool:
    """Whether a value can be shown as a number: not None, and finite when it is a float."""
    return x is not None and not (isinstance(x, float) and not math.isfinite(x))


def _f(x: float | None, fmt: str) -> str:
    if x is None:
        return DASH
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return format(x, fmt)


def _int(x: int | None) -> str:
    return DASH if x is None else f"{x:,}"


def _epsilon(x: float | None) -> str:
    return "none (non-private)" if x is None else _f(x, ".2f")


def _bits(x: float | None) -> str:
    return _f(x, ".2f")


def _pct(x: float | None) -> str:
    if not _ok(x):
        return _f(x, "")
    if x == 0:
        return "0%"
    return f"{x * 100:.1f}%" if x >= 0.01 else f"{x * 100:.2f}%"


def _short(h: str | None) -> str:
    """A hash or git revision shortened to :data:`SHORT_HASH` characters, a "-dirty" suffix kept."""
    if not h:
        return DASH
    if h.endswith(DIRTY):
        return h[: -len(DIRTY)][:SHORT_HASH] + DIRTY
    return h[:SHORT_HASH]


def _join(names: list[str], word: str = "and") -> str:
    if len(names) <= 2:
        return f" {word} ".join(names)
    return ", ".join(names[:-1]) + f" {word} " + names[-1]


def _notes(*notes: str) -> str:
    """" (a; b)": the non-empty ``notes`` in brackets after a value; "" when there are none."""
    kept = [x for x in notes if x]
    return f" ({'; '.join(kept)})" if kept else ""


def _dp_condition(privacy: PrivacyRecord) -> str:
    """The condition a DP model's guarantee holds under, to say wherever the safeguard is named: :data:`SEEDED`
    when its batches and noise came from the recorded training seed; "" otherwise (and without DP)."""
    return SEEDED if privacy.epsilon is not None and privacy.randomness == "seeded" else ""


def _dp_settings(privacy: PrivacyRecord) -> str:
    """A DP model's settings: "ε = 1.00, δ = 1.0e-05 (rdp accountant)" (δ and the accountant when known), with
    its condition (:func:`_dp_condition`): "(rdp accountant; seeded: holds only while ...)"."""
    text = f"ε = {privacy.epsilon:.2f}"
    if privacy.delta is not None:
        text += f", δ = {privacy.delta:.1e}"
    return text + _notes(f"{privacy.accountant} accountant" if privacy.accountant else "", _dp_condition(privacy))


def _ci(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return ""
    return f" [{_pct(interval[0])}, {_pct(interval[1])}]"


def _plural(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


def _lower(label: str) -> str:
    """ "Membership inference" -> "membership inference"; "PII extraction" stays."""
    return label if label[1:2].isupper() else label[:1].lower() + label[1:]


def _sentence(clause: str) -> str:
    return clause[:1].upper() + clause[1:] + "."


def _md_escape(value: Any) -> str:
    """Make a value safe inside a Markdown table cell."""
    text = " ".join(str(value).split())
    for ch in ("\\", "|", "<", ">", "*", "`"):
        text = text.replace(ch, "\\" + ch)
    return text


def _md_code(value: Any) -> str:
    """A value as inline code inside a Markdown table cell."""
    text = " ".join(str(value).split())
    if text == DASH:
        return text
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"
