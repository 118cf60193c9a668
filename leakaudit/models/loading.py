"""Safe loading of a model under audit: local directories, safetensors only, hashes recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from leakaudit.errors import LeakauditError
from leakaudit.io import sha256_file

_HASHED_SUFFIXES = {".json", ".safetensors", ".txt", ".model", ".py", ".bin", ".pt", ".pth", ".tiktoken"}


def hash_model_dir(path: str | Path) -> dict[str, str]:
    """SHA-256 of every weight, config and tokenizer file in a model directory."""
    p = Path(path)
    return {
        f.name: sha256_file(f)
        for f in sorted(p.iterdir())
        if f.is_file() and f.suffix in _HASHED_SUFFIXES and f.name != "stage.json"
    }


def check_model_dir(path: str | Path) -> Path:
    """Refuse a path that is not a local Hugging Face model directory with safetensors weights."""
    p = Path(path)
    if not p.exists():
        raise LeakauditError(f"{p}: model directory not found")
    if not p.is_dir():
        raise LeakauditError(f"{p}: expected a model directory, found a file")
    if not (p / "config.json").is_file():
        raise LeakauditError(f"{p}: no config.json (not a Hugging Face model directory)")
    if not any(p.glob("*.safetensors")):
        pickled = [f.name for f in p.iterdir() if f.suffix in {".bin", ".pt", ".pth"}]
        if pickled:
            raise LeakauditError(
                f"{p}: only pickle weights ({pickled[0]}); leakaudit loads safetensors only "
                "(convert with model.save_pretrained(..., safe_serialization=True))"
            )
        raise LeakauditError(f"{p}: model directory has no weights (*.safetensors)")
    return p


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A local tokenizer (no weights loaded), with a pad token guaranteed."""
    p = Path(path)
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise LeakauditError(f"{p}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LeakauditError(f"{p}: cannot load tokenizer: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    files_sha256: dict[str, str] = field(default_factory=dict)


def load_model(
    path: str | Path, *, device: str | None = None, trust_remote_code: bool = False, dtype=None
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local directory, safely.

    Only ``*.safetensors`` weights are read; code shipped with the model runs only when
    ``trust_remote_code`` is set; every file's SHA-256 is recorded before loading.
    """
    p = check_model_dir(path)
    hashes = hash_model_dir(p)
    tokenizer = load_tokenizer(p, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            p, local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype
        )
    except (OSError, ValueError) as e:
        raise LeakauditError(f"{p}: cannot load model: {str(e).splitlines()[0]}") from None
    model.eval()
    if device:
        model.to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, path=p, files_sha256=hashes)
