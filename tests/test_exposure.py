"""Exposure arithmetic against TF Privacy's interpolation definition, and on a model."""

import math

import numpy as np
import pytest

from leakaudit.attacks import canary_exposures, exposure_groups, interpolation_exposure
from leakaudit.attacks.exposure import null_secrets
from leakaudit.canaries import generate_canaries, load_spec
from leakaudit.models import Target
from tests.conftest import TINY_SPEC


def _tf_privacy_interpolation(perplexities: dict, reference: np.ndarray) -> dict:
    """TF Privacy's compute_exposure_interpolation, re-derived from its definition:
    rank = 1 + #{references with perplexity <= the canary's}, exposure = log2(N / rank)."""
    n = len(reference)
    return {r: np.array([math.log2(n / (1 + np.sum(reference <= p))) for p in ps]) for r, ps in perplexities.items()}


def test_interpolation_hand_made_inputs_with_ties():
    ref = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert interpolation_exposure(0.5, ref) == (3.0, 1)  # below every reference: log2 8
    assert interpolation_exposure(2.0, ref) == (pytest.approx(math.log2(8 / 4)), 4)  # ties count against
    assert interpolation_exposure(9.0, ref)[1] == 9
    expected = _tf_privacy_interpolation({1: np.array([0.5, 2.0, 9.0])}, ref)[1]
    got = [interpolation_exposure(p, ref)[0] for p in [0.5, 2.0, 9.0]]
    np.testing.assert_allclose(got, expected)


def test_null_secrets_exclude_inserted_and_include_references():
    m = generate_canaries(load_spec(TINY_SPEC))
    pool = null_secrets(m)
    assert len(pool) == len(set(pool)) == m.spec.reference_canaries + m.spec.null_samples
    assert not {c.secret for c in m.inserted} & set(pool)
    assert {c.secret for c in m.canaries if not c.inserted} <= set(pool)
    assert pool == null_secrets(m)


def test_exposures_on_an_untrained_model_look_like_chance(gpt2, tokenizer):
    m = generate_canaries(load_spec(TINY_SPEC))
    res = canary_exposures(Target(gpt2, tokenizer), m)
    assert [r.id for r in res] == [c.id for c in m.canaries]
    cap = math.log2(len(null_secrets(m)))
    bits = np.array([r.exposure_bits for r in res])
    assert (bits <= cap + 1e-9).all()
    assert np.median(bits) < 4  # a model that never saw a canary gives no canary a high rank
    groups = exposure_groups(res)
    assert {g.repetitions for g in groups} == {0, 1, 4, 16, 32}
    assert sum(g.n for g in groups) == len(res)
