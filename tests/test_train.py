"""Plain and DP-SGD training: per-sequence losses, the privacy record, saving and loading."""

import copy

import numpy as np
import pytest
import torch

from leakaudit.models import Target, load_model
from leakaudit.models.tokenize import encode
from leakaudit.train import DPSettings, TrainSettings, save_trained, sequence_losses, train_model


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
    dp = DPSettings(target_epsilon=4.0, max_grad_norm=0.5)
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


def test_rdp_epsilon_matches_dp_accounting(gpt2, tokenizer, corpora):
    """The reported eps recomputed with Google's dp-accounting (an independent RDP accountant)."""
    dp_accounting = pytest.importorskip("dp_accounting")
    model = copy.deepcopy(gpt2)
    texts = [r["text"] for r in corpora[0]]
    dp = DPSettings(target_epsilon=3.0, accountant="rdp", delta=1e-5)
    rec = train_model(model, tokenizer, texts, TrainSettings(epochs=2, batch_size=12, lr=1e-3), dp=dp)
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rec.sample_rate, dp_accounting.GaussianDpEvent(rec.noise_multiplier)),
        rec.steps,
    )
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(event)
    assert rec.epsilon == pytest.approx(acc.get_epsilon(rec.delta), rel=0.01)
