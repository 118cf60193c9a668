"""Untargeted training-data extraction (Carlini et al. 2021, "Extracting Training Data from Large
Language Models"), verified against the training set.

1. Sample many sequences from the model with three strategies: top-k from an empty (BOS) prompt;
   a temperature that decays from high to 1 over the first tokens; top-k from short prompts
   taken from a public corpus.
2. Rank the samples by membership signals: perplexity, zlib ratio, lowercase ratio, reference
   ratio (when a reference model is given) and the best sliding window.
3. Remove near duplicates (token-trigram overlap above one half with an earlier sample).
4. Verify: a sample is *memorized* when one of its token n-grams (with at least one generated
   token) occurs in the training data and not in the public corpus, found through a hashed
   n-gram index.  The same check against held-out records that the model never saw is the
   baseline: matches there come from the template and chance, not from memorization.
5. Report precision@k for each ranking, and how many distinct training records were reproduced.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd

from leakaudit.models.generate import Sampling, check_fits_context, generate
from leakaudit.models.target import Target
from leakaudit.models.tokenize import bos_id, encode
from leakaudit.report.schema import UntargetedExtraction

_MULT = np.uint64(0x9E3779B97F4A7C15)


def ngram_hashes(seqs: Sequence[Sequence[int]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit polynomial hashes of every token n-gram of each sequence, in order, and the index of the
    sequence each one came from.  All sequences are hashed together (one pass of ``n`` array operations),
    so millions of samples cost seconds, not a Python loop per sample."""
    if n < 1:
        raise ValueError("n must be >= 1")
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    counts = np.maximum(lens - n + 1, 0)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    flat = np.fromiter(chain.from_iterable(seqs), dtype=np.uint64, count=int(lens.sum())) + np.uint64(1)
    start, owner = _ranges(np.cumsum(lens) - lens, counts)  # where each n-gram starts in ``flat``
    # every window of ``flat`` hashed with contiguous slices (windows across two sequences are dropped)
    h = np.zeros(flat.size - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h *= _MULT
            h += flat[j: j + h.size]
    return h[start], owner


def _ranges(starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions ``starts[k], ..., starts[k] + lens[k] - 1`` of every k, concatenated, and each one's k."""
    label = np.repeat(np.arange(lens.size, dtype=np.int64), lens)
    return np.arange(label.size, dtype=np.int64) - (np.cumsum(lens) - lens)[label] + starts[label], label


def _unique(a: np.ndarray) -> np.ndarray:
    """The distinct values of ``a``, sorted (by sorting: numpy's hash-based ``unique`` is several times
    slower on millions of 64-bit keys)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if a.size else a


def _positions(sorted_keys: np.ndarray, q: np.ndarray, presorted: bool = False) -> np.ndarray:
    """Where each of ``q`` would stand in ``sorted_keys`` (non-empty, sorted ascending), clipped to its
    last index.  Sorted queries search several times faster (cache-friendly): they are sorted here unless
    ``presorted``."""
    if presorted:
        pos = np.searchsorted(sorted_keys, q)
    else:
        order = np.argsort(q)
        pos = np.empty(q.size, dtype=np.int64)
        pos[order] = np.searchsorted(sorted_keys, q[order])
    return pos.clip(max=sorted_keys.size - 1)


def _in_sorted(sorted_keys: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Whether each of ``q`` is one of ``sorted_keys`` (sorted ascending)."""
    if sorted_keys.size == 0 or q.size == 0:
        return np.zeros(q.size, dtype=bool)
    return sorted_keys[_positions(sorted_keys, q)] == q


class NgramIndex:
    """Hashes of every token n-gram of a corpus, sorted for binary search (16 bytes per n-gram).

    ``lookup`` answers which document each n-gram of a query first occurs in (-1: nowhere).
    64-bit polynomial hashes make a false match vanishingly unlikely (about 2^-64 per pair) for text not
    crafted to collide (collisions can be constructed, as for any 64-bit hash).
    """

    def __init__(self, docs: Sequence[Sequence[int]], n: int):
        self.n = n
        h, owner = ngram_hashes(docs, n)
        order = np.argsort(h, kind="stable")  # equal n-grams keep document order: the first document wins
        self._h, self._doc = h[order], owner[order]

    def __len__(self) -> int:
        return int(self._h.size)

    def find(self, q: np.ndarray, *, presorted: bool = False) -> np.ndarray:
        """For each n-gram hash in ``q``: the index of a document containing it, or -1 (``presorted``: ``q``
        is sorted already)."""
        q = np.asarray(q, dtype=np.uint64)  # other integer types would be searched as floats
        if q.size == 0 or self._h.size == 0:
            return np.full(q.size, -1, dtype=np.int64)
        pos = _positions(self._h, q, presorted)
        return np.where(self._h[pos] == q, self._doc[pos], -1)

    def lookup(self, ids: Sequence[int]) -> np.ndarray:
        """For each n-gram of ``ids``: the index of a document containing it, or -1."""
        return self.find(ngram_hashes([ids], self.n)[0])


def dedupe(samples: Sequence[Sequence[int]], threshold: float = 0.5) -> np.ndarray:
    """Indices of the samples kept: a sample is dropped when more than ``threshold`` of its distinct
    token trigrams occur in a single earlier kept sample (a sample without a trigram is dropped too).

    Exact (trigrams compared by 64-bit hash: token ids of real vocabularies cannot collide), and fast at
    hundreds of thousands of samples, copies and padding included: the samples holding each trigram are
    listed as they are kept, a sample with fewer than ``need`` trigrams that a kept sample holds is kept
    at once, and otherwise only the kept samples holding one of its ``e - need + 1`` least-held such
    trigrams are compared with it (a sample sharing ``need`` of those ``e`` must hold one of any
    ``e - need + 1``: the prefix filter of set-similarity joins).
    """
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number (got {threshold})")
    h, owner = ngram_hashes(samples, 3)
    keys, gram = np.unique(h, return_inverse=True)
    # each sample's distinct trigrams as (sample, trigram) pairs, sorted by sample then trigram
    pairs = _unique(owner * keys.size + gram.reshape(-1))
    own, gram = pairs // keys.size, pairs % keys.size
    bounds = np.searchsorted(own, np.arange(len(samples) + 1))
    # the kept samples holding trigram t, in order: slots[row[t]: row[t] + n_kept[t]]
    row = np.concatenate(([0], np.cumsum(np.bincount(gram, minlength=keys.size))))
    slots = np.empty(int(row[-1]), dtype=np.int64)
    n_kept = np.zeros(keys.size, dtype=np.int64)
    kept = []
    for i in range(len(samples)):
        mine = gram[bounds[i]: bounds[i + 1]]
        if mine.size == 0:
            continue
        need = max(math.floor(threshold * int(mine.size)) + 1, 1)  # shared trigrams that drop the sample
        held = mine[n_kept[mine] > 0]
        if held.size >= need and _shares(held, need, n_kept, slots, row, gram, bounds):
            continue
        kept.append(i)
        slots[row[mine] + n_kept[mine]] = i  # a sample's trigrams are distinct: no index twice
        n_kept[mine] += 1
    return np.array(kept, dtype=np.int64)


def _shares(held, need, n_kept, slots, row, gram, bounds) -> bool:
    """Whether one kept sample holds at least ``need`` of ``held`` (a sample's sorted trigrams that kept
    samples hold)."""
    if need == 1:  # any holder shares one
        return True
    probe = held[np.argsort(n_kept[held], kind="stable")[: held.size - need + 1]]
    cand = _unique(np.concatenate([slots[row[t]: row[t] + n_kept[t]] for t in probe.tolist()]))
    idx, label = _ranges(bounds[cand], bounds[cand + 1] - bounds[cand])
    shared = np.bincount(label[_in_sorted(held, gram[idx])], minlength=cand.size)
    return bool(shared.max() >= need)


@dataclass(frozen=True)
class Samples:
    """Generated samples: the prompt and new token ids of each, and the strategy that made it."""

    prompts: list[list[int]]
    new: list[list[int]]
    strategy: list[str]

    def texts(self, tokenizer) -> list[str]:
        return [tokenizer.decode(p + n, skip_special_tokens=True) for p, n in zip(self.prompts, self.new)]


RECORD_BREAK = "\n\n"  # between the records of one sample; no detected value spans it (see attacks.pii)


def decode_records(tokenizer, ids: Sequence[int]) -> str:
    """The text of generated ``ids``, a paragraph per record the model wrote: a model trained on records that end
    in EOS writes EOS between records, and decoding with the special tokens skipped would glue the end of one
    record to the start of the next (a phone number followed by a name is then no phone number)."""
    special = set(tokenizer.all_special_ids)
    parts, part = [], []
    for t in ids:
        if int(t) in special:
            parts.append(part)
            part = []
        else:
            part.append(int(t))
    parts.append(part)
    return RECORD_BREAK.join(text for p in parts if p and (text := tokenizer.decode(p, skip_special_tokens=True)))


def _start_ids(tokenizer) -> list[int]:
    start = bos_id(tokenizer)
    if start is None:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start an empty prompt")
    return [int(start)]


def sample_texts(
    target: Target,
    n_samples: int,
    *,
    length: int = 64,
    public_texts: Sequence[str] = (),
    prompt_tokens: tuple[int, int] = (5, 10),
    top_k: int = 40,
    start_temperature: float = 10.0,
    decay_steps: int = 20,
    batch_size: int = 128,
    seed: int = 0,
) -> Samples:
    """Draw ``n_samples`` samples of ``length`` new tokens, split evenly over the strategies
    (public-prompt sampling only when ``public_texts`` is given)."""
    tok = target.tokenizer
    start = _start_ids(tok)
    strategies = ["top_k", "temperature_decay"] + (["public_prompt"] if public_texts else [])
    counts = [n_samples // len(strategies) + (i < n_samples % len(strategies)) for i in range(len(strategies))]
    rng = np.random.default_rng(seed)
    plans = []  # (strategy's index, name, prompts, sampling): every prompt drawn before any is decoded
    for s_i, (name, count) in enumerate(zip(strategies, counts)):
        if count == 0:
            continue
        if name == "public_prompt":
            enc = encode(tok, list(public_texts))
            picks = rng.integers(0, len(enc), size=count)
            lens = rng.integers(prompt_tokens[0], prompt_tokens[1] + 1, size=count)
            ps = [enc[i].ids[: enc[i].n_special + int(m)] for i, m in zip(picks, lens)]
            ps = [p if len(p) > 0 else start for p in ps]
        else:
            ps = [start] * count
        sampling = (
            Sampling(max_new_tokens=length, top_k=None, start_temperature=start_temperature,
                     decay_steps=min(decay_steps, length))
            if name == "temperature_decay" else Sampling(max_new_tokens=length, top_k=top_k)
        )
        plans.append((s_i, name, ps, sampling))
    if plans:  # refused before any sample is drawn, not after the first strategies' work
        check_fits_context(target.model, max(len(p) for _, _, ps, _ in plans for p in ps), length,
                           f"untargeted sampling, sample_tokens {length}")
    prompts, new, labels = [], [], []
    for s_i, name, ps, sampling in plans:
        out = generate(target.model, ps, sampling, pad_id=target.pad_id, batch_size=batch_size, seed=seed * 7 + s_i)
        prompts.extend(list(p) for p in ps)
        new.extend(out.tolist())
        labels.extend([name] * len(ps))
    return Samples(prompts, new, labels)


def _window_best(lp: np.ndarray, window: int) -> float:
    if lp.size == 0:
        return float("-inf")
    if lp.size <= window:
        return float(lp.mean())
    c = np.concatenate([[0.0], np.cumsum(lp, dtype=np.float64)])
    return float(((c[window:] - c[:-window]) / window).max())


def ranking_scores(
    target: Target, texts: list[str], *, reference: Target | None = None, window: int = 16
) -> pd.DataFrame:
    """Membership signals of each sample (higher = more likely memorized), one column each."""
    lps = target.score(texts)
    mean = np.array([lp.mean() if lp.size else -np.inf for lp in lps], dtype=np.float64)
    zl = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
    lower = target.score([t.lower() for t in texts])
    lower_mean = np.array([lp.mean() if lp.size else -np.inf for lp in lower], dtype=np.float64)
    df = pd.DataFrame({
        "perplexity": mean,
        "zlib": mean / np.maximum(zl, 1.0),
        "lowercase": -lower_mean / np.maximum(-mean, 1e-6),
        "window": [_window_best(lp, window) for lp in lps],
    })
    if reference is not None:
        ref = np.array([lp.mean() if lp.size else -np.inf for lp in reference.score(texts)], dtype=np.float64)
        df["reference_ratio"] = -ref / np.maximum(-mean, 1e-6)
    return df


def _written(prompt: Sequence[int], new: Sequence[int], n: int) -> list[int]:
    """The tokens whose n-grams a sample writes: the prompt's last n - 1 and the new ones (every n-gram then
    holds a generated token, so a public prompt is never counted as the model's output)."""
    return list(prompt[-(n - 1):]) + list(new) if n > 1 else list(new)


def records_written(samples: Samples, kept: Sequence[int], records: Sequence[Sequence[int]], n: int,
                    public: NgramIndex | None = None) -> pd.DataFrame:
    """Per record (token ids): ``written``, whether some kept sample writes one of its token n-grams that
    the public corpus does not hold; ``ngrams``, its n-grams, and ``public_ngrams``, how many of them the
    public corpus holds; ``testable``, whether it has one outside (else it cannot be written out).  Every
    record is checked the same way whichever side it is on, and a text several records share counts for each
    of them, so under "the model never saw them" and a random split, which records are written out does not
    depend on their side."""
    written = _unique(ngram_hashes([_written(samples.prompts[i], samples.new[i], n) for i in kept], n)[0])
    q, owner = ngram_hashes(records, n)
    pub = public.find(q) >= 0 if public is not None else np.zeros(q.size, dtype=bool)
    hit = _in_sorted(written, q) & ~pub

    def per_record(mask):
        return np.bincount(owner[mask], minlength=len(records))

    ngrams, public_ngrams = np.bincount(owner, minlength=len(records)), per_record(pub)
    return pd.DataFrame({"written": per_record(hit) > 0, "ngrams": ngrams, "public_ngrams": public_ngrams,
                         "testable": ngrams > public_ngrams})


PUBLIC_SKEW = 0.05
"""Warn when the public corpus holds this much more (a difference of mean shares of token n-grams) of the
held-out side's text than of the training side's and a Mann-Whitney test puts it beyond chance (p < 0.001)."""


def public_skew_warning(share: np.ndarray, member: np.ndarray, unit: str = "record") -> str | None:
    """A warning when the public corpus covers the held-out units' n-grams (``share``: of each unit, records or
    people, the fraction of its token n-grams the public corpus holds) more than the training units': their
    text then counts less often as written out, which makes free sampling look like a leak.  (The other way
    round only hides leaks.)  Units must be independent under the split: people, not their records, under a
    per-person split."""
    from scipy.stats import mannwhitneyu

    mine, theirs = share[member], share[~member]
    if mine.size == 0 or theirs.size == 0 or theirs.mean() - mine.mean() < PUBLIC_SKEW:
        return None
    if mannwhitneyu(theirs, mine, alternative="greater").pvalue >= 1e-3:
        return None
    return (f"the public corpus holds on average {theirs.mean():.0%} of a held-out {unit}'s token n-grams against "
            f"{mine.mean():.0%} of a training {unit}'s: held-out text is less often counted as written out, which "
            "favours a leak; a public corpus drawn from neither side avoids this")


def verify(samples: Samples, train: NgramIndex, *, public: NgramIndex | None = None,
           non_members: NgramIndex | None = None) -> pd.DataFrame:
    """Per sample: whether it reproduces training text not in the public corpus ('memorized'),
    which training document it matched (its first such n-gram's), and the same check against held-out
    records (baseline)."""
    n, m = train.n, len(samples.new)
    q, owner = ngram_hashes([_written(p, g, n) for p, g in zip(samples.prompts, samples.new)], n)
    at = np.argsort(q)  # the n-grams sorted once for the three indexes; ``at``: each one's position
    q, owner = q[at], owner[at]
    hits = train.find(q, presorted=True)
    pub = public.find(q, presorted=True) >= 0 if public is not None else np.zeros(q.size, bool)
    private = (hits >= 0) & ~pub
    # the same test against held-out records, whether or not training also holds the n-gram: text
    # shared by members and non-members (a template) counts on both sides, as it should
    held = (non_members.find(q, presorted=True) >= 0) & ~pub if non_members is not None else np.zeros(q.size, bool)
    train_doc = np.full(m, -1, dtype=np.int64)
    back = np.argsort(at[private])  # the private matches in position order: each sample's first one wins
    first_sample, first_at = np.unique(owner[private][back], return_index=True)
    train_doc[first_sample] = hits[private][back][first_at]

    def any_of(mask):
        return np.bincount(owner[mask], minlength=m) > 0

    return pd.DataFrame({"memorized": any_of(private), "train_doc": train_doc, "in_public": any_of(pub),
                         "non_member_match": any_of(held)},
                        columns=["memorized", "train_doc", "in_public", "non_member_match"])


def precision_at(flags: np.ndarray, scores: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Fraction of flagged items among the top k by score (ties broken by position), for each k."""
    order = np.argsort(-scores, kind="stable")
    out = {}
    for k in ks:
        k = min(int(k), flags.size)
        if k > 0:
            out[str(k)] = float(flags[order[:k]].mean())
    return out


def untargeted_extraction(
    target: Target,
    samples: Samples,
    train_texts: Sequence[str],
    *,
    public_texts: Sequence[str] = (),
    non_member_texts: Sequence[str] = (),
    reference: Target | None = None,
    ngram: int = 16,
    ks: Sequence[int] = (10, 50, 100),
    window: int = 16,
    member_texts: Sequence[str] = (),
    per_record: list[dict] | None = None,
) -> tuple[UntargetedExtraction, pd.DataFrame]:
    """Rank, dedupe and verify the samples; returns the summary (no text) and a per-sample table.

    ``member_texts``: the audit's member records, checked like ``non_member_texts`` record by record
    (:func:`records_written`) for the summary's record counts.  Records whose every n-gram is public (or
    that are shorter than one) cannot be written out on either side and are left out of those counts.
    When ``per_record`` is a list, one row per record, members first, is appended to it: ``written``,
    ``testable`` and the :func:`records_written` counts (private: it pairs records with outcomes; the audit
    tests it and checks it with :func:`public_skew_warning`).
    """
    tok = target.tokenizer

    def tokens(texts):
        return [e.ids[e.n_special:] for e in encode(tok, list(texts))] if texts else []

    def index(docs):
        return NgramIndex(docs, ngram) if docs else None

    train = index(tokens(train_texts))
    if train is None:
        raise ValueError("untargeted extraction needs the training texts to verify against")
    public = index(tokens(public_texts))
    held_out = tokens(non_member_texts)  # indexed for the samples' baseline, checked one by one below
    table = verify(samples, train, public=public, non_members=index(held_out))
    table.insert(0, "strategy", samples.strategy)
    keep = dedupe([p + g for p, g in zip(samples.prompts, samples.new)])
    table["unique"] = False
    table.loc[keep, "unique"] = True
    texts = samples.texts(tok)
    scores = ranking_scores(target, texts, reference=reference, window=window)
    table = pd.concat([table, scores.add_prefix("score_")], axis=1)
    uniq = table[table["unique"]]
    mem = uniq["memorized"].to_numpy(bool)
    base = uniq["non_member_match"].to_numpy(bool)
    sides = {}
    if member_texts and non_member_texts:
        rec = records_written(samples, keep, tokens(member_texts) + held_out, ngram, public)
        k = len(member_texts)
        written, testable = rec["written"].to_numpy(), rec["testable"].to_numpy()
        sides = dict(n_member_records=int(testable[:k].sum()), n_member_records_written=int(written[:k].sum()),
                     n_held_out_records=int(testable[k:].sum()), n_held_out_records_written=int(written[k:].sum()),
                     n_member_records_untestable=int((~testable[:k]).sum()),
                     n_held_out_records_untestable=int((~testable[k:]).sum()))
        if per_record is not None:
            per_record.extend(rec.to_dict("records"))
    summary = UntargetedExtraction(
        n_samples=len(table),
        sample_tokens=int(max((len(g) for g in samples.new), default=0)),
        strategies={k: int(v) for k, v in table["strategy"].value_counts().sort_index().items()},
        n_unique=len(uniq),
        verify_ngram=ngram,
        n_memorized=int(mem.sum()),
        n_training_records_reproduced=int(uniq.loc[uniq["memorized"], "train_doc"].nunique()),
        n_in_public=int(uniq["in_public"].sum()),
        n_non_member_matches=int(base.sum()),
        precision_at_k={m: precision_at(mem, uniq[f"score_{m}"].to_numpy(), ks) for m in scores.columns},
        baseline_precision_at_k={m: precision_at(base, uniq[f"score_{m}"].to_numpy(), ks) for m in scores.columns},
        **sides,
    )
    return summary, table
