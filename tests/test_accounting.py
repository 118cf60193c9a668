"""Epsilons cross-checked against Google's independent ``dp_accounting`` package.

Opacus's RDP accountant against dp_accounting's RDP accountant (same bound: within 1%),
and Opacus's PRV accountant against dp_accounting's PLD accountant (two numerical
approximations of the same tight privacy curve: within 3%).  Checked for the reference
point of METHODS.md section 6 and for the privacy records that training actually writes.
"""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from leakaudit.models import build_model
from leakaudit.train.loop import DPSettings, TrainSettings, train_model

dp_accounting = pytest.importorskip("dp_accounting")


def _event(sigma: float, q: float, steps: int):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


def dpa_rdp(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(_event(sigma, q, steps))
    return acc.get_epsilon(delta)


def dpa_pld(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(_event(sigma, q, steps))
    return acc.get_epsilon(delta)


def opacus_eps(kind: str, sigma: float, q: float, steps: int, delta: float) -> float:
    acc = RDPAccountant() if kind == "rdp" else PRVAccountant()
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(delta)


REF = dict(sigma=1.0, q=0.01, steps=1000, delta=1e-5)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_reference_point_rdp():
    ours, theirs = opacus_eps("rdp", **REF), dpa_rdp(**REF)
    assert ours == pytest.approx(theirs, rel=0.01)
    assert ours == pytest.approx(2.1014, abs=2e-3)  # METHODS.md section 6


def test_reference_point_prv_against_pld():
    ours, theirs = opacus_eps("prv", **REF), dpa_pld(**REF)
    assert ours == pytest.approx(theirs, rel=0.03)
    assert ours == pytest.approx(1.8384, abs=5e-3)
    assert theirs == pytest.approx(1.8282, abs=5e-3)


@pytest.fixture(scope="module")
def texts(corpora):
    return [r["text"][:80] for r in corpora[0][:40]]


def _dp_record(tokenizer, texts, dp: DPSettings):
    model = build_model(tokenizer, arch="llama", n_layer=1, n_embd=16, n_head=2, context=64)
    return train_model(model, tokenizer, texts, TrainSettings(epochs=2, batch_size=5, max_length=32), dp=dp)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_recorded_epsilon_recomputed_independently(accountant, tokenizer, texts):
    rec = _dp_record(tokenizer, texts, DPSettings(randomness="seeded", target_epsilon=3.0, accountant=accountant))
    assert rec.accountant == accountant and rec.steps == 16 and rec.sample_rate == pytest.approx(1 / 8)
    assert rec.delta == pytest.approx(min(1e-5, 1 / (10 * len(texts))))
    assert rec.epsilon == pytest.approx(3.0, rel=0.02) and rec.epsilon <= 3.0 + 1e-6
    args = (rec.noise_multiplier, rec.sample_rate, rec.steps, rec.delta)
    assert rec.epsilon == pytest.approx(opacus_eps(accountant, *args), rel=1e-6)
    if accountant == "rdp":
        assert rec.epsilon == pytest.approx(dpa_rdp(*args), rel=0.01)
    else:
        assert rec.epsilon == pytest.approx(dpa_pld(*args), rel=0.03)


def test_noise_multiplier_path_reports_the_accountants_epsilon(tokenizer, texts):
    dp = DPSettings(randomness="seeded", noise_multiplier=1.3, delta=1e-6, accountant="prv")
    rec = _dp_record(tokenizer, texts, dp)
    assert rec.noise_multiplier == 1.3 and rec.delta == 1e-6 and rec.steps == 16
    assert rec.epsilon == pytest.approx(dpa_pld(1.3, rec.sample_rate, rec.steps, 1e-6), rel=0.03)


@pytest.mark.parametrize("mode", ["hooks", "bookkeeping"])
def test_prv_out_of_memory_falls_back_to_rdp_before_training(tokenizer, texts, monkeypatch, mode):
    """PRV's grid grows as the noise shrinks (at sigma 0.05, q 0.05, 1,000 steps it asked for 28 GiB): the
    accountant is chosen before training, so a run never dies at its end for want of an eps."""
    from leakaudit.train import loop

    loop._epsilon.cache_clear()

    def out_of_memory(self, delta, **kw):
        raise MemoryError("Unable to allocate 28.5 GiB")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", out_of_memory)
    trained = []
    real = loop._run
    monkeypatch.setattr(loop, "_run", lambda *a, **k: (trained.append(True), real(*a, **k))[1])
    for dp in (DPSettings(randomness="seeded", noise_multiplier=0.8, accountant="prv", grad_sample_mode=mode),
               DPSettings(randomness="seeded", target_epsilon=3.0, accountant="prv", grad_sample_mode=mode)):
        with pytest.warns(RuntimeWarning, match="PRV accountant ran out of memory"):
            rec = _dp_record(tokenizer, texts, dp)
        assert rec.accountant == "rdp" and trained
        args = (rec.noise_multiplier, rec.sample_rate, rec.steps, rec.delta)
        assert rec.epsilon == pytest.approx(opacus_eps("rdp", *args), rel=1e-6)
    loop._epsilon.cache_clear()


def test_a_run_whose_accountant_saw_other_steps_is_refused():
    from leakaudit.train.loop import _record_steps

    dp = DPSettings(noise_multiplier=1.0, accountant="rdp")
    with pytest.raises(RuntimeError, match="recorded 15 steps"):
        _record_steps(TrainSettings(), dp, 40, [(1.0, 0.125, 15)], delta=1e-5, sigma=1.0, q=0.125, total=16,
                      accountant="rdp")
    with pytest.raises(RuntimeError, match="planned 16 at noise 1"):
        _record_steps(TrainSettings(), dp, 40, [(1.0, 0.125, 8), (0.5, 0.125, 8)], delta=1e-5, sigma=1.0, q=0.125,
                      total=16, accountant="rdp")
    rec = _record_steps(TrainSettings(), dp, 40, [(1.0, 0.125, 16)], delta=1e-5, sigma=1.0, q=0.125, total=16,
                        accountant="rdp")
    assert rec.epsilon == pytest.approx(opacus_eps("rdp", 1.0, 0.125, 16, 1e-5), rel=1e-9)
