"""Typed configuration of a demo run, with presets sized for a CPU and for a GPU.

The same object comes from a preset, a YAML file (``--config``) or Python; the resolved
config (canary specs inlined) is written to the run directory as ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leakaudit.canaries.spec import CanarySpec, load_spec, unsafe_name
from leakaudit.errors import LeakauditError, describe_validation_error
from leakaudit.io import read_yaml_mapping
from leakaudit.models.tiny import Arch
from leakaudit.train.loop import DPSettings, TrainSettings

REPO_CANARIES = Path(__file__).resolve().parents[1] / "canaries"
# canary specs of a demo run when none are given: exposure by repetition, and the one-run audit
DEFAULT_SPECS = {
    "cpu": ("recovery_codes.yaml", "one_run_audit.yaml"),
    "gpu": ("recovery_codes.yaml", "one_run_audit.yaml"),
    "tiny": ("recovery_codes.yaml", "one_run_audit_small.yaml"),
}
ALL_DEMO_ATTACKS = (
    "loss", "zlib", "lowercase", "min_k", "min_k_pp", "reference", "reference_ratio", "neighbourhood",
    "lira_online", "lira_offline", "rmia",
)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_private: int = Field(default=1000, ge=4, description="Private records, split into members and non-members.")
    n_public: int = Field(default=3000, ge=1, description="Public records for pretraining the base model.")
    member_fraction: float = Field(default=0.5, gt=0, lt=1)
    seed: int = 0


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: Arch = "gpt2"
    vocab_size: int = Field(default=2048, ge=300)
    n_layer: int = Field(default=4, ge=1)
    n_embd: int = Field(default=128, ge=8)
    n_head: int = Field(default=4, ge=1)
    context: int = Field(default=256, ge=16)


class DemoConfig(BaseModel):
    """Everything a demo run depends on.  Changing any field re-runs the stages it feeds."""

    model_config = ConfigDict(extra="forbid")
    preset: str = "cpu"
    seed: int = 0
    device: str | None = Field(default=None, description="cpu, cuda, or null for the best available.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Weights while auditing (scoring and sampling): auto is bfloat16 on a GPU, float32 on a CPU.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    canaries: list[CanarySpec] = Field(default_factory=list, description="Canary specs (inlined).")
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: TrainSettings = Field(default_factory=lambda: TrainSettings(epochs=2, batch_size=32, lr=2e-3))
    finetune: TrainSettings = Field(default_factory=lambda: TrainSettings(epochs=3, batch_size=16, lr=1e-3))
    dp_train: TrainSettings = Field(default_factory=lambda: TrainSettings(epochs=6, batch_size=64, lr=5e-4))
    dp: DPSettings = Field(  # the demo repeats exactly: its DP randomness comes from the seed (recorded, reported)
        default_factory=lambda: DPSettings(target_epsilon=8.0, max_grad_norm=1.0, randomness="seeded")
    )
    token_budget: int | None = Field(
        default=None, ge=256,
        description="Padded tokens per scoring batch (null: 32,768 on a GPU; on a CPU 4,096, fewer for "
        "vocabularies over 16,384 tokens).",
    )
    attacks: list[str] = Field(default_factory=lambda: list(ALL_DEMO_ATTACKS), description="Attacks to run.")
    attack_params: dict[str, dict] = Field(default_factory=dict, description="Per-attack parameters.")
    n_neighbours: int = Field(default=8, ge=1, description="Perturbed copies per text (neighbourhood).")
    exact_exposure_max: int = Field(
        default=0, ge=0, description="Enumerate canary spaces up to this size for exact exposure (0: never)."
    )
    extraction_budget: int = Field(
        default=200, ge=0, description="Expansions per canary for the extraction search (each the next-token "
        "distribution after one partial secret; batched into fewer forward passes) (0: no search)."
    )
    extraction_guesses: int = Field(
        default=10, ge=1, description="Guesses per canary of the extraction search (its most likely secrets in "
        "order): the search goes on past the first guess, up to extraction_budget expansions."
    )
    shadows: int = Field(default=8, ge=0, description="Shadow models for LiRA / RMIA (even, >= 4; 0 = none).")
    beam_width: int = Field(default=16, ge=0, description="Beam search over each canary's format (0: none).")
    memorization: list[tuple[int, int]] = Field(
        default_factory=lambda: [(32, 32), (16, 16)],
        description="Discoverable memorization (k prompt tokens, n decoded).  The demo's records are 49-98 "
        "tokens long, too short for the usual 50/50.",
    )
    memorization_max_records: int = Field(default=500, ge=1, description="Records per side tested.")
    extraction_samples: int = Field(
        default=1000, ge=0, description="Untargeted samples drawn from each model (0: no untargeted extraction)."
    )
    sample_tokens: int = Field(default=64, ge=4, description="New tokens per untargeted sample.")
    verify_ngram: int = Field(default=16, ge=2, description="Tokens shared with a training record to count.")

    @field_validator("canaries")
    @classmethod
    def _distinct_specs(cls, v: list[CanarySpec]) -> list[CanarySpec]:
        names = [c.name for c in v]
        for n in names:
            if unsafe_name(n):
                raise ValueError(f"canary spec name {unsafe_name(n)}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # one manifest file per name: a second spec would overwrite the first, or insert it twice
            raise ValueError(f"two canary specs are named '{twice[0]}'; give each spec its own name")
        seeds: dict[int, str] = {}
        for c in v:
            if c.seed is None:  # drawn from the OS when the canaries are generated
                continue
            if c.seed in seeds:  # the same random stream: the two specs' secrets would overlap digit for digit
                raise ValueError(f"canary specs '{seeds[c.seed]}' and '{c.name}' share seed {c.seed}, so their "
                                 "secrets would be drawn from one random stream and overlap; give them different seeds")
            seeds[c.seed] = c.name
        return v

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, v: list[str]) -> list[str]:
        from leakaudit.attacks import ATTACKS

        unknown = [a for a in v if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown} (known: {', '.join(sorted(ATTACKS))})")
        return v

    @field_validator("attack_params")
    @classmethod
    def _attack_params(cls, v: dict[str, dict]) -> dict[str, dict]:
        from leakaudit.attacks.registry import check_params
        from leakaudit.errors import LeakauditError

        for attack, params in v.items():
            try:
                check_params(attack, params, where="")
            except LeakauditError as e:
                raise ValueError(str(e).removeprefix("--attacks: ")) from None
        return v

    @field_validator("memorization")
    @classmethod
    def _memorization(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        bad = [kn for kn in v if kn[0] < 1 or kn[1] < 1]
        if bad:
            raise ValueError(f"each entry is [k prompt tokens, n decoded tokens], both >= 1 (got {list(bad[0])})")
        return v

    @field_validator("shadows")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2 or v == 2:
            raise ValueError(f"the number of shadow models must be 0 or an even number >= 4 (got {v})")
        return v


def _preset(name: str) -> dict:
    if name == "cpu":
        return {}
    if name == "tiny":
        return {
            "data": {"n_private": 240, "n_public": 600},
            "model": {"vocab_size": 512, "n_layer": 2, "n_embd": 64, "n_head": 2, "context": 192},
            "pretrain": {"epochs": 1, "batch_size": 32, "lr": 3e-3},
            "finetune": {"epochs": 8, "batch_size": 16, "lr": 3e-3},
            "dp_train": {"epochs": 3, "batch_size": 64, "lr": 3e-3},
            "dp": {"target_epsilon": 1.0},
            "shadows": 0,
            "extraction_budget": 100,
            "memorization": [[16, 16]],
            "extraction_samples": 150,
            "sample_tokens": 32,
            "verify_ngram": 12,
        }
    if name == "gpu":
        return {
            "data": {"n_private": 4000, "n_public": 20000},
            "model": {"vocab_size": 8192, "n_layer": 8, "n_embd": 512, "n_head": 8, "context": 512},
            "pretrain": {"epochs": 2, "batch_size": 64, "lr": 5e-4},
            "finetune": {"epochs": 6, "batch_size": 32, "lr": 2e-4},
            "dp_train": {"epochs": 6, "batch_size": 256, "lr": 1e-3},
            "extraction_samples": 20000,
        }
    raise LeakauditError(f"--preset: unknown preset '{name}' (tiny, cpu, gpu)")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config(
    *,
    preset: str = "cpu",
    config_file: str | Path | None = None,
    canary_files: list[str | Path] | None = None,
    overrides: dict | None = None,
) -> DemoConfig:
    """Preset, then the YAML file, then CLI overrides; canary spec files are read and inlined."""
    raw = _merge({"preset": preset}, _preset(preset))
    where = "config"
    if config_file is not None:
        p = Path(config_file)
        raw = _merge(raw, read_yaml_mapping(p, "config file", empty_ok=True))
        where = str(p)
    raw = _merge(raw, overrides or {})
    if isinstance(raw.get("dp"), dict):
        # demos and experiments repeat exactly: DP-SGD's batches and noise come from the seed unless the
        # configuration says otherwise (leakaudit train, for models to release, defaults to secret)
        raw["dp"] = {"randomness": "seeded", **raw["dp"]}
    specs = [load_spec(f) for f in canary_files or []]
    if not specs and not raw.get("canaries"):
        for default in DEFAULT_SPECS.get(preset, DEFAULT_SPECS["cpu"]):
            if not (REPO_CANARIES / default).is_file():
                raise LeakauditError(f"{REPO_CANARIES / default}: default canary spec not found; use --canaries")
            specs.append(load_spec(REPO_CANARIES / default))
    if specs:
        raw["canaries"] = [s.model_dump(mode="json") for s in specs]
    try:
        return with_seed(DemoConfig.model_validate(raw))
    except ValidationError as e:
        raise LeakauditError(describe_validation_error(e, where)) from None


def with_seed(cfg: DemoConfig) -> DemoConfig:
    """The config with ``cfg.seed`` carried into everything random: the data and its member split, each canary
    spec's draws, and the plain and DP training (shuffles, Poisson batches, noise), each shifted by the seed,
    so seed 0 is the configuration as written and another seed is a whole new replicate."""
    s = cfg.seed
    if not s:
        return cfg
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"seed": cfg.data.seed + s}),
        "canaries": [c if c.seed is None else c.model_copy(update={"seed": c.seed + s}) for c in cfg.canaries],
        "finetune": cfg.finetune.model_copy(update={"seed": cfg.finetune.seed + s}),
        "dp_train": cfg.dp_train.model_copy(update={"seed": cfg.dp_train.seed + s}),
    })
