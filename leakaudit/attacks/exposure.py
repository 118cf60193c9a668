"""Canary exposure (Carlini et al. 2019, The Secret Sharer).

The perplexity of a candidate secret is its summed NLL given the canary's prefix.  A canary's
rank is 1 plus the number of null secrets whose NLL is at most its own; its exposure is
``log2(N) - log2(rank)`` over N null secrets (TF Privacy's interpolation).  The null secrets are
the spec's reference canaries (never inserted) plus ``null_samples`` secrets drawn uniformly
from the randomness space; each canary is ranked against all of them but its own secret, so
the reference canaries' exposures show what exposure looks like for a secret never trained on.
"""

from __future__ import annotations

import random

import numpy as np

from leakaudit.canaries.manifest import CanaryManifest
from leakaudit.models.target import Target
from leakaudit.report.schema import CanaryResult, ExposureGroup


def interpolation_exposure(secret_nll: float, null_nll: np.ndarray) -> tuple[float, int]:
    """``(exposure_bits, rank)`` with rank = 1 + #{null <= secret} (ties count against the secret)."""
    null = np.asarray(null_nll, dtype=np.float64)
    rank = 1 + int(np.sum(null <= secret_nll))
    return float(np.log2(null.size) - np.log2(rank)), rank


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


def canary_exposures(target: Target, manifest: CanaryManifest, *, seed: int = 0) -> list[CanaryResult]:
    """Exposure of every canary (inserted and reference) of one manifest under ``target``."""
    pool = null_secrets(manifest, seed=seed)
    by_prefix: dict[str, list] = {}
    for c in manifest.canaries:
        by_prefix.setdefault(c.prefix, []).append(c)
    out: dict[str, CanaryResult] = {}
    for prefix, group in by_prefix.items():
        own = [c.secret for c in group if c.secret not in set(pool)]
        nll = target.secret_nll(prefix, pool + own)
        null_nll = dict(zip(pool + own, nll))
        pool_nll = nll[: len(pool)]
        for c in group:
            others = pool_nll[np.array([s != c.secret for s in pool])]
            bits, rank = interpolation_exposure(null_nll[c.secret], others)
            out[c.id] = CanaryResult(
                id=c.id, spec=manifest.spec.name, repetitions=c.repetitions, inserted=c.inserted,
                exposure_bits=bits, rank=rank, sha256=c.sha256,
            )
    return [out[c.id] for c in manifest.canaries]


def exposure_groups(results: list[CanaryResult]) -> list[ExposureGroup]:
    """Median, mean and max exposure per spec and repetition count (0 = reference canaries)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in results:
        groups.setdefault((r.spec, r.repetitions), []).append(r.exposure_bits)
    return [
        ExposureGroup(
            spec=k[0], repetitions=k[1], n=len(v), median_exposure_bits=float(np.median(v)),
            mean_exposure_bits=float(np.mean(v)), max_exposure_bits=float(np.max(v)),
        )
        for k, v in sorted(groups.items())
    ]
