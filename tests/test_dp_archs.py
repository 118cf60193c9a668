"""DP-SGD (Opacus) fine-tuning on the six supported architectures, full and LoRA, on the CPU.

Tiny models (2 layers, width 32) and short texts of varied lengths, so batches are padded
and the inputs are column slices of wider tensors (the case that broke ghost clipping).
"""

from __future__ import annotations

import math

import pytest
import torch

from leakaudit.models import build_model, load_model
from leakaudit.models.tiny import ARCHS
from leakaudit.models.tokenize import encode
from leakaudit.train import loop
from leakaudit.train.loop import (
    DPSettings,
    LoraSettings,
    TrainSettings,
    apply_lora,
    merge_lora,
    save_trained,
    sequence_losses,
    train_model,
)
from tests.conftest import padded_batch

SETTINGS = TrainSettings(epochs=1, batch_size=8, lr=5e-3, max_length=48)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def texts(corpora):
    # 32 records cut to 40-100 characters: sequences of different lengths, all shorter than max_length
    return [r["text"][: 40 + (7 * i) % 61] for i, r in enumerate(corpora[0][:32])]


def _tiny(tokenizer, arch):
    return build_model(tokenizer, arch=arch, n_layer=2, n_embd=32, n_head=2, context=128, seed=1)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _batch(tokenizer, texts):
    return padded_batch(tokenizer, texts, extra=5)  # wider than needed: sequence_losses slices columns


def _check_saved_model_generates(model, tokenizer, record, out_dir):
    save_trained(model, tokenizer, out_dir, record)
    names = set()
    from safetensors import safe_open

    for f in out_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            names |= set(st.keys())
    assert names and not any("lora" in n for n in names)
    loaded = load_model(out_dir)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    x = torch.tensor([encode(loaded.tokenizer, ["Hello, I"])[0].ids])
    out = loaded.model.generate(x, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == x.shape[1] + 4


@pytest.mark.parametrize("arch", ARCHS)
def test_dp_full_fine_tuning(arch, tokenizer, texts, tmp_path):
    model = _tiny(tokenizer, arch)
    before = _snapshot(model)
    losses = []
    rec = train_model(
        model, tokenizer, texts, SETTINGS, dp=DPSettings(randomness="seeded", noise_multiplier=1.0, max_grad_norm=1.0),
        progress=lambda s, t, loss: losses.append(loss),
    )
    assert losses and all(math.isfinite(x) for x in losses)
    assert rec.steps == 4 and rec.noise_multiplier == 1.0 and rec.sample_rate == 0.25
    assert math.isfinite(rec.epsilon) and rec.epsilon > 0
    after = model.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"weights not trained: {unchanged}"
    assert all(p.requires_grad for p in model.parameters())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    _check_saved_model_generates(model, tokenizer, rec, tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_dp_lora_trains_only_the_adapters(arch, tokenizer, texts, tmp_path):
    model = _tiny(tokenizer, arch)
    before = _snapshot(model)
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8))
    adapters = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    losses = []
    rec = train_model(
        peft_model, tokenizer, texts, SETTINGS, dp=DPSettings(randomness="seeded", noise_multiplier=1.0),
        progress=lambda s, t, loss: losses.append(loss),
    )
    assert losses and all(math.isfinite(x) for x in losses)
    params = dict(peft_model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in base.items()), "a frozen base weight moved"
    assert all(not torch.equal(params[n], v) for n, v in adapters.items()), "an adapter did not train"
    merged = merge_lora(peft_model)
    assert merged is model
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    targets = set(loop.LORA_TARGETS[arch])
    assert changed and all(k.split(".")[-2] in targets and k.endswith("weight") for k in changed), changed
    assert all(p.requires_grad for p in model.parameters())
    _check_saved_model_generates(model, tokenizer, rec, tmp_path)


@pytest.mark.parametrize("arch", ["gpt2", "opt", "gpt_neox"])
def test_lora_settings_merge_in_train_model(arch, tokenizer, texts):
    model = _tiny(tokenizer, arch)
    before = _snapshot(model)
    head = model.get_output_embeddings().weight.detach().clone()
    settings = SETTINGS.model_copy(update={"lora": LoraSettings(r=2)})
    train_model(model, tokenizer, texts, settings, dp=DPSettings(randomness="seeded", noise_multiplier=1.0))
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert set(model.state_dict()) == set(before)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(head, model.get_output_embeddings().weight)


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("arch", ARCHS)
def test_per_sample_gradients_are_each_examples_own(arch, lora, tokenizer, texts):
    """Opacus's per-sample gradients (hooks mode, with our OPT adapters) equal each example's gradient alone."""
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    model = _tiny(tokenizer, arch)
    net = apply_lora(model, LoraSettings(r=2, target_modules=None)) if lora else model
    if lora:  # B starts at zero, which would make A's gradient vanish: give the adapters weights
        with torch.no_grad():
            for n, p in net.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    ids, mask = _batch(tokenizer, texts[:3])
    with loop._dp_compatible(net):
        gsm = GradSampleModule(net)
        sequence_losses(gsm, ids, mask).mean().backward()
        per_sample = [p.grad_sample.detach().clone() for p in params]
        gsm.to_standard_module()
        loop._clean_opacus_attributes(net)
        net.zero_grad(set_to_none=True)
        ghost = GradSampleModuleFastGradientClipping(net, max_grad_norm=1.0)
        sequence_losses(ghost, ids, mask).mean().backward()
        ghost_norms = ghost.get_norm_sample().detach().clone()
        ghost.to_standard_module()
        loop._clean_opacus_attributes(net)
    for i in range(3):
        net.zero_grad(set_to_none=True)
        n = int(mask[i].sum())
        sequence_losses(net, ids[i : i + 1, :n], mask[i : i + 1, :n]).sum().backward()
        for p, g in zip(params, per_sample):
            torch.testing.assert_close(g[i], p.grad, atol=1e-5, rtol=1e-4)
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
        assert ghost_norms[i].item() == pytest.approx(norm.item(), rel=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ghost_clipping_trains_with_padded_batches(arch, tokenizer, texts, tmp_path):
    model = _tiny(tokenizer, arch)
    before = _snapshot(model)
    settings = SETTINGS.model_copy(update={"max_length": 128})  # longer than every text: padded batches
    ghost = DPSettings(randomness="seeded", noise_multiplier=1.0, grad_sample_mode="ghost")
    rec = train_model(model, tokenizer, texts, settings, dp=ghost)
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    _check_saved_model_generates(model, tokenizer, rec, tmp_path)


@pytest.mark.parametrize(
    "dp",
    [
        DPSettings(randomness="seeded", noise_multiplier=1.0, clipping="per_layer"),
        DPSettings(randomness="seeded", noise_multiplier=1.0, clipping="adaptive"),
        DPSettings(randomness="seeded", noise_multiplier=1.0, grad_sample_mode="functorch"),
    ],
    ids=["per_layer", "adaptive", "functorch"],
)
def test_other_clipping_and_grad_sample_modes(dp, tokenizer, texts):
    model = _tiny(tokenizer, "qwen2")
    before = _snapshot(model)
    losses = []
    rec = train_model(model, tokenizer, texts, SETTINGS, dp=dp, progress=lambda s, t, loss: losses.append(loss))
    assert all(math.isfinite(x) for x in losses) and rec.steps == 4
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("mode,clipping", [("hooks", "flat"), ("ghost", "flat"), ("hooks", "adaptive")])
def test_empty_poisson_batches_give_noise_only_steps(mode, clipping, tokenizer, texts, monkeypatch):
    calls = []
    real = loop._noise_only_step
    monkeypatch.setattr(loop, "_noise_only_step", lambda *a: (calls.append(1), real(*a)))
    model = build_model(tokenizer, arch="llama", n_layer=1, n_embd=16, n_head=2, context=64)
    settings = TrainSettings(steps=12, batch_size=1, max_length=32, seed=0)
    dp = DPSettings(randomness="seeded", noise_multiplier=1.0, grad_sample_mode=mode, clipping=clipping)
    rec = train_model(model, tokenizer, texts[:4], settings, dp=dp)
    assert calls, "no empty batch drawn with this seed"
    assert rec.steps == 12 and rec.sample_rate == 0.25
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(1.0, 0.25, 12)]
    assert rec.epsilon == pytest.approx(acc.get_epsilon(rec.delta), rel=1e-6)


def test_ghost_clipping_refuses_a_model_type_it_was_not_verified_on(tokenizer, texts):
    from leakaudit.errors import LeakauditError

    model = _tiny(tokenizer, "gpt2")
    model.config.model_type = "gpt2_custom"  # as a model whose head might use the embedding outside its module
    before = _snapshot(model)
    ghost = DPSettings(randomness="seeded", noise_multiplier=1.0, grad_sample_mode="ghost")
    with pytest.raises(LeakauditError, match="grad_sample_mode ghost: not verified for model type 'gpt2_custom'"):
        train_model(model, tokenizer, texts, SETTINGS, dp=ghost)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any step
    hooks = DPSettings(randomness="seeded", noise_multiplier=1.0)
    assert train_model(model, tokenizer, texts, SETTINGS, dp=hooks).steps == 4  # other modes train it
