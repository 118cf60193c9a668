"""Corpora: synthetic private/public records, loading user data, member/non-member splits."""

from leakaudit.data.loading import load_corpus, load_records, load_texts, user_of
from leakaudit.data.split import MembershipSplit, check_no_overlap, split_members
from leakaudit.data.synthetic import PII_TYPES, make_corpora

__all__ = [
    "PII_TYPES",
    "MembershipSplit",
    "check_no_overlap",
    "load_corpus",
    "load_records",
    "load_texts",
    "make_corpora",
    "split_members",
    "user_of",
]
