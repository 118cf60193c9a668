"""Plain and DP-SGD training: per-sequence losses, the privacy record, saving and loading."""

import copy
import math

import numpy as np
import pytest
import torch

from leakaudit.models import Target, build_model, load_model
from leakaudit.models.tokenize import encode
from leakaudit.train import DPSettings, TrainSettings, save_trained, sequence_losses, train_model
from leakaudit.train.loop import LoraSettings, matched_settings

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sequence_losses_ignore_padding(gpt2, tokenizer, corpora):
    texts = [r["text"] for r in corpora[0][:4]] + ["short one"]
    enc = encode(tokenizer, texts, add_eos=True)
    width = max(len(e.ids) for e in enc) + 7
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    with torch.no_grad():
        batched = sequence_losses(gpt2, ids, mask)
        for i, e in enumerate(enc):
            single = sequence_losses(gpt2, torch.tensor([e.ids]), torch.ones(1, len(e.ids), dtype=torch.long))
            assert batched[i].item() == pytest.approx(single.item(), abs=1e-5)


def test_plain_training_lowers_the_loss_on_its_data(gpt2, tokenizer, corpora):
    model = copy.deepcopy(gpt2)
    texts = [r["text"] for r in corpora[0][:16]]
    before = np.mean([x.mean() for x in Target(model, tokenizer).score(texts)])
    rec = train_model(model, tokenizer, texts, TrainSettings(epochs=3, batch_size=8, lr=3e-3))
    after = np.mean([x.mean() for x in Target(model, tokenizer).score(texts)])
    assert after > before + 0.2
    assert rec.epsilon is None and rec.steps == 6


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_dp_training_reaches_its_epsilon_and_the_model_generates(request, tokenizer, corpora, tmp_path, arch):
    model = copy.deepcopy(request.getfixturevalue(arch))
    texts = [r["text"] for r in corpora[0]]
    dp = DPSettings(randomness="seeded", target_epsilon=4.0, max_grad_norm=0.5)
    rec = train_model(model, tokenizer, texts, TrainSettings(epochs=1, batch_size=16, lr=1e-3), dp=dp)
    assert rec.epsilon == pytest.approx(4.0, rel=0.02) and rec.epsilon <= 4.0 + 1e-6
    assert rec.delta == pytest.approx(min(1e-5, 1 / (10 * len(texts))))
    assert rec.noise_multiplier > 0 and rec.accountant == "prv" and rec.max_grad_norm == 0.5
    assert rec.sample_rate == pytest.approx(16 / len(texts), rel=0.2)
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())
    save_trained(model, tokenizer, tmp_path, rec)
    assert (tmp_path / "privacy.json").is_file() and list(tmp_path.glob("*.safetensors"))
    loaded = load_model(tmp_path)
    x = torch.tensor([encode(loaded.tokenizer, ["Ticket #"])[0].ids])
    out = loaded.model.generate(x, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == x.shape[1] + 5


def test_dp_settings_take_exactly_one_of_epsilon_and_noise():
    with pytest.raises(ValueError, match="exactly one"):
        DPSettings()
    with pytest.raises(ValueError, match="exactly one"):
        DPSettings(target_epsilon=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="flat"):
        DPSettings(noise_multiplier=1.0, grad_sample_mode="ghost", clipping="per_layer")
    assert DPSettings(noise_multiplier=0.7).grad_sample_mode == "hooks"


def test_steps_override_epochs(gpt2, tokenizer, corpora):
    model = copy.deepcopy(gpt2)
    texts = [r["text"] for r in corpora[0][:10]]
    calls = []
    rec = train_model(
        model, tokenizer, texts, TrainSettings(epochs=5, steps=7, batch_size=4, max_length=32),
        progress=lambda s, t, loss: calls.append((s, t)),
    )
    # fixed steps take full batches: 7 x 4 records over 10 (before: 7 steps of 3 batches an epoch, one of 2)
    assert rec.steps == 7 and calls[-1] == (7, 7) and rec.epochs == pytest.approx(7 * 4 / 10)


def test_matched_plain_run_takes_the_dp_runs_steps_and_batch(tokenizer, corpora, monkeypatch):
    texts = [r["text"] for r in corpora[0][:30]]
    dp_settings = TrainSettings(epochs=2, batch_size=8, lr=1e-3, max_length=32)
    model = build_model(tokenizer, arch="llama", n_layer=1, n_embd=16, n_head=2, context=64)
    rec = train_model(model, tokenizer, texts, dp_settings, dp=DPSettings(randomness="seeded", noise_multiplier=1.0))
    assert rec.sample_rate == pytest.approx(1 / 4) and rec.steps == 8
    plain = matched_settings(rec, len(texts), base=dp_settings)
    assert plain.steps == 8 and plain.batch_size == 8 and plain.lr == dp_settings.lr  # round(30 / 4)
    assert matched_settings(dp_settings, len(texts)) == plain
    from leakaudit.train import loop

    sizes, step_fn = [], loop._backward_step

    def counting(*a, **k):
        step = step_fn(*a, **k)
        return lambda x, m: (sizes.append(len(x)), step(x, m))[1]

    monkeypatch.setattr(loop, "_backward_step", counting)
    plain_rec = train_model(copy.deepcopy(model), tokenizer, texts, plain)
    assert plain_rec.steps == rec.steps and plain_rec.epsilon is None
    # full batches only: 30 records in batches of 8 left a batch of 6 each epoch
    assert sizes == [8] * 8 and plain_rec.epochs == pytest.approx(8 * 8 / 30)
    # Poisson rate 1 / ceil(N / b): 30 records in batches of 7 give q = 1/5, an expected batch of 6
    assert matched_settings(TrainSettings(epochs=1, batch_size=7), 30).model_dump(include={"steps", "batch_size"}) == {
        "steps": 5, "batch_size": 6,
    }


def test_plain_lora_training_merges_into_a_plain_model(llama, tokenizer, corpora, tmp_path):
    model = copy.deepcopy(llama)
    texts = [r["text"] for r in corpora[0][:8]]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(epochs=1, batch_size=4, max_length=32, lr=1e-2, lora=LoraSettings(r=2))
    rec = train_model(model, tokenizer, texts, settings)
    assert rec.steps == 2 and set(model.state_dict()) == set(before) and rec.lora_rank == 2  # as a DP run records
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("proj" in k for k in changed)
    save_trained(model, tokenizer, tmp_path, rec)
    assert load_model(tmp_path).model.state_dict().keys() == before.keys()


def test_adaptive_clipping_counts_every_piece_of_a_split_batch(gpt2, tokenizer, corpora):
    """Opacus resets the unclipped count at every zero_grad: split into pieces, only the last piece counted
    and the clip bound drifted up when it should fall. Now split and unsplit runs move the bound alike."""
    texts = [r["text"] for r in corpora[0][:40]]
    dp = DPSettings(noise_multiplier=0.5, max_grad_norm=100.0, clipping="adaptive", randomness="seeded")
    bounds = {}
    for physical in (None, 2):
        model = copy.deepcopy(gpt2)
        s = TrainSettings(steps=4, batch_size=8, lr=1e-3, max_length=48, max_physical_batch_size=physical)
        from leakaudit.train import loop

        seen = []
        cls = loop._adaptive_optimizer_class()
        original = cls.update_max_grad_norm

        def spy(self, original=original, seen=seen):
            original(self)
            seen.append(self.max_grad_norm)

        cls.update_max_grad_norm = spy
        try:
            train_model(model, tokenizer, texts, s, dp=dp)
        finally:
            cls.update_max_grad_norm = original
        bounds[physical] = seen
    # nothing is clipped at norm 100: the count is near the batch, so the bound falls in both runs, equally
    assert len(bounds[None]) == len(bounds[2]) == 4
    assert bounds[None][-1] < 100.0 and bounds[2][-1] < 100.0
    assert bounds[2] == pytest.approx(bounds[None], rel=1e-6)


def test_adaptive_clipping_releases_the_centred_count(gpt2, tokenizer, corpora):
    """The noisy count must be sum_i (b_i - 1/2) (sensitivity 1/2), the one Opacus's noise split assumes; the
    plain count of unclipped examples (sensitivity 1) made the run less private than its record says."""
    from leakaudit.train import loop

    texts = [r["text"] for r in corpora[0][:40]]
    # almost no noise, nothing clipped at norm 100: every b_i is 1
    dp = DPSettings(noise_multiplier=1e-3, unclipped_num_std=1e-3, max_grad_norm=100.0, clipping="adaptive",
                    randomness="seeded", accountant="rdp")  # (PRV's grid for a noise this small would not fit)
    s = TrainSettings(steps=4, batch_size=8, lr=1e-3, max_length=48)
    cls = loop._adaptive_optimizer_class()
    original, seen = cls.update_max_grad_norm, []

    def spy(self):
        seen.append((float(self.unclipped_num), self.sample_size, self.max_grad_norm))
        original(self)
        seen[-1] += (self.max_grad_norm,)

    cls.update_max_grad_norm = spy
    try:
        train_model(copy.deepcopy(gpt2), tokenizer, texts, s, dp=dp)
    finally:
        cls.update_max_grad_norm = original
    assert len(seen) == 4 and len({n for _, n, _, _ in seen}) > 1  # Poisson batches of several sizes
    expected = 8  # 40 records, batch 8: q = 1/5
    for count, n, before, after in seen:
        assert count == pytest.approx(n / 2, abs=0.05)  # n unclipped examples, centred
        frac = count / expected + 0.5
        assert after == pytest.approx(before * math.exp(-0.2 * (frac - 0.5)), rel=1e-6)


def test_secret_randomness_draws_batches_nobody_can_repeat(gpt2, tokenizer, corpora, monkeypatch):
    """Opacus's Poisson sampler draws from the loader's generator; it was the training seed's, so the batches of
    a 'secret' run could be rebuilt from the recorded seed. Seeded runs still repeat their batches exactly."""
    from leakaudit.train import loop

    texts = [r["text"] for r in corpora[0][:24]]
    s = TrainSettings(steps=6, batch_size=8, lr=1e-3, max_length=32)
    real = loop.sequence_losses
    batches: list = []

    def spy(net, ids, mask):
        batches.append(tuple(sorted(ids.sum(1).tolist())))  # which records (by their token sums), in any order
        return real(net, ids, mask)

    monkeypatch.setattr(loop, "sequence_losses", spy)

    def drawn(randomness, mode):
        batches.clear()
        train_model(copy.deepcopy(gpt2), tokenizer, texts, s,
                    dp=DPSettings(noise_multiplier=1.0, randomness=randomness, grad_sample_mode=mode))
        return list(batches)

    for mode in ("hooks", "bookkeeping"):
        assert drawn("secret", mode) != drawn("secret", mode), mode
        assert drawn("seeded", mode) == drawn("seeded", mode), mode


def test_a_batch_of_one_trains_without_nan(gpt2, tokenizer, corpora):
    """N = 49, batch 1: Opacus's int(N q) is 0 (49 * (1/49) lands below 1), which divided the update by zero."""
    texts = [r["text"] for r in corpora[0][:49]]
    for mode in ("hooks", "bookkeeping"):
        model = copy.deepcopy(gpt2)
        train_model(model, tokenizer, texts, TrainSettings(steps=3, batch_size=1, lr=1e-3, max_length=32),
                    dp=DPSettings(randomness="seeded", noise_multiplier=1.0, grad_sample_mode=mode))
        assert all(torch.isfinite(p).all() for p in model.parameters()), mode


def test_a_delta_not_below_one_over_n_is_refused(gpt2, tokenizer, corpora):
    from leakaudit.errors import LeakauditError

    texts = [r["text"] for r in corpora[0][:20]]
    with pytest.raises(LeakauditError, match=r"DP delta 0.05 is not below 1/N = 0.05 \(N = 20 training records\)"):
        train_model(copy.deepcopy(gpt2), tokenizer, texts, TrainSettings(steps=1, batch_size=4, max_length=32),
                    dp=DPSettings(noise_multiplier=1.0, delta=0.05))


def test_dp_randomness_is_secret_unless_seeded(gpt2, tokenizer, corpora):
    """The guarantee assumes nobody can predict the batches or the noise: by default two runs with the same
    seed differ; seeded runs repeat exactly (and say so in their record)."""
    from leakaudit.train.loop import expected_batch

    texts = [r["text"] for r in corpora[0][:24]]
    s = TrainSettings(steps=2, batch_size=8, lr=1e-3, max_length=32)

    def weights(randomness):
        model = copy.deepcopy(gpt2)
        rec = train_model(model, tokenizer, texts, s, dp=DPSettings(noise_multiplier=1.0, randomness=randomness))
        assert rec.randomness == randomness
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert not torch.equal(weights("secret"), weights("secret"))
    assert torch.equal(weights("seeded"), weights("seeded"))
    assert DPSettings(noise_multiplier=1.0).randomness == "secret"
    # demos and experiments repeat exactly unless their configuration says otherwise
    from leakaudit.config import resolve_config

    assert resolve_config(preset="tiny").dp.randomness == "seeded"
    assert resolve_config(preset="cpu", overrides={"dp": {"target_epsilon": 3}}).dp.randomness == "seeded"
    assert resolve_config(preset="tiny", overrides={"dp": {"randomness": "secret"}}).dp.randomness == "secret"
    assert [expected_batch(n, 1 / -(-n // b)) for n, b in ((49, 1), (98, 2), (40, 30))] == [1, 2, 20]


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_logical_batches_split_into_physical_pieces_give_the_same_model(gpt2, tokenizer, corpora, mode):
    """BatchMemoryManager: pieces of at most 3 examples, one step per logical batch, the same result.

    The same Poisson draws, the same clipped per-example gradients summed in pieces and the same
    noise: the weights agree with an unsplit run to float rounding, and the step count is the
    logical one.
    """
    texts = [r["text"] for r in corpora[0][:40]]
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=0.5, grad_sample_mode=mode, randomness="seeded")
    out = {}
    for physical in (None, 3):
        model = copy.deepcopy(gpt2)
        steps: list[int] = []
        s = TrainSettings(steps=4, batch_size=12, lr=1e-3, max_length=48, max_physical_batch_size=physical)
        rec = train_model(model, tokenizer, texts, s, dp=dp, progress=lambda step, *_, seen=steps: seen.append(step))
        assert rec.steps == 4 and steps == [1, 2, 3, 4]
        out[physical] = (torch.cat([p.detach().flatten() for p in model.parameters()]), rec.epsilon)
    assert out[None][1] == pytest.approx(out[3][1])
    moved = (out[None][0] - torch.cat([p.detach().flatten() for p in gpt2.parameters()])).abs().max()
    assert moved > 1e-4  # training did change the weights
    torch.testing.assert_close(out[3][0], out[None][0], atol=1e-5, rtol=1e-4)


def test_texts_longer_than_the_models_context_are_cut_there_with_a_warning(gpt2, tokenizer):
    model = copy.deepcopy(gpt2)
    context = model.config.n_positions
    long_text = " ".join(["account recovery code"] * context)  # far more tokens than positions
    assert len(tokenizer(long_text)["input_ids"]) > context
    with pytest.warns(UserWarning, match=rf"1 sequence\(s\) truncated at {context} tokens"):
        train_model(model, tokenizer, [long_text, "a short one"],
                    TrainSettings(epochs=1, batch_size=2, max_length=10 * context))
