"""Member / non-member splits, seeded and recorded, with overlap refused."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, Field

from leakaudit.data.loading import user_of
from leakaudit.errors import LeakauditError
from leakaudit.io import sha256_text


class MembershipSplit(BaseModel):
    """Which records a model was trained on (members) and which were held out."""

    seed: int = Field(description="Seed of the random split.")
    member_fraction: float = Field(description="Fraction of records assigned to members.")
    member_ids: list[str] = Field(description="Record ids trained on.")
    non_member_ids: list[str] = Field(description="Record ids held out, same distribution.")


def check_no_overlap(members: Sequence[str], non_members: Sequence[str], *, what: str = "members",
                     where: str | None = None) -> None:
    """Refuse a split where a text occurs among both members and non-members.

    A shared text would be scored as a non-member although the model trained on it,
    which silently biases every attack metric towards chance.
    """
    seen = {sha256_text(t.strip()) for t in members}
    shared = sum(1 for t in non_members if sha256_text(t.strip()) in seen)
    if shared:
        raise LeakauditError(
            f"{what} and non-members overlap: {shared} non-member text(s) also occur {where or 'among the ' + what}"
        )


def split_members(
    records: Sequence[dict], *, member_fraction: float = 0.5, seed: int = 0
) -> tuple[list[dict], list[dict], MembershipSplit]:
    """Split records at random into members and non-members.

    Records of one user (``user_id``) stay on the same side, so membership can be asked of a
    person as well as of a record; records with identical text are kept together too, so the
    split never overlaps.
    """
    if not 0.0 < member_fraction < 1.0:
        raise LeakauditError(f"member_fraction must lie strictly between 0 and 1 (got {member_fraction})")
    # union of "same user" and "same text" into groups, in first-seen order
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in records:
        t = "text:" + r["text"].strip()
        find(t)
        user = user_of(r.get("user_id"))
        if user is not None:
            parent[find("user:" + user)] = find(t)
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(find("text:" + r["text"].strip()), []).append(r)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n_mem = round(len(keys) * member_fraction)
    if n_mem == 0 or n_mem == len(keys):
        raise LeakauditError(f"cannot split {len(keys)} distinct records into members and non-members")
    members = [r for k in keys[:n_mem] for r in groups[k]]
    non_members = [r for k in keys[n_mem:] for r in groups[k]]
    split = MembershipSplit(
        seed=seed,
        member_fraction=member_fraction,
        member_ids=[str(r["id"]) for r in members],
        non_member_ids=[str(r["id"]) for r in non_members],
    )
    return members, non_members, split
