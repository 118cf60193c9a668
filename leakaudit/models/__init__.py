"""Models: tiny in-code models and tokenizers, safe loading, and the scoring engine."""

from leakaudit.models.loading import LoadedModel, check_model_dir, check_model_loadable, hash_model_dir, load_model
from leakaudit.models.target import Target, default_device
from leakaudit.models.tiny import build_model, train_tokenizer
from leakaudit.models.tokenize import encode

__all__ = [
    "LoadedModel",
    "Target",
    "build_model",
    "check_model_dir",
    "check_model_loadable",
    "default_device",
    "encode",
    "hash_model_dir",
    "load_model",
    "train_tokenizer",
]
