"""Book-keeping clipping: per-example norms and clipped sums equal each example's gradient computed alone."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from leakaudit.models import build_model
from leakaudit.models.tiny import ARCHS, tiny_config
from leakaudit.models.tokenize import encode
from leakaudit.train import loop
from leakaudit.train.bookkeeping import BookKeeper
from leakaudit.train.loop import LoraSettings, apply_lora, sequence_losses
from tests.conftest import padded_batch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch(tokenizer, corpora):
    return padded_batch(tokenizer, [r["text"][: 40 + 23 * i] for i, r in enumerate(corpora[0][:4])], extra=3)


def _model(tokenizer, arch, *, lora=False, tied=False):
    if tied:
        cfg = tiny_config(tokenizer, arch=arch, n_layer=2, n_embd=32, n_head=2, context=256)
        cfg.tie_word_embeddings = True
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_config(cfg)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    else:
        model = build_model(tokenizer, arch=arch, n_layer=2, n_embd=32, n_head=2, context=256, seed=1)
    if not lora:
        return model
    net = apply_lora(model, LoraSettings(r=2))
    with torch.no_grad():  # B starts at zero, which would make A's gradient vanish
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return net


def _alone(net, params, ids, mask):
    """Each example's gradient, from a backward pass over that example alone."""
    out = []
    for i in range(ids.shape[0]):
        net.zero_grad(set_to_none=True)
        n = int(mask[i].sum())
        sequence_losses(net, ids[i : i + 1, :n], mask[i : i + 1, :n]).sum().backward()
        out.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params])
    net.zero_grad(set_to_none=True)
    return out


def _check(net, ids, mask, clip, **kw):
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    with loop._dp_compatible(net):
        keeper = BookKeeper(net, params, clip, **kw)
        _, norms = keeper.accumulate(lambda: sequence_losses(net, ids, mask))
        summed = keeper.take()
        alone = _alone(net, params, ids, mask)
    assert all(p.grad is None for p in params)  # the one backward pass computed no weight gradient
    true = torch.stack([torch.sqrt(sum((g.double() ** 2).sum() for g in gs)) for gs in alone])
    torch.testing.assert_close(norms.double(), true, rtol=1e-4, atol=1e-6)
    scale = (clip / (true + 1e-6)).clamp(max=1.0)
    for k, p in enumerate(params):
        want = sum(float(scale[i]) * alone[i][k].double() for i in range(len(alone)))
        torch.testing.assert_close(summed[id(p)].double(), want, rtol=1e-4, atol=1e-6)
    return true


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("arch", ARCHS)
def test_norms_and_clipped_sums_equal_each_examples_own_gradient(arch, lora, tokenizer, batch):
    ids, mask = batch
    true = _check(_model(tokenizer, arch, lora=lora), ids, mask, clip=1.0)
    assert float(true.min()) > 1.0 or lora  # full fine-tuning: every example is clipped, so the scale matters


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tied_embeddings_count_the_cross_term(arch, tokenizer, batch):
    ids, mask = batch
    _check(_model(tokenizer, arch, tied=True), ids, mask, clip=1.0)


def test_explicit_and_ghost_norms_agree(tokenizer, batch):
    """With room for explicit per-example gradients the cheaper of the two is taken per layer; both are exact."""
    ids, mask = batch
    short_ids, short_mask = ids[:, :8].contiguous(), mask[:, :8].contiguous()  # T = 8 < in out / (in + out)
    for explicit_bytes in (0, 2**30):
        _check(_model(tokenizer, "gpt2"), short_ids, short_mask, clip=0.5, explicit_bytes=explicit_bytes)


def test_unsupported_sharing_is_refused_by_name(tokenizer):
    model = build_model(tokenizer, arch="llama", n_layer=2, n_embd=32, n_head=2, context=64)
    layers = model.model.layers
    layers[1].mlp.up_proj.weight = layers[0].mlp.up_proj.weight
    params = list({id(p): p for p in model.parameters()}.values())
    with pytest.raises(ValueError, match="up_proj"):
        BookKeeper(model, params, 1.0)


@pytest.fixture(scope="module")
def texts(corpora):
    return [r["text"][: 40 + (7 * i) % 61] for i, r in enumerate(corpora[0][:32])]


@pytest.mark.parametrize(
    "arch,piece,lora",
    [("gpt2", None, False), ("gpt2", 3, False), ("opt", None, False), ("opt", 3, False), ("llama", None, True),
     ("gpt_neox", 3, True)],
)
def test_training_equals_opacus_hooks_mode_step_for_step(arch, piece, lora, tokenizer, texts):
    """Same seed, same Poisson batches, same noise: the weights after training match Opacus's flat clipping."""
    from leakaudit.train.loop import DPSettings, TrainSettings, train_model

    settings = TrainSettings(steps=3, batch_size=8, lr=5e-3, max_length=48, max_physical_batch_size=piece,
                             lora=LoraSettings(r=2) if lora else None)
    states, records = {}, {}
    for mode in ("hooks", "bookkeeping"):
        model = build_model(tokenizer, arch=arch, n_layer=2, n_embd=32, n_head=2, context=128, seed=1)
        dp = DPSettings(noise_multiplier=0.8, max_grad_norm=0.5, grad_sample_mode=mode, randomness="seeded")
        records[mode] = train_model(model, tokenizer, texts, settings, dp=dp)
        states[mode] = model.state_dict()
    start = build_model(tokenizer, arch=arch, n_layer=2, n_embd=32, n_head=2, context=128, seed=1).state_dict()
    moved = [k for k, v in states["hooks"].items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert moved  # LoRA: the adapted projections (adapters merged); full: every weight
    for k, v in states["hooks"].items():
        if v.is_floating_point():
            assert lora or k in moved or "bias" in k or "position" in k, k
            torch.testing.assert_close(states["bookkeeping"][k], v, rtol=1e-4, atol=2e-5)
    a, b = records["hooks"], records["bookkeeping"]
    assert b.epsilon == pytest.approx(a.epsilon, rel=1e-9) and b.sample_rate == a.sample_rate
    assert b.grad_sample_mode == "bookkeeping" and b.noise_multiplier == a.noise_multiplier


@pytest.mark.parametrize("arch,lora,tied", [("llama", True, False), ("gpt2", False, True), ("neox", True, False)])
def test_bookkeeping_trains_lora_and_tied_models_that_then_generate(arch, lora, tied, tokenizer, texts, tmp_path):
    from leakaudit.models import load_model
    from leakaudit.train.loop import DPSettings, TrainSettings, save_trained, train_model

    arch = {"neox": "gpt_neox"}.get(arch, arch)
    model = _model(tokenizer, arch, tied=tied)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(epochs=1, batch_size=8, lr=5e-3, max_length=128, lora=LoraSettings(r=2) if lora else None)
    losses = []
    dp = DPSettings(randomness="seeded", target_epsilon=8.0, grad_sample_mode="bookkeeping")
    rec = train_model(model, tokenizer, texts, settings, dp=dp, progress=lambda s, t, loss: losses.append(loss))
    assert rec.steps == 4 and rec.epsilon == pytest.approx(8.0, rel=0.05) and all(map(math.isfinite, losses))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    buffers = sum("masked_bias" in k or k.endswith(".attn.bias") for k in before)
    assert changed and (lora or len(changed) == len(before) - buffers)
    save_trained(model, tokenizer, tmp_path, rec)
    loaded = load_model(tmp_path)
    x = torch.tensor([encode(loaded.tokenizer, ["Hello, I"])[0].ids])
    out = loaded.model.generate(x, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == x.shape[1] + 4


def test_empty_poisson_batches_give_noise_only_steps_and_count(tokenizer, texts):
    from opacus.accountants import PRVAccountant

    from leakaudit.train.loop import DPSettings, TrainSettings, train_model

    model = build_model(tokenizer, arch="llama", n_layer=1, n_embd=16, n_head=2, context=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reported = []
    rec = train_model(model, tokenizer, texts[:4], TrainSettings(steps=12, batch_size=1, max_length=32, seed=0),
                      dp=DPSettings(randomness="seeded", noise_multiplier=1.0, grad_sample_mode="bookkeeping"),
                      progress=lambda s, t, loss: reported.append(s))
    assert len(reported) < 12, "no empty batch drawn with this seed"
    assert rec.steps == 12 and rec.sample_rate == 0.25
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    acc = PRVAccountant()
    acc.history = [(1.0, 0.25, 12)]
    assert rec.epsilon == pytest.approx(acc.get_epsilon(rec.delta), rel=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cuda_norms_and_clipped_sums_equal_each_examples_own_gradient(arch, tokenizer, batch):
    ids, mask = batch
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, so the 1e-4 tolerance holds
    _check(_model(tokenizer, arch).cuda(), ids.cuda(), mask.cuda(), clip=1.0)


def test_what_the_rules_cannot_handle_is_refused_by_name(tokenizer, batch):
    ids, mask = batch
    model = _model(tokenizer, "gpt2").train()
    params = [p for p in model.parameters() if p.requires_grad]
    keeper = BookKeeper(model, params, 1.0)
    # the library's default position ids are [1, T]: not one row per example
    with pytest.raises(ValueError, match=r"'transformer.wpe'.*first dimension is not the batch"):
        keeper.accumulate(lambda: _losses_without_positions(model, ids, mask))
    # peft keeps LoRA-on-embedding weights in parameter containers that no forward call uses
    net = apply_lora(_model(tokenizer, "gpt2"), LoraSettings(r=2, target_modules=["wte", "c_attn"]))
    with pytest.raises(ValueError, match="lora_embedding"):
        BookKeeper(net, [p for p in net.parameters() if p.requires_grad], 1.0)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        BookKeeper(model, params, 1.0)


def _losses_without_positions(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return -(logp * mask[:, 1:]).sum(1)


def test_a_subclass_that_changes_forward_gets_the_generic_rule(tokenizer, batch):
    """A scaled embedding (as some architectures have) is not an nn.Embedding for the rules."""

    class Scaled(torch.nn.Embedding):
        def forward(self, x):
            return super().forward(x) * 3.0

    ids, mask = batch
    model = _model(tokenizer, "llama")
    old = model.model.embed_tokens
    scaled = Scaled(old.num_embeddings, old.embedding_dim, padding_idx=old.padding_idx)
    scaled.weight = old.weight
    model.model.embed_tokens = scaled
    _check(model, ids, mask, clip=1.0)


def test_rms_norm_rule_only_where_the_module_computes_weight_times_rms_normalised_input(tokenizer, batch):
    """Llama's norm layers get the explicit rule; a "1 + weight" variant keeps the exact generic one."""

    class OnePlus(torch.nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(d))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            h = x.float()
            return ((1.0 + self.weight) * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))).to(x.dtype)

    ids, mask = batch
    model = _model(tokenizer, "llama")
    kinds = {s.name: s.kind for s in BookKeeper(model, list(model.parameters()), 1.0).sites}
    assert kinds["model.norm"] == "rmsnorm" and kinds["model.layers.0.input_layernorm"] == "rmsnorm"
    model.model.norm = OnePlus(model.config.hidden_size)
    assert {s.name: s.kind for s in BookKeeper(model, list(model.parameters()), 1.0).sites}["model.norm"] == "other"
    _check(model, ids, mask, clip=1.0)
