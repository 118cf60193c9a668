"""Canary specs: YAML files in ``canaries/`` describing a family of canaries."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leakaudit.canaries.formats import FORMATS, SecretFormat, get_format
from leakaudit.errors import LeakauditError, describe_validation_error
from leakaudit.io import SAFE_NAME, read_yaml_mapping

FIELDS = ("name", "first_name", "city", "company")
"""Per-canary fields a template may use besides ``{secret}``, filled by Faker."""


class SecretSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = Field(description="Secret format key: " + ", ".join(sorted(FORMATS)) + ".")
    length: int = Field(ge=1, le=64, description="Number of random symbols in the secret.")

    @field_validator("format")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in FORMATS:
            raise ValueError(f"unknown secret format '{v}' (known: {', '.join(sorted(FORMATS))})")
        return v


MAX_COPIES = 1_000_000
"""Most canary copies one spec may insert (sum of repetitions x canaries_per_repetition)."""


class CanarySpec(BaseModel):
    """A family of canaries: a template, a secret format and where to insert them.

    Example YAML::

        name: recovery-codes
        template: "Note for {name}: the account recovery code is {secret}."
        secret: {format: digits, length: 6}
        repetitions: [1, 2, 4, 8, 16, 32]
        canaries_per_repetition: 4
        reference_canaries: 24

    A one-run audit spec sets ``design: one_run`` and, for example, ``repetitions: [1]`` and
    ``canaries_per_repetition: 1000``; ``reference_canaries`` is then unused.
    """

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = 1
    name: str = Field(
        description="Short name of this canary family (letters, digits, '_', '.', '-': it names files).",
    )
    template: str = Field(description="Canary text with one {secret} placeholder and optional per-canary fields.")
    secret: SecretSpec
    repetitions: list[int] = Field(description="Repetition counts at which canaries are inserted.")
    canaries_per_repetition: int = Field(default=4, ge=1, le=100_000, description="Canaries inserted at each count.")
    reference_canaries: int = Field(default=24, ge=1, le=100_000, description="Canaries generated but never inserted.")
    null_samples: int = Field(
        default=1000, ge=10, le=1_000_000, description="Random secrets scored as the null population for exposure."
    )
    seed: int | None = Field(
        default=None,
        description="Seed for secrets and per-canary fields.  Leave it out for a real audit: a seed drawn from "
        "the operating system's randomness is then recorded in the manifest alone (private); a seed written "
        "here lets anyone with the spec regenerate every secret (the demo's specs are public on purpose).",
    )
    design: Literal["fixed", "one_run"] = Field(
        default="fixed",
        description="'fixed': canaries_per_repetition canaries inserted at each count plus reference canaries "
        "(exposure by repetition).  'one_run': canaries_per_repetition canaries per count, each inserted "
        "independently with probability 1/2 (the others are the references): the design of the one-run "
        "privacy audit (Steinke et al. 2023), which turns their scores into an empirical lower bound on eps.",
    )

    @field_validator("repetitions")
    @classmethod
    def _reps(cls, v: list[int]) -> list[int]:
        if not v or any(r < 1 for r in v):
            raise ValueError("repetitions must be a non-empty list of counts >= 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _copies(self) -> CanarySpec:
        copies = sum(self.repetitions) * self.canaries_per_repetition
        if copies > MAX_COPIES:  # a mistyped count would otherwise fill memory while inserting, then the disk
            raise ValueError(f"repetitions: the spec inserts {copies:,} canary copies (the sum of the counts times "
                             f"canaries_per_repetition), more than {MAX_COPIES:,}; is a count mistyped?")
        return self

    @model_validator(mode="after")
    def _template(self) -> CanarySpec:
        try:
            parts = list(string.Formatter().parse(self.template))
        except ValueError as e:
            raise ValueError(f"template: {e}") from None
        names = [f for _, f, _, _ in parts if f is not None]
        if names.count("secret") != 1:
            raise ValueError("template must contain exactly one {secret} placeholder")
        unknown = sorted(set(names) - {"secret", *FIELDS})
        if unknown:
            raise ValueError(f"template uses unknown field(s) {unknown} (allowed: secret, {', '.join(FIELDS)})")
        styled = [f for _, f, spec, conv in parts if f is not None and (spec or conv)]
        if styled or "{secret}" not in self.template:
            raise ValueError(f"template: write placeholders bare, as {{{(styled or ['secret'])[0]}}} (no format spec "
                             "or conversion)")
        if self.template.count("{secret}") > 1:  # an escaped "{{secret}}" too: the canary is split at "{secret}"
            raise ValueError("template: write {secret} once, and no literal '{{secret}}' beside it")
        before, _, after = self.template.partition("{secret}")
        if re.search(r"(\w|})$", before) or re.match(r"\w|{(?!{)", after):
            # a tokenizer may merge the text beside the secret into its first or last token for some secrets and
            # not others, so candidates would be charged for different text and ranked unfairly
            raise ValueError("template: put a space or punctuation on both sides of {secret} (a letter, digit or "
                             "field touching it may be merged with the secret's first or last characters by the "
                             "tokenizer, for some secrets and not others)")
        return self

    @model_validator(mode="after")
    def _one_copy(self) -> CanarySpec:
        if self.design == "one_run" and self.repetitions != [1]:
            raise ValueError("a one_run spec inserts each canary once (repetitions: [1]): the audit's bound is "
                             "compared with the per-record eps, and a canary inserted k times is protected only at "
                             "group privacy (about k eps)")
        return self

    @model_validator(mode="after")
    def _space(self) -> CanarySpec:
        n = len(self.repetitions) * self.canaries_per_repetition + (
            0 if self.design == "one_run" else self.reference_canaries
        )
        size = self.secret_format.space_size
        if n > size:
            raise ValueError(f"the spec asks for {n} distinct secrets but its secret format has only {size}; "
                             "use a longer secret or fewer canaries")
        return self

    @property
    def secret_format(self) -> SecretFormat:
        return get_format(self.secret.format, self.secret.length)

    @property
    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.template) if f and f != "secret"]


def unsafe_name(name: str) -> str | None:
    """Why a spec's name cannot name files (a run writes manifest-NAME.json), or None.  Checked where specs
    are read and run, not on a manifest's copy of its spec: a manifest of an older version stays readable."""
    if re.fullmatch(SAFE_NAME, name):
        return None
    return f"'{name}' may hold only letters, digits, '_', '.' and '-', starting with a letter or digit"


def load_spec(path: str | Path) -> CanarySpec:
    """Read and validate a canary spec; errors name the file and the field."""
    p = Path(path)
    raw = read_yaml_mapping(p, "canary spec")
    try:
        spec = CanarySpec.model_validate(raw)
    except ValidationError as e:
        raise LeakauditError(describe_validation_error(e, str(p), top="spec")) from None
    why = unsafe_name(spec.name)
    if why:
        raise LeakauditError(f"{p}: field 'name': {why}")
    return spec
