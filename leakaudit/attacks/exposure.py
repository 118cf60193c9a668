"""Canary exposure (Carlini et al. 2019, The Secret Sharer).

The perplexity of a candidate secret is its summed NLL given the canary's prefix.  A canary's
rank is 1 plus the number of null secrets whose NLL is at most its own; its exposure is
``log2(N) - log2(rank)`` over N null secrets (TF Privacy's interpolation).  The null secrets are
the spec's reference canaries (never inserted) plus ``null_samples`` secrets drawn uniformly
from the randomness space; each canary is ranked against all of them but its own secret, so
the reference canaries' exposures show what exposure looks like for a secret never trained on.

Two more estimates sit beside it.  The skew-normal estimate fits ``scipy.stats.skewnorm`` to the
null NLLs and estimates the rank as ``|R| * CDF(NLL(secret))`` (Carlini et al.'s
``-log2 CDF``), except that the other inserted secrets of the same spec, which lie in the same
space but are not random draws for this model (it was trained on them), are scored and counted
exactly instead of through the fitted tail (:func:`skewnorm_exposure`); clipped to
``[0, log2 |R|]``, it is not capped by the number of null samples; a Kolmogorov-Smirnov test of
the fit is reported with it.  When the space is small enough, :func:`exact_exposure` enumerates
all of it.
"""

from __future__ import annotations

import math
import random

import numpy as np
from scipy.stats import kstest, skewnorm

from leakaudit.canaries.formats import SecretFormat
from leakaudit.canaries.manifest import CanaryManifest
from leakaudit.errors import LeakauditError
from leakaudit.models.target import Target
from leakaudit.report.schema import CanaryResult, ExposureGroup


def _finite(*arrays) -> None:
    """Refuse NaN or infinite NLLs: every comparison with NaN is false, so a NaN secret would rank
    first (the largest exposure) and NaN null secrets would drop out of the count unnoticed."""
    bad = sum(int(np.sum(~np.isfinite(np.asarray(a, dtype=np.float64)))) for a in arrays)
    if bad:
        total = sum(np.asarray(a).size for a in arrays)
        raise LeakauditError(
            f"canary exposure: the model gives NaN or infinite log-likelihoods ({bad} of {total} scored secrets); "
            "its weights or dtype are broken (a diverged training run?), so no exposure can be measured"
        )


def interpolation_exposure(secret_nll: float, null_nll: np.ndarray) -> tuple[float, int]:
    """``(exposure_bits, rank)`` with rank = 1 + #{null <= secret} (ties count against the secret).

    NaN or infinite NLLs raise :class:`LeakauditError` (see :func:`_finite`).
    """
    null = np.asarray(null_nll, dtype=np.float64)
    _finite([secret_nll], null)
    rank = 1 + int(np.sum(null <= secret_nll))
    return float(np.log2(null.size) - np.log2(rank)), rank


def skewnorm_exposure(
    secret_nll: float, null_nll: np.ndarray, space_size: int, known_nll: np.ndarray | None = None
) -> tuple[float, float]:
    """``(exposure_bits, ks_pvalue)`` from a skew-normal fitted to the null NLLs.

    ``known_nll``: NLLs of other secrets of the space scored exactly because they are not like
    random draws for this model (the spec's other inserted secrets and their neighbourhood, see
    :func:`canary_exposures`); the null sample must exclude them.  The estimated rank is
    ``1 + #{known <= secret} + (|R| - 1 - #known) * CDF(NLL(secret))``: the secret itself, the
    known secrets ahead of it, and the fitted share of the rest.  Without known secrets this is
    Carlini et al.'s ``-log2 CDF`` (up to the secret itself, which keeps the estimate at or
    below ``log2 |R|``).  A uniform sample of 10^5-10^9 secrets almost never contains an inserted
    one, so no fitted tail can place them; on the demo's five-digit canaries, ignoring them put a
    rank-3 canary at rank 1, 1.6 bits high.
    """
    null = np.asarray(null_nll, dtype=np.float64)
    known = np.asarray([] if known_nll is None else known_nll, dtype=np.float64)
    _finite([secret_nll], null, known)
    params = skewnorm.fit(null)
    rest = max(space_size - 1 - known.size, 0)  # math.log: spaces of 2^64 and more are Python ints
    log_rank = np.logaddexp(np.log1p(np.sum(known <= secret_nll)),
                            math.log(rest) + float(skewnorm.logcdf(secret_nll, *params)) if rest else -np.inf)
    bits = (math.log(space_size) - log_rank) / math.log(2.0)
    bits = float(np.clip(bits, 0.0, math.log2(space_size)))
    return bits, float(kstest(null, skewnorm(*params).cdf).pvalue)


def exact_exposure(
    target: Target, prefix: str, secret: str, manifest: CanaryManifest, *, chunk: int | None = None
) -> float:
    """``log2|R| - log2 rank`` with rank = #{r in R : NLL(r) <= NLL(secret)}, enumerating R.

    The space is scored in chunks, so memory stays bounded (the tokenized texts of a 10^6 space
    held at once took 19 GB).
    """
    fmt = manifest.spec.secret_format
    return float(np.log2(fmt.space_size) - np.log2(exact_rank(target, prefix, secret, fmt, chunk=chunk)))


def exact_rank(target: Target, prefix: str, secret: str, fmt: SecretFormat, *, chunk: int | None = None) -> int:
    """Number of secrets of the format at least as likely as ``secret`` after ``prefix`` (>= 1).

    ``chunk``: secrets scored per call (default 20,000 on a CPU, where larger chunks gain
    nothing, and 100,000 on a GPU, where each chunk's fixed cost (prefix pass, tokenizer checks,
    short launch-bound passes) is worth spreading).
    """
    chunk = chunk or (100_000 if target.device.type == "cuda" else 20_000)
    starts = list(range(0, fmt.space_size, chunk))

    def prepare(start: int):
        batch = fmt.from_indices(start, min(start + chunk, fmt.space_size))
        return batch, target.tokenize_candidates(prefix, batch)

    values, own = [], None
    for batch, split in _prepared(prepare, starts, overlap=target.device.type == "cuda"):
        values.append(target.secret_nll(prefix, batch, split=split))
        if own is None and secret in batch:  # the secret's own NLL from the same path as its rivals'
            own = values[-1][batch.index(secret)]
    if own is None:  # a secret outside the format's space
        own = target.secret_nll(prefix, [secret])[0]
    every = np.concatenate(values)
    _finite([own], every)
    return max(1, int(np.sum(every <= own + 1e-4)))  # float32 noise counts against


def _prepared(prepare, items: list, *, overlap: bool):
    """``prepare(item)`` for each item in order; with ``overlap``, the next one runs in a thread meanwhile.

    On a GPU the next chunk is enumerated and tokenized (the tokenizer releases the GIL) while
    the model scores this one; on a CPU both would compete for the same cores (slower on 2
    cores), so there they run one after the other.
    """
    if not overlap:
        for item in items:
            yield prepare(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(prepare, items[0]) if items else None
        for k in range(len(items)):
            result = ahead.result()
            if k + 1 < len(items):
                ahead = pool.submit(prepare, items[k + 1])
            yield result


def null_secrets(manifest: CanaryManifest, *, seed: int = 0) -> list[str]:
    """Reference canaries' secrets plus uniform draws from the space, excluding inserted secrets."""
    fmt = manifest.spec.secret_format
    inserted = {c.secret for c in manifest.inserted}
    pool = [c.secret for c in manifest.canaries if not c.inserted]
    seen = set(pool) | inserted
    rng = random.Random(f"{manifest.spec.seed}-{seed}-null")
    want = len(pool) + min(manifest.spec.null_samples, fmt.space_size - len(seen))
    while len(pool) < want:
        s = fmt.sample(rng)
        if s not in seen:
            seen.add(s)
            pool.append(s)
    return pool


NEIGHBOURHOOD_MAX = 25_000


def neighbourhood(fmt: SecretFormat, inserted: list[str], *, cap: int = NEIGHBOURHOOD_MAX) -> list[str]:
    """Secrets that begin like an inserted secret: its first k symbols, k the smallest giving at most
    ``min(cap, 5% of the space)`` secrets; the inserted secrets themselves excluded ([] if no k does).

    A model trained on a canary learns more than the whole secret: on the demo's six-digit
    canaries, 57-62% of the secrets ranked ahead of mid-exposure canaries began with the same
    three digits as another inserted secret, against 3% of random secrets.  Those secrets form a
    cluster in the likely tail that a smooth fit to uniform samples cannot see, so the
    skew-normal estimate scores them exactly.
    """
    inserted = [s for s in inserted if fmt.contains(s)]  # a hand-edited secret outside the format has none
    if not inserted or cap <= 0:
        return []
    base, limit = len(fmt.alphabet), min(cap, 0.05 * fmt.space_size)
    for k in range(1, fmt.length):
        heads = {fmt.index(s) // base ** (fmt.length - k) for s in inserted}
        if len(heads) * base ** (fmt.length - k) <= limit:
            skip = {fmt.from_index(fmt.index(s)) for s in inserted}  # as rendered (separators included)
            return [s for s in fmt.sharing_prefix(inserted, k) if s not in skip]
    return []


def canary_exposures(
    target: Target, manifest: CanaryManifest, *, seed: int = 0, exact_max: int = 0,
    neighbourhood_max: int = NEIGHBOURHOOD_MAX,
) -> list[CanaryResult]:
    """Exposure of every canary (inserted and reference) of one manifest under ``target``.

    ``exact_max``: enumerate the whole space for the exact exposure when it has at most this
    many secrets (0: never).  ``neighbourhood_max``: for the skew-normal estimate, the most
    secrets the inserted secrets' :func:`neighbourhood` (over all of them) may hold; each canary
    scores all of it exactly (0: none).
    """
    fmt = manifest.spec.secret_format
    space = fmt.space_size
    pool = null_secrets(manifest, seed=seed)
    in_pool = set(pool)
    by_prefix: dict[str, list] = {}
    for c in manifest.canaries:
        by_prefix.setdefault(c.prefix, []).append(c)
    out: dict[str, CanaryResult] = {}
    inserted = list(dict.fromkeys(c.secret for c in manifest.inserted))
    near = neighbourhood(fmt, inserted, cap=neighbourhood_max)
    near_set = set(near)
    for prefix, group in by_prefix.items():
        extra = [s for s in dict.fromkeys([c.secret for c in group] + inserted + near) if s not in in_pool]
        nll = target.secret_nll(prefix, pool + extra)
        null_nll = dict(zip(pool + extra, nll))
        pool_nll = nll[: len(pool)]
        near_nll = np.array([null_nll[s] for s in near])
        for c in group:
            others = pool_nll[np.array([s != c.secret for s in pool])]
            bits, rank = interpolation_exposure(null_nll[c.secret], others)
            # the fit sees the uniform sample outside the neighbourhood; inserted and nearby secrets are counted
            fit = pool_nll[np.array([s != c.secret and s not in near_set for s in pool])]
            known = np.concatenate([[null_nll[s] for s in inserted if s != c.secret],
                                    near_nll[np.array([s != c.secret for s in near], dtype=bool)]])
            skew, ks = skewnorm_exposure(null_nll[c.secret], fit, space, known)
            exact = exact_exposure(target, prefix, c.secret, manifest) if 0 < space <= exact_max else None
            out[c.id] = CanaryResult(
                id=c.id, spec=manifest.spec.name, repetitions=c.repetitions, inserted=c.inserted,
                exposure_bits=bits, rank=rank, exposure_bits_skewnorm=skew,
                skewnorm_ks_pvalue=ks, exposure_bits_exact=exact,
            )
    return [out[c.id] for c in manifest.canaries]


def exposure_groups(results: list[CanaryResult]) -> list[ExposureGroup]:
    """Exposure and extraction summary per spec and repetition count (0 = reference canaries)."""
    groups: dict[tuple[str, int], list[CanaryResult]] = {}
    for r in results:
        groups.setdefault((r.spec, r.repetitions), []).append(r)
    return [ExposureGroup.of(rs, spec=spec, repetitions=reps) for (spec, reps), rs in sorted(groups.items())]
