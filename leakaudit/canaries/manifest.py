"""Canary generation, insertion into a corpus, and the manifest that records both."""

from __future__ import annotations

import random
import secrets as secrets_module
from pathlib import Path

from faker import Faker
from pydantic import BaseModel, Field, field_validator, model_validator

from leakaudit.canaries.spec import CanarySpec
from leakaudit.io import read_json, sha256_text, write_json


class Canary(BaseModel):
    """One canary.  ``prefix + secret + suffix`` is the text a model trains on."""

    id: str
    prefix: str = Field(description="Text before the secret (per-canary fields filled in).")
    secret: str = Field(description="The secret drawn from the randomness space.  Never shown in reports.")
    suffix: str = Field(description="Text after the secret.")
    repetitions: int = Field(description="Times inserted into the training data (0 for reference canaries).")
    randomized: bool = Field(
        default=False, description="Part of a one-run audit: inserted or not by a fair coin, independently."
    )
    inserted: bool
    sha256: str = Field(description="SHA-256 of the canary's full text.")

    @property
    def text(self) -> str:
        return self.prefix + self.secret + self.suffix


class CanaryManifest(BaseModel):
    """All canaries of one spec, inserted and reference.  Holds secrets: keep it private."""

    schema_version: int = 1
    spec: CanarySpec
    space_size: int
    canaries: list[Canary]

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != 1:  # the only version so far
            raise ValueError(f"{v} is not a manifest version this leakaudit reads (1); a newer one needs a newer "
                             "leakaudit")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CanaryManifest:
        """A manifest edited or broken by hand would be audited as if it were true: refuse it."""
        fmt, seen = self.spec.secret_format, set()
        for i, c in enumerate(self.canaries):
            where = f"canaries[{i}] ({c.id})"  # never the secret itself
            if c.id in seen:
                raise ValueError(f"{where}: the id is given twice")
            seen.add(c.id)
            if not fmt.contains(c.secret):
                raise ValueError(f"{where}: the secret is not of the spec's format ({self.spec.secret.format}, "
                                 f"length {self.spec.secret.length})")
            if c.repetitions < 0 or c.inserted != (c.repetitions > 0):
                raise ValueError(f"{where}: repetitions {c.repetitions} and inserted {c.inserted} disagree")
            if c.sha256 != sha256_text(c.text):
                raise ValueError(f"{where}: sha256 is not that of the canary's text")
        return self

    @property
    def inserted(self) -> list[Canary]:
        return [c for c in self.canaries if c.inserted]

    def save(self, path: str | Path) -> None:
        """Write the manifest, readable by its owner only: it holds the secrets."""
        write_json(path, self.model_dump(mode="json"), private=True)

    @classmethod
    def load(cls, path: str | Path) -> CanaryManifest:
        return cls.model_validate(read_json(path))


def _fill_fields(spec: CanarySpec, fake: Faker) -> dict[str, str]:
    makers = {"name": fake.name, "first_name": fake.first_name, "city": fake.city, "company": fake.company}
    return {f: makers[f]() for f in spec.fields}


def generate_canaries(spec: CanarySpec) -> CanaryManifest:
    """Draw every canary of a spec: ``canaries_per_repetition`` per count, plus references.

    Secrets are distinct; per-canary fields (``{name}`` ...) are distinct too, so two
    canaries never share a prefix unless the template has no fields.
    """
    if spec.seed is None:  # secret canaries: a seed nobody can guess, kept in the (private) manifest only
        spec = spec.model_copy(update={"seed": secrets_module.randbits(62)})
    fmt = spec.secret_format
    one_run = spec.design == "one_run"
    n_total = len(spec.repetitions) * spec.canaries_per_repetition + (0 if one_run else spec.reference_canaries)
    if n_total > fmt.space_size:
        raise ValueError(f"spec '{spec.name}' asks for {n_total} distinct secrets from a space of {fmt.space_size}")
    rng = random.Random(spec.seed)
    fake = Faker("en_US")
    fake.seed_instance(spec.seed + 7)
    head, tail = spec.template.split("{secret}")
    secrets: set[str] = set()
    prefixes: set[str] = set()
    plan = [r for r in spec.repetitions for _ in range(spec.canaries_per_repetition)]
    if one_run:
        # each canary in with probability 1/2, independently (its own stream: the secrets do not shift)
        coin = random.Random(f"{spec.seed}-inclusion")
        plan = [r if coin.random() < 0.5 else 0 for r in plan]
    else:
        plan += [0] * spec.reference_canaries
    canaries = []
    for i, reps in enumerate(plan):
        secret = fmt.sample(rng)
        while secret in secrets:
            secret = fmt.sample(rng)
        secrets.add(secret)
        for _ in range(100):
            fields = _fill_fields(spec, fake)
            prefix = head.format(**fields)
            if not fields or prefix not in prefixes:
                break
        prefixes.add(prefix)
        suffix = tail.format(**fields)
        canaries.append(
            Canary(
                id=f"{spec.name}-{i:04d}",
                prefix=prefix,
                secret=secret,
                suffix=suffix,
                repetitions=reps,
                inserted=reps > 0,
                randomized=one_run,
                sha256=sha256_text(prefix + secret + suffix),
            )
        )
    return CanaryManifest(spec=spec, space_size=fmt.space_size, canaries=canaries)


def insert_canaries(records: list[dict], manifest: CanaryManifest, *, seed: int = 0) -> list[dict]:
    """Return a new list with each inserted canary added ``repetitions`` times at random places.

    Canary rows carry ``{"id": "<canary id>#<k>", "canary_id": ..., "text": ...}``; the input
    records are left in their original relative order.
    """
    rng = random.Random(seed)
    out = list(records)
    for c in manifest.inserted:
        for k in range(c.repetitions):
            row = {"id": f"{c.id}#{k}", "canary_id": c.id, "user_id": None, "text": c.text, "pii": []}
            out.insert(rng.randint(0, len(out)), row)
    return out
