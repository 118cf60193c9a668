"""Safe loading of a model under audit: local directories, safetensors only, hashes recorded."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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


def _plain_name(name: object) -> bool:
    """A file name inside the directory itself: no folder, no way out of it."""
    return isinstance(name, str) and name not in {"", ".", ".."} and "/" not in name and "\\" not in name


def _check_weight_files(p: Path) -> None:
    """Refuse a directory whose config or shard index would make the library read weights from a
    pickle, from a subfolder or from outside the directory (those are loaded but not hashed)."""
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeakauditError(f"{p / 'config.json'}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise LeakauditError(f"{p / 'config.json'}: expected a JSON object")
    named = cfg.get("transformers_weights")
    safe_suffixes = (".safetensors", ".safetensors.index.json")
    if named is not None and not (_plain_name(named) and str(named).endswith(safe_suffixes)):
        raise LeakauditError(
            f"{p / 'config.json'}: field 'transformers_weights' names {named!r}; leakaudit loads only "
            "*.safetensors files in the model directory itself"
        )
    for index in sorted(p.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise LeakauditError(f"{index}: not a valid shard index ({e})") from None
        if not isinstance(weight_map, dict):
            raise LeakauditError(f"{index}: field 'weight_map' is missing or not an object")
        for shard in sorted(set(map(str, weight_map.values()))):
            if not (_plain_name(shard) and shard.endswith(".safetensors")):
                raise LeakauditError(
                    f"{index}: field 'weight_map' names the shard {shard!r}; leakaudit loads only "
                    "*.safetensors files in the model directory itself"
                )
            if not (p / shard).is_file():
                raise LeakauditError(f"{index}: field 'weight_map' names {shard}, which is not in {p}")


def check_model_dir(path: str | Path) -> Path:
    """Refuse a path that is not a local Hugging Face model directory with safetensors weights."""
    p = Path(path)
    if not p.exists():
        raise LeakauditError(f"{p}: model directory not found")
    if not p.is_dir():
        raise LeakauditError(f"{p}: expected a model directory, found a file")
    if (p / "adapter_config.json").is_file():
        raise LeakauditError(
            f"{p}: an adapter (adapter_config.json), whose base model would be loaded from elsewhere unhashed; "
            "merge it into its base (peft's merge_and_unload, then save_pretrained) and audit that directory"
        )
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
    _check_weight_files(p)
    return p


@contextlib.contextmanager
def _no_unpickling(p: Path) -> Iterator[None]:
    """While a model loads, any attempt to unpickle a file is an error (a second line of defence
    behind :func:`check_model_dir`: the library falls back to ``torch.load`` for non-safetensors files)."""
    real = torch.load

    def refuse(f, *args, **kwargs):
        raise LeakauditError(f"{p}: the library tried to unpickle {f}; leakaudit loads safetensors only")

    torch.load = refuse
    try:
        yield
    finally:
        torch.load = real


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A local tokenizer (no weights loaded), with a pad token guaranteed."""
    p = Path(path)
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise LeakauditError(f"{p}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        why = " ".join(str(e).split())  # the library's message runs over several lines
        if not (p / "tokenizer.json").is_file():
            why = f"no tokenizer.json, and the other files could not make one ({why})"
        raise LeakauditError(f"{p}: cannot load tokenizer: {why}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_model_loadable(path: str | Path, *, trust_remote_code: bool = False) -> Path:
    """:func:`check_model_dir`, then what can be checked without loading the weights: the config and
    tokenizer load, and every weight file has a readable safetensors header.  Run before a command
    writes anything, so a broken directory is one line at the start, not a traceback after hours."""
    p = check_model_dir(path)
    load_tokenizer(p, trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise LeakauditError(f"{p}: cannot load config.json: {str(e).splitlines()[0]}") from None
    stored: dict[str, tuple[int, ...]] = {}
    for f in sorted(p.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as weights:
                stored.update({k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()})
        except (SafetensorError, OSError) as e:
            raise LeakauditError(f"{f}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    _check_weights_fit_config(p, config, stored, trust_remote_code=trust_remote_code)
    return p


def _check_weights_fit_config(p: Path, config, stored: dict[str, tuple[int, ...]], *,
                              trust_remote_code: bool) -> None:
    """Refuse weights whose shapes are not those config.json gives them (a config from another model size),
    and weights config.json describes that the files lack: the model's skeleton is built on the meta device
    (no memory, no weights read) and its tensors compared with the files' headers by name.  Files whose names
    the loader converts are left to the loader, which refuses them too (:func:`load_model`), only later; so
    are quantized weights, whose stored shapes differ."""
    if getattr(config, "quantization_config", None):
        return
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - an architecture this check cannot build: the loader will speak
        return
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    prefix = f"{skeleton.base_model_prefix}."
    names = {}
    for key, shape in stored.items():
        name = key if key in expected else prefix + key  # a checkpoint of the base model, without its head
        if name in expected and expected[name] != shape:
            raise LeakauditError(
                f"{p}: weight '{key}' has shape {list(shape)} in the files but config.json makes it "
                f"{list(expected[name])}: the config describes another model than these weights"
            )
        names[key] = name
    if any(n not in expected for n in names.values()):
        return  # names the loader converts (older layouts, fused experts): missing weights are its to find
    # every parameter must come from the files; tied ones (one tensor, several names) from any of their names
    have = set(names.values())
    tensors: dict[int, list[str]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        tensors.setdefault(id(param), []).append(name)
    ignored = [re.compile(r) for r in getattr(skeleton, "_keys_to_ignore_on_load_missing", None) or ()]
    missing = sorted(ns[0] for ns in tensors.values()
                     if not have.intersection(ns) and not any(r.search(n) for r in ignored for n in ns))
    if missing:
        raise _missing_weights(p, missing)


def _missing_weights(p: Path, missing: list[str], what: str = "") -> LeakauditError:
    return LeakauditError(f"{p}: {what}{len(missing)} weight(s) of the model config.json describes are not in the "
                          f"files (first '{missing[0]}'); is config.json that of these weights?")


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
        with _no_unpickling(p):
            model, info = AutoModelForCausalLM.from_pretrained(
                p, local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype,
                output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # unreadable weights, shapes unlike the config
        raise LeakauditError(f"{p}: cannot load model: {str(e).splitlines()[0]}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # the library would fill them with random values: an audit of a model nobody trained
        raise _missing_weights(p, missing, "cannot load model: ")
    model.eval()
    if device:
        model.to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, path=p, files_sha256=hashes)
