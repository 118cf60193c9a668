"""Shared fixtures: a tokenizer and tiny models built in code (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from leakaudit.data import make_corpora  # noqa: E402
from leakaudit.models import build_model, train_tokenizer  # noqa: E402

TESTS = Path(__file__).parent
TINY_SPEC = TESTS / "data" / "canaries_tiny.yaml"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU OpenMP's spin-waiting costs a lot.

    Modules of tiny-model tests use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def padded_batch(tokenizer, texts: list[str], *, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask of ``texts`` (with EOS), ``extra`` columns wider than the longest."""
    from leakaudit.models.tokenize import encode

    enc = encode(tokenizer, texts, add_eos=True)
    width = max(len(e.ids) for e in enc) + extra
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    return ids, mask


def secret_tokens(e, prefix: str, secret: str) -> list[int]:
    """The brute-force rule for a secret's score: indices (into log-probs of tokens 1..) of the tokens of
    ``encode(prefix + secret)`` covering the secret or the whitespace before it (a lone space token's offset is
    (a, a), just after the space)."""
    start, end = len(prefix.rstrip()), len(prefix) + len(secret)
    return [t - 1 for t, (a, b) in enumerate(e.offsets) if t >= 1 and a - (a == b) < end and b > start]


@pytest.fixture(scope="session")
def corpora():
    return make_corpora(60, 400, seed=3)


@pytest.fixture(scope="session")
def tokenizer(corpora):
    _, public = corpora
    return train_tokenizer([r["text"] for r in public], vocab_size=400)


@pytest.fixture(scope="session")
def gpt2(tokenizer):
    torch.manual_seed(0)
    return build_model(tokenizer, arch="gpt2", n_layer=2, n_embd=32, n_head=2, context=256).eval()


@pytest.fixture(scope="session")
def llama(tokenizer):
    return build_model(tokenizer, arch="llama", n_layer=2, n_embd=32, n_head=2, context=256).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gpt2, tokenizer):
    """A saved tiny model directory (safetensors) with no privacy record."""
    d = tmp_path_factory.mktemp("model")
    gpt2.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def broken_compile(monkeypatch):
    """``torch.compile`` returns a model that raises as a failing compiler would, on its first call."""
    def compile_(model, **kw):
        def run(**inputs):
            raise RuntimeError("backend compiler failed\nlong trace")
        return run

    monkeypatch.setattr(torch, "compile", compile_)
