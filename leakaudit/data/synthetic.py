"""A seeded synthetic corpus of customer-support records with annotated PII.

Each record is a dict ``{"id", "user_id", "text", "pii"}`` where ``pii`` lists
``{"type", "start", "end"}`` character spans into ``text``.  Customers are Faker profiles
(name, email, phone, street address, account number, card-like number); each customer
writes several records, so per-user questions can be asked later.

:func:`make_corpora` returns a *private* corpus (the records a model is fine-tuned on, or
held out from it) and a *public* corpus in the same style drawn from different customers,
used to pretrain the base model.  The two share no record text and no PII value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from faker import Faker

PII_TYPES = ("name", "email", "phone", "address", "account_number", "card_number")

_ISSUES = [
    ("a double charge", "I was billed twice this month"),
    ("a late delivery", "my order still has not arrived"),
    ("a locked account", "I cannot log in after the password reset"),
    ("a refund request", "the item arrived damaged and I want my money back"),
    ("an address change", "I moved and the bills still go to the old place"),
    ("a declined payment", "my payment was declined although the card is valid"),
    ("a subscription cancellation", "I want to cancel the premium plan"),
    ("a missing invoice", "I need the invoice for my last purchase"),
    ("an unknown transaction", "there is a charge I do not recognise"),
    ("a broken device", "the router stopped working after the update"),
]
_RESOLUTIONS = [
    "The agent opened a case and promised a call back within two days.",
    "The issue was escalated to the billing team.",
    "A replacement was shipped the same day.",
    "The agent issued a refund of the disputed amount.",
    "The customer was asked to confirm the details by email.",
    "The case was closed after the customer confirmed the fix.",
    "A technician visit was scheduled for next week.",
    "The agent reset the account and sent a new activation link.",
]


@dataclass(frozen=True)
class _Customer:
    user_id: str
    name: str
    email: str
    phone: str
    address: str
    account_number: str
    card_number: str


class _Builder:
    """Concatenates literal text and PII values, recording each value's span."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.spans: list[dict] = []
        self.length = 0

    def text(self, s: str) -> _Builder:
        self.parts.append(s)
        self.length += len(s)
        return self

    def pii(self, kind: str, value: str) -> _Builder:
        self.spans.append({"type": kind, "start": self.length, "end": self.length + len(value)})
        return self.text(value)

    def build(self) -> tuple[str, list[dict]]:
        return "".join(self.parts), self.spans


def _customer(fake: Faker, rng: random.Random, user_id: str) -> _Customer:
    first, last = fake.first_name(), fake.last_name()
    domain = rng.choice(["mail.com", "example.org", "inbox.net", "post.io", "webmail.co"])
    email = f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@{domain}"
    phone = f"({rng.randint(200, 989)}) {rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
    address = f"{fake.street_address()}, {fake.city()}, {fake.state_abbr()} {fake.zipcode()}"
    account = f"ACC-{rng.randint(0, 10**8 - 1):08d}"
    card = fake.credit_card_number(card_type=rng.choice(["visa16", "mastercard"]))
    card = " ".join(card[i : i + 4] for i in range(0, len(card), 4))
    return _Customer(user_id, f"{first} {last}", email, phone, address, account, card)


def _record(c: _Customer, rng: random.Random, ticket: int) -> tuple[str, list[dict]]:
    issue, complaint = rng.choice(_ISSUES)
    resolution = rng.choice(_RESOLUTIONS)
    b = _Builder()
    style = rng.randrange(4)
    if style == 0:
        b.text(f"Ticket #{ticket}: customer ").pii("name", c.name).text(" (").pii("email", c.email)
        b.text(") called from ").pii("phone", c.phone).text(f" about {issue} on account ")
        b.pii("account_number", c.account_number).text(f". {resolution}")
    elif style == 1:
        b.text(f"Subject: {issue}\nFrom: ").pii("name", c.name).text(" <").pii("email", c.email)
        b.text(f">\nHello, {complaint}. The card on file is ").pii("card_number", c.card_number)
        b.text(". Please write to me at ").pii("address", c.address).text(" or call ")
        b.pii("phone", c.phone).text(".")
    elif style == 2:
        b.text("Chat transcript. Agent: How can I help you today? Customer: This is ").pii("name", c.name)
        b.text(", account ").pii("account_number", c.account_number).text(f". {complaint.capitalize()}. ")
        b.text("Agent: I see the address ").pii("address", c.address).text(f" on file. {resolution}")
    else:
        b.text("Callback note: ").pii("name", c.name).text(" reported ").text(issue)
        b.text(". Verified with card ").pii("card_number", c.card_number).text(" and phone ")
        b.pii("phone", c.phone).text(". Follow up at ").pii("email", c.email).text(f". {resolution}")
    return b.build()


def _customers(n: int, seed: int, prefix: str, taken: set[str]) -> list[_Customer]:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    out: list[_Customer] = []
    while len(out) < n:
        c = _customer(fake, rng, f"{prefix}-{len(out):05d}")
        values = (c.name, c.email, c.phone, c.address, c.account_number, c.card_number)
        if any(v in taken for v in values):
            continue  # keeps the two corpora disjoint in every PII value
        taken.update(values)
        out.append(c)
    return out


def _records(customers: list[_Customer], n: int, seed: int, id_prefix: str) -> list[dict]:
    rng = random.Random(seed + 1)
    rows, seen = [], set()
    ticket = 10000 + rng.randrange(80000)
    while len(rows) < n:
        c = customers[len(rows) % len(customers)] if len(rows) < len(customers) else rng.choice(customers)
        ticket += rng.randint(1, 97)
        text, spans = _record(c, rng, ticket)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"{id_prefix}-{len(rows):06d}", "user_id": c.user_id, "text": text, "pii": spans})
    return rows


def make_corpora(
    n_private: int, n_public: int, *, seed: int = 0, records_per_user: float = 2.0
) -> tuple[list[dict], list[dict]]:
    """Make the private and public corpora.

    Args:
        n_private: number of private records (later split into members and non-members).
        n_public: number of public records (for pretraining the base model).
        seed: everything is a function of this seed.
        records_per_user: average number of records each customer writes.

    Returns:
        ``(private, public)`` lists of records.

    Example:
        >>> private, public = make_corpora(6, 4, seed=1)
        >>> r = private[0]
        >>> all(r["text"][s["start"]:s["end"]] for s in r["pii"])
        True
    """
    if n_private < 1 or n_public < 0:
        raise ValueError("n_private must be >= 1 and n_public >= 0")
    taken: set[str] = set()
    priv_c = _customers(max(1, round(n_private / records_per_user)), seed * 2 + 11, "user", taken)
    pub_c = _customers(max(1, round(n_public / records_per_user)), seed * 2 + 12, "pub", taken)
    private = _records(priv_c, n_private, seed * 2 + 11, "priv")
    public = _records(pub_c, n_public, seed * 2 + 12, "pub") if n_public else []
    return private, public
