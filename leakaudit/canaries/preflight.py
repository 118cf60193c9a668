"""Canary pre-flight: is every inserted canary actually seen by the training loss?

A canary can be inserted and still never be trained on: cut off by truncation (the secret lies
past ``max_length`` tokens), dropped or deduplicated by the data pipeline, or present fewer
times than its repetition count says.  Each of these makes its exposure meaningless, so the
check runs before training and its warnings go to the run's events and to the console.
"""

from __future__ import annotations

from collections import Counter

from transformers import PreTrainedTokenizerBase

from leakaudit.canaries.manifest import CanaryManifest
from leakaudit.models.tokenize import encode


def preflight(
    manifest: CanaryManifest,
    train_texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
) -> list[str]:
    """Warnings, one per problem (an empty list means every inserted canary will be trained on).

    ``train_texts`` are the training records as the trainer will see them; a canary counts as
    present when a record contains its full text.  ``max_length`` is the trainer's truncation
    length in tokens (BOS and EOS included, as :func:`leakaudit.models.encode` adds them).
    """
    warnings = []
    exact = Counter(train_texts)
    for c in manifest.canaries:
        found = exact[c.text] or sum(c.text in t for t in train_texts)
        if not c.inserted:
            if found:
                warnings.append(f"{c.id}: a reference canary occurs {found} time(s) in the training data")
            continue
        if found != c.repetitions:
            warnings.append(f"{c.id}: inserted {c.repetitions} time(s) but found {found} time(s) in the training data")
        holder = c.text if exact[c.text] else next((t for t in train_texts if c.text in t), c.text)
        e = encode(tokenizer, [holder], add_eos=True)[0]
        end = holder.index(c.text) + len(c.prefix) + len(c.secret)
        last = max((i for i, (a, b) in enumerate(e.offsets) if a < end and b > 0), default=len(e.ids) - 1)
        if last >= max_length:
            warnings.append(
                f"{c.id}: the secret ends at token {last + 1} but training truncates at {max_length} tokens"
            )
    return warnings


def preflight_all(
    manifests: list[CanaryManifest], train_texts: list[str], tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> list[str]:
    """:func:`preflight` over several manifests."""
    return [w for m in manifests for w in preflight(m, train_texts, tokenizer, max_length=max_length)]
