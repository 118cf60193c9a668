"""Grids of train-and-audit runs (DP versus non-DP) and the comparison report across them.

An experiment file (YAML) names a base demo configuration and a grid over target epsilon
(``inf`` = no DP), seed and fine-tuning mode (full or LoRA).  For every seed the data, the
canaries and the base model are built once (``seeds/seed-<s>/``); every cell of the grid then
fine-tunes its own model from that base and audits it in its own run directory
(``cells/<mode>-eps<eps>-seed<s>/``, a normal leakaudit run with ``results.json`` and reports),
with the base model as the reference.  A finished cell writes ``cell.json``; running the same
experiment again skips finished cells and resumes an interrupted one stage by stage.

With ``matched_steps`` (the default) a non-DP cell takes exactly the optimizer steps and the
(expected) batch size of the DP cells of its mode, and their learning rate
(:func:`~leakaudit.train.loop.matched_settings`): only clipping and noise differ, so a
difference in leakage is the effect of DP and not of a shorter or longer training run.
``non_dp_lr`` gives the non-DP cells a learning rate of their own (steps and batch still
matched): a DP run's learning rate is tuned for clipped, noisy gradients, and at it a plain run
can overfit until it is worse than the base model, which makes its utility no baseline.

The comparison (``comparison.json``, ``.csv``, ``.md``, ``.html``) holds metrics only: no
text, secret or PII from the data.  Cells run in this process (:class:`LocalExecutor`) or as
submitit jobs (:class:`SubmititExecutor`: Slurm when available, or local subprocesses).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import html
import io
import json
import math
import platform
import shutil
import statistics
import time
import traceback
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leakaudit.config import REPO_CANARIES, DemoConfig, resolve_config
from leakaudit.errors import LeakauditError, describe_validation_error
from leakaudit.io import (
    SAFE_NAME,
    atomic_dir,
    read_json,
    read_jsonl,
    read_yaml_mapping,
    stable_hash,
    write_bytes_atomic,
    write_json,
    write_text_atomic,
)
from leakaudit.train.loop import RECORD_VERSION, LoraSettings, TrainSettings

Mode = Literal["full", "lora"]
COMPARISON_FILES = ("comparison.json", "comparison.csv", "comparison.md", "comparison.html")
EXPERIMENT_VERSION = 2  # 2: privacy records tied to weights, one-run alpha shared by specs
"""Bump to invalidate every finished cell (the cell key includes it)."""

# ------------------------------------------------------------------------------------- config


class GridConfig(BaseModel):
    """The grid: every combination of epsilon, seed and mode is one cell."""

    model_config = ConfigDict(extra="forbid")
    epsilon: list[float] = Field(description="Target epsilons of DP-SGD; inf (or .inf) is a run without DP.")
    seed: list[int] = Field(default_factory=lambda: [0], description="Seeds: data split, canaries, base, training.")
    mode: list[Mode] = Field(default_factory=lambda: ["full"], description="full fine-tuning and/or lora.")

    @field_validator("epsilon", mode="before")
    @classmethod
    def _parse_inf(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for x in v:
            if isinstance(x, str) and x.strip().lower() in ("inf", "+inf", ".inf", "infinity", "none", "no_dp"):
                out.append(math.inf)
            else:
                out.append(x)
        return out

    @field_validator("epsilon")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one epsilon")
        if any(not (x > 0) for x in v):
            raise ValueError(f"every epsilon must be > 0 or inf (got {[_eps_label(x) for x in v]})")
        labels = [_eps_label(x) for x in v]
        if len(set(labels)) != len(labels):  # cells are named by the label: two would share a directory
            raise ValueError(f"epsilons must be distinct to 6 significant digits (got {labels})")
        return v

    @field_validator("seed")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one seed")
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError("seeds must be distinct non-negative integers")
        return v

    @field_validator("mode")
    @classmethod
    def _modes(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("give full and/or lora, each at most once")
        return v


class SubmititConfig(BaseModel):
    """Settings of the submitit executor (``--executor submitit``)."""

    model_config = ConfigDict(extra="forbid")
    cluster: Literal["slurm", "local"] | None = Field(
        default=None, description="null: Slurm when available, else local subprocesses."
    )
    timeout_min: int = Field(default=120, ge=1, description="Time limit of one job (a seed or a cell), minutes.")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="More AutoExecutor.update_parameters arguments, e.g. slurm_partition, gpus_per_node, mem_gb.",
    )


class NonDPLearningRates(BaseModel):
    """The non-DP cells' learning rate per fine-tuning mode; null: the same as the DP cells of that mode."""

    model_config = ConfigDict(extra="forbid")
    full: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    lora: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class ExperimentConfig(BaseModel):
    """An experiment file.  ``base`` is a demo configuration: a preset and overrides of its fields."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SAFE_NAME, description="Default output: runs/experiments/NAME.")
    description: str = ""
    base: dict[str, Any] = Field(
        default_factory=dict,
        description="preset (tiny, cpu, gpu) and DemoConfig overrides (data, model, dp_train, dp, attacks, ...); "
        "canaries: a list of canary spec files, relative to the experiment file.",
    )
    grid: GridConfig
    matched_steps: bool = Field(
        default=True,
        description="Non-DP cells train with the steps, expected batch and learning rate of the DP cells "
        "(matched_settings); false: the base config's finetune settings.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapters of the lora cells.")
    lora_lr: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                  description="Learning rate of the lora cells (null: same).")
    non_dp_lr: NonDPLearningRates = Field(
        default_factory=lambda: NonDPLearningRates(),
        description="Learning rates of the non-DP (eps inf) cells, per mode (null: the DP cells' of that mode).",
    )
    pii_reconstruction_records: int = Field(
        default=200, ge=0, description="Records per side for PII reconstruction (0: none)."
    )
    pii_candidates: int = Field(default=32, ge=2, description="Candidates per PII reconstruction query.")
    exposure_min_repetitions: int = Field(
        default=16, ge=1, description="Exposure is summarised over canaries inserted at least this many times."
    )
    submitit: SubmititConfig = Field(default_factory=SubmititConfig)


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: its config, the resolved base demo config and the file it came from."""

    config: ExperimentConfig
    base: DemoConfig
    source: str

    def cells(self) -> list[CellSpec]:
        g = self.config.grid
        return [CellSpec(mode, eps, seed) for seed in g.seed for mode in g.mode for eps in g.epsilon]


@dataclass(frozen=True)
class CellSpec:
    mode: str
    epsilon: float
    seed: int

    @property
    def dp(self) -> bool:
        return math.isfinite(self.epsilon)

    @property
    def id(self) -> str:
        return f"{self.mode}-eps{_eps_label(self.epsilon)}-seed{self.seed}"


def _eps_label(eps: float) -> str:
    return "inf" if not math.isfinite(eps) else f"{eps:g}"


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; any problem is one LeakauditError naming the file and field."""
    p = Path(path)
    raw = read_yaml_mapping(p, "experiment file")
    return experiment_from_dict(raw, where=str(p), root=p.parent)


def experiment_from_dict(raw: dict, *, where: str = "experiment", root: Path | None = None) -> Experiment:
    """Validate an experiment given as a dict (canary spec paths relative to ``root``)."""
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise LeakauditError(describe_validation_error(e, where)) from None
    base = dict(cfg.base)
    preset = base.pop("preset", "tiny")
    if not isinstance(preset, str):
        raise LeakauditError(f"{where}: field 'base.preset': expected tiny, cpu or gpu")
    dp = base.get("dp") if isinstance(base.get("dp"), dict) else None
    if dp is not None:
        if dp.get("noise_multiplier") is not None or dp.get("target_epsilon") is not None:
            key = "noise_multiplier" if dp.get("noise_multiplier") is not None else "target_epsilon"
            raise LeakauditError(f"{where}: field 'base.dp.{key}': the grid sets each cell's epsilon; remove it")
        base["dp"] = {**dp, "target_epsilon": 1.0, "noise_multiplier": None}  # a placeholder: cells set their own
    if "seed" in base:
        raise LeakauditError(f"{where}: field 'base.seed': the grid sets each cell's seed (grid.seed); remove it")
    if "canaries" in base:
        specs = base.pop("canaries")
        if not isinstance(specs, list) or not specs or not all(isinstance(s, str | dict) for s in specs):
            raise LeakauditError(f"{where}: field 'base.canaries': expected a list of canary spec files or specs")
        base["canaries"] = [_load_spec(s, root, where, i) for i, s in enumerate(specs)]
    try:
        demo = resolve_config(preset=preset, overrides=base)
    except LeakauditError as e:
        msg = str(e)
        if msg.startswith("config: field '"):
            msg = f"{where}: field 'base." + msg.removeprefix("config: field '")
        elif msg.startswith("--preset: "):
            msg = f"{where}: field 'base.preset': " + msg.removeprefix("--preset: ")
        elif not msg.startswith(where):
            msg = f"{where}: base: {msg}"
        raise LeakauditError(msg) from None
    most = max((max(c.repetitions) for c in demo.canaries if c.design != "one_run"), default=None)
    if most is not None and cfg.exposure_min_repetitions > most:
        raise LeakauditError(f"{where}: field 'exposure_min_repetitions': {cfg.exposure_min_repetitions} is more than "
                             f"any canary is inserted ({most} times at most), so no exposure would be summarised")
    return Experiment(cfg, demo, where)


def _load_spec(spec: str | dict, root: Path | None, where: str, i: int) -> dict:
    """A canary spec of ``base.canaries``: inline (a mapping) or a file relative to the experiment file."""
    from leakaudit.canaries.spec import CanarySpec, load_spec

    if isinstance(spec, dict):
        try:
            return CanarySpec.model_validate(spec).model_dump(mode="json")
        except ValidationError as e:
            raise LeakauditError(describe_validation_error(e, where, f"base.canaries.{i}")) from None
    cands = [Path(spec)] if Path(spec).is_absolute() else [
        *([root / spec] if root is not None else []), Path(spec), REPO_CANARIES.parent / spec, REPO_CANARIES / spec,
    ]
    for c in cands:
        if c.is_file():
            return load_spec(c).model_dump(mode="json")
    raise LeakauditError(f"{where}: field 'base.canaries.{i}': canary spec '{spec}' not found")


# ------------------------------------------------------------------------------ per seed


def seed_config(exp: Experiment, seed: int) -> DemoConfig:
    """The base config of one seed: its own data split, canary draws, base model and training seed."""
    b = exp.base
    canaries = [c if c.seed is None else c.model_copy(update={"seed": c.seed + seed}) for c in b.canaries]
    return b.model_copy(update={
        "seed": seed, "data": b.data.model_copy(update={"seed": b.data.seed + seed}), "canaries": canaries,
    })


def _seed_key(cfg: DemoConfig) -> dict:
    j = cfg.model_dump(mode="json")
    return {k: j[k] for k in ("data", "canaries", "model", "pretrain", "seed", "shadows", "finetune")} | {
        "max_length": _max_length(cfg)
    }


def _max_length(cfg: DemoConfig) -> int:
    return min(cfg.finetune.max_length, cfg.dp_train.max_length)


def _device(cfg: DemoConfig) -> str:
    from leakaudit.models.target import default_device

    return cfg.device or default_device()


def _audit_options(cfg: DemoConfig, exp: ExperimentConfig):
    from leakaudit.pipeline import audit_options

    return audit_options(
        cfg, pii_reconstruction_records=exp.pii_reconstruction_records, pii_candidates=exp.pii_candidates
    )


@dataclass(frozen=True)
class SeedTask:
    experiment: Experiment
    out: str
    seed: int


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / "seeds" / f"seed-{seed}"


def _marker(path: Path) -> dict:
    """A seed's or cell's marker file as a dict; {} (not done) when absent or unreadable (a truncated copy, a
    merge conflict): its work is done again rather than the run stopped."""
    try:
        data = read_json(path) if path.is_file() else {}
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return {}
    return data if isinstance(data, dict) else {}


def seed_done(exp: Experiment, out: Path, seed: int) -> bool:
    """Whether ``seed.json`` was written for the seed's current settings and, where its base model is on disk,
    for that base model (a ``seed.json`` carried over a rebuilt base would hand its perplexity to the new one)."""
    info = _marker(seed_dir(out, seed) / "seed.json")
    if info.get("key") != stable_hash(_seed_key(seed_config(exp, seed))):
        return False
    recorded, base = info.get("base_sha256"), seed_dir(out, seed) / "models" / "base"
    return not (recorded and (base / "stage.json").is_file() and recorded != _weights_sha256(base))


SEED_STAGES = ("data", "canaries", "models/base")


def seed_stages_present(out: Path, seed: int) -> bool:
    """Are the seed's data, canaries and base model on disk?  (Only its seed.json travels when a grid's
    finished cells are carried to another machine; the seed is then prepared again before its next cell.)"""
    sdir = seed_dir(out, seed)
    return all((sdir / name / "stage.json").is_file() for name in SEED_STAGES)


def _weights_sha256(model_dir: Path) -> str:
    """One hash of a model directory's safetensors files (which base model a cell was fine-tuned from)."""
    from leakaudit.models.loading import hash_model_dir

    return stable_hash({k: v for k, v in hash_model_dir(model_dir).items() if k.endswith(".safetensors")})


def prepare_seed(task: SeedTask) -> dict:
    """Data, canaries, base model (and shadow models, when asked for) of one seed; cached stage by stage."""
    from leakaudit.attacks import load_score_table
    from leakaudit.audit import table_utility
    from leakaudit.pipeline import shared_stages
    from leakaudit.runs import EventLog

    cfg = seed_config(task.experiment, task.seed)
    sdir = seed_dir(Path(task.out), task.seed)
    sdir.mkdir(parents=True, exist_ok=True)
    # the marker goes first: interrupted while the stages are rebuilt for other settings, the seed must not
    # pass for prepared under its old ones
    (sdir / "seed.json").unlink(missing_ok=True)
    log = EventLog(sdir)
    device = _device(cfg)
    t0 = time.perf_counter()

    shared = shared_stages(cfg, sdir, log, device, dp=any(c.dp for c in task.experiment.cells()))
    if cfg.shadows:
        _shadows(cfg, sdir, shared, device, log)
    scores = _prime_reference(cfg, task.experiment.config, sdir, shared, device, log)
    base = table_utility(load_score_table(scores / "mia.parquet"))
    info = {"key": stable_hash(_seed_key(cfg)), "seed": task.seed, "n_train": len(shared.train_texts),
            "base_perplexity": base.non_member_perplexity, "base_sha256": _weights_sha256(shared.base_dir),
            "preflight_warnings": shared.preflight_warnings,
            "seconds": round(time.perf_counter() - t0, 2)}
    write_json(sdir / "seed.json", info)
    return info


def _shadows(cfg: DemoConfig, sdir: Path, shared, device: str, log):
    """The seed's shadow models (trained once, then found in the seed's cache by every cell)."""
    from leakaudit.train.shadows import train_shadows

    population = shared.members + shared.non_members
    return train_shadows(sdir / "shadows", shared.base_dir, [r["text"] for r in population], cfg.shadows,
                         cfg.finetune, device=device, log=log, seed=cfg.seed)


def _prime_reference(cfg: DemoConfig, exp: ExperimentConfig, sdir: Path, shared, device: str, log):
    """Score the base model and draw its samples once per seed; cells copy these stages (see _copy_reference).

    The stages carry the same keys as the ones run_audit builds for its reference, so a cell skips
    them; were the keys ever to differ, the cell would rebuild them (slower, never wrong).
    """
    from leakaudit.audit import ModelToAudit, score_model
    from leakaudit.extraction import sample_stage
    from leakaudit.models.target import resolve_dtype

    opts = _audit_options(cfg, exp)
    dtype = resolve_dtype(device, opts.dtype)
    scores = score_model(
        sdir, ModelToAudit("base", shared.base_dir), shared.members + shared.non_members, len(shared.members),
        [m for m in shared.manifests if m.spec.design == "one_run"], lowercase=False, n_neighbours=0,
        device=device, token_budget=opts.token_budget, log=log, trust_remote_code=False, seed=opts.seed,
        exact_max=opts.exact_exposure_max, extraction_budget=opts.extraction_budget,
        extraction_guesses=opts.extraction_guesses, beam_width=opts.beam_width,
        dtype=dtype,
    )
    if opts.extraction.samples > 0:
        public = [r["text"] for r in read_jsonl(shared.data_dir / "public.jsonl")]
        sample_stage(sdir, "base", shared.base_dir, opts.extraction, public, device=device, dtype=dtype,
                     token_budget=opts.token_budget, trust_remote_code=False, log=log)
    return scores


def _copy_reference(sdir: Path, cdir: Path) -> None:
    """Copy the seed's base-model stages into a cell, whole or not at all (an interrupted copy left a
    stage.json without its outputs, which the stage then took as done)."""
    for sub in ("scores/base", "samples/base"):
        src, dst = sdir / sub, cdir / sub
        if (src / "stage.json").is_file() and not dst.exists():
            with atomic_dir(dst) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)


# ------------------------------------------------------------------------------ per cell


@dataclass(frozen=True)
class CellTask:
    experiment: Experiment
    out: str
    cell: CellSpec


def cell_dir(out: Path, cell: CellSpec) -> Path:
    return Path(out) / "cells" / cell.id


def cell_settings(exp: Experiment, cell: CellSpec, n_train: int):
    """The (TrainSettings, DPSettings | None) of a cell."""
    from leakaudit.train.loop import matched_settings

    cfg = exp.base
    lora = exp.config.lora if cell.mode == "lora" else None
    update: dict[str, Any] = {"seed": cell.seed, "lora": lora}
    if lora is not None and exp.config.lora_lr is not None:
        update["lr"] = exp.config.lora_lr
    dp_train: TrainSettings = cfg.dp_train.model_copy(update=update)
    if cell.dp:
        return dp_train, cfg.dp.model_copy(update={"target_epsilon": cell.epsilon, "noise_multiplier": None})
    if exp.config.matched_steps:
        # the DP cells' privacy record would give the same: steps and q = 1 / ceil(N / batch) depend on the
        # settings and N only, so every DP cell of this mode takes these steps, whatever its epsilon
        plain = matched_settings(dp_train, n_train)
    else:
        plain = cfg.finetune.model_copy(update=update)
    own_lr = getattr(exp.config.non_dp_lr, cell.mode)
    return (plain if own_lr is None else plain.model_copy(update={"lr": own_lr})), None


def _cell_key(exp: Experiment, cell: CellSpec, n_train: int) -> str:
    settings, dp = cell_settings(exp, cell, n_train)
    cfg = seed_config(exp, cell.seed)
    audit = cfg.model_dump(mode="json", exclude={"data", "canaries", "model", "pretrain", "finetune", "dp_train",
                                                 "dp", "device", "preset"})
    from leakaudit.audit import SCORE_VERSIONS

    return stable_hash({
        "version": EXPERIMENT_VERSION, "scoring": SCORE_VERSIONS, "record": RECORD_VERSION, "seed": _seed_key(cfg),
        "cell": cell.id,
        "train": settings.model_dump(mode="json"), "dp": dp.model_dump(mode="json") if dp else None,
        "audit": audit, "pii": [exp.config.pii_reconstruction_records, exp.config.pii_candidates],
        "exposure_min_repetitions": exp.config.exposure_min_repetitions,
    })


def cell_done(exp: Experiment, out: Path, cell: CellSpec) -> bool:
    """Whether the cell's ``cell.json`` was written for its current settings (with the training set's size it
    recorded: its seed's ``seed.json`` is missing while the seed is prepared again).  A ``cell.json`` without
    ``n_train`` predates the scoring version in the key, so it could never match: not done."""
    done = _marker(cell_dir(out, cell) / "cell.json")
    return done.get("n_train") is not None and done.get("key") == _cell_key(exp, cell, done["n_train"])


def run_cell(task: CellTask) -> dict:
    """Fine-tune and audit one cell (resuming its cached stages); writes and returns ``cell.json``."""
    from leakaudit.audit import ModelToAudit, run_audit
    from leakaudit.io import sha256_file
    from leakaudit.models.loading import load_model
    from leakaudit.pipeline import read_shared
    from leakaudit.report.schema import Results
    from leakaudit.runs import EventLog, device_name, stage, step_times
    from leakaudit.train.loop import save_trained, train_model

    exp, cell, out = task.experiment, task.cell, Path(task.out)
    cfg = seed_config(exp, cell.seed)
    sdir, cdir = seed_dir(out, cell.seed), cell_dir(out, cell)
    sinfo = read_json(sdir / "seed.json")
    cdir.mkdir(parents=True, exist_ok=True)
    log = EventLog(cdir)
    events_from = log.path.stat().st_size if log.path.is_file() else 0  # this run's steps (a cell may resume)
    device = _device(cfg)
    shared = read_shared(cfg, sdir)
    data_dir, can_dir, base_dir = shared.data_dir, shared.canaries_dir, shared.base_dir
    members, non_members, train_texts = shared.members, shared.non_members, shared.train_texts
    settings, dp = cell_settings(exp, cell, len(train_texts))
    key = _cell_key(exp, cell, len(train_texts))

    def build(tmp: Path) -> None:
        t = time.perf_counter()
        with log.timed("load base model"):
            loaded = load_model(base_dir, device=device)
        with warnings.catch_warnings(), log.timed("train", steps=settings.steps, dp=dp is not None):
            warnings.filterwarnings("ignore", message=".*[Oo]ptimal order.*")  # Opacus's accountant, at the end
            record = train_model(loaded.model, loaded.tokenizer, train_texts, settings, dp=dp)
        with log.timed("save model"):
            save_trained(loaded.model.cpu(), loaded.tokenizer, tmp, record)
        write_json(tmp / "timing.json", {"train_seconds": round(time.perf_counter() - t, 2)})

    model_key = {"base": read_json(base_dir / "stage.json")["key"], "record": RECORD_VERSION,
                 "train_sha256": sha256_file(can_dir / "train.jsonl"),
                 "train": settings.model_dump(mode="json"), "dp": dp.model_dump(mode="json") if dp else None}
    model_dir = stage(cdir, "model", model_key, build, log)
    t0 = time.perf_counter()
    shadows = _shadows(cfg, sdir, shared, device, log) if cfg.shadows else None
    _copy_reference(sdir, cdir)
    what = f"DP-SGD, target eps {cell.epsilon:g}" if cell.dp else "no DP"
    results: Results = run_audit(
        cdir, [ModelToAudit(cell.id, model_dir, f"{cell.mode} fine-tuning, {what}, seed {cell.seed}")],
        members, non_members, shared.manifests, device=device, options=_audit_options(cfg, exp.config),
        references={"base": base_dir}, shadows=shadows, log=log, command=f"leakaudit experiment ({exp.config.name})",
        extra_data_sha256={"train": sha256_file(can_dir / "train.jsonl")},
        preflight_warnings=sinfo.get("preflight_warnings", []), train_texts=train_texts,
        public_texts=[r["text"] for r in read_jsonl(data_dir / "public.jsonl")],
    )
    row = cell_metrics(results.models[cell.id], exp.config.exposure_min_repetitions)
    row.update({
        "cell": cell.id, "mode": cell.mode, "seed": cell.seed, "dp": cell.dp,
        "target_epsilon": cell.epsilon if cell.dp else None, "epsilon_label": _eps_label(cell.epsilon),
        "lr": settings.lr, "lora_rank": settings.lora.r if settings.lora else None,
        "train_seconds": read_json(model_dir / "timing.json")["train_seconds"],
        "audit_seconds": round(time.perf_counter() - t0, 2),
        "device": device_name(device), "platform": platform.platform(), "software": _software(),
        "run_dir": str(cdir.relative_to(out)),
        "base_sha256": _weights_sha256(base_dir),  # the model on disk, never a record that may be another's
    })
    # where this run's time went (seconds per step; not a metric: no part of the comparison)
    write_json(cdir / "cell.json", {"key": key, "n_train": len(train_texts), "metrics": row,
                                    "steps_seconds": step_times(log.path, events_from)})
    return row


def cell_metrics(model, min_reps: int = 16) -> dict:
    """The comparison's figures for one audited model (metrics only: no text, secret or PII)."""
    p = model.privacy
    inserted = [c for c in model.canaries if c.inserted]
    hi = [c.exposure_bits for c in inserted if c.repetitions >= min_reps]
    ref = [c.exposure_bits for c in model.canaries if not c.inserted]
    searched = [c for c in inserted if c.extracted is not None or c.extracted_beam is not None]
    best = max(model.mia.items(), key=lambda kv: (kv[1].tpr_at_fpr.get("0.01", 0.0), kv[1].auc), default=None)
    mem = model.memorization[0] if model.memorization else None
    one_run = [e for e in model.empirical_privacy if e.method == "one_run"]
    bound = max(one_run, key=lambda e: e.eps_lower_bound) if one_run else None
    ux, pii = model.untargeted_extraction, model.pii_extraction
    guessed = [c for c in model.canaries if c.extracted is not None and c.extraction_guesses_found is not None]
    # best-first searches that completed a secret (older runs, without the count: every search that ran)
    completed = ([c for c in guessed if c.extraction_guesses_found > 0] if guessed
                 else [c for c in model.canaries if c.extracted is not None])
    recorded = any(c.extraction_guesses is not None for c in model.canaries)  # older runs: no guesses
    return {
        "epsilon": p.epsilon, "delta": p.delta, "noise_multiplier": p.noise_multiplier, "steps": p.steps,
        "sample_rate": p.sample_rate, "dataset_size": p.dataset_size,
        "expected_batch": round(p.sample_rate * p.dataset_size, 2) if p.sample_rate and p.dataset_size else None,
        "perplexity": model.utility.non_member_perplexity,
        "member_loss": model.utility.member_loss, "non_member_loss": model.utility.non_member_loss,
        "exposure_max": max(hi) if hi else None,
        "exposure_median": statistics.median(hi) if hi else None,
        # canaries whose secret beat every null sample: their exposure is the interpolation's cap, a lower bound
        "exposure_at_cap": sum(c.rank == 1 for c in inserted if c.repetitions >= min_reps),
        "exposure_skewnorm_median": statistics.median(sk) if (sk := [
            c.exposure_bits_skewnorm for c in inserted
            if c.repetitions >= min_reps and c.exposure_bits_skewnorm is not None]) else None,
        "exposure_reference_median": statistics.median(ref) if ref else None,
        "n_exposure_canaries": len(hi),
        "best_tpr_at_1pct_fpr": best[1].tpr_at_fpr.get("0.01") if best else None,
        "best_attack": best[0] if best else None,
        "loss_auc": model.mia["loss"].auc if "loss" in model.mia else None,
        "loss_tpr_at_1pct_fpr": model.mia["loss"].tpr_at_fpr.get("0.01") if "loss" in model.mia else None,
        # None when nothing was measured: no search ran, or no best-first search completed a secret and no beam
        # search (which always completes) ran
        "canaries_extracted": (sum(bool(c.extracted) or bool(c.extracted_beam) for c in searched)
                               if searched and (completed or any(c.extracted_beam is not None for c in searched))
                               else None),
        "canaries_searched": len(searched),
        "extraction_searches_completed": len(completed) if guessed else None,
        # inserted canaries whose own secret was among the best-first search's guesses (None: no guess made)
        "canaries_within_guesses": (sum(c.extraction_guess is not None for c in inserted)
                                    if recorded and completed else None),
        # completed searches (inserted and reference canaries) whose first guess was another inserted canary's secret
        "other_secret_first": (sum(bool(c.extraction_first_guess_inserted) for c in completed)
                               if recorded and completed else None),
        "memorization_k_n": f"{mem.k}:{mem.n}" if mem else None,
        "memorization_exact_rate": mem.members.exact_match_rate if mem else None,
        "memorization_exact_rate_non_members": mem.non_members.exact_match_rate if mem else None,
        "untargeted_memorized": ux.n_memorized if ux else None,
        "untargeted_samples": ux.n_samples if ux else None,
        "pii_recall": pii.overall.recall if pii else None,
        "one_run_eps_lower_bound": bound.eps_lower_bound if bound else None,
        "one_run_best_possible": bound.best_possible if bound else None,
        # an empirical lower bound above the accountant's eps (any method): the DP training or its accounting is wrong
        "dp_guarantee_failed": any(e.exceeds_accountant for e in model.empirical_privacy),
    }


# ------------------------------------------------------------------------------ executors


@dataclass
class Outcome:
    label: str
    result: Any = None
    error: str | None = None
    not_started: bool = False  # left for a later run by the time budget


class Budget:
    """A wall-clock budget for a run (``--max-minutes``).

    A task starts only while the time left is at least the longest task of its kind so far (the
    first of a kind starts while any time is left), so a run stops between tasks instead of being
    cut off inside one; what was not started is left for the next run.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic,
                 then: dict[str, tuple[str, ...]] | None = None):
        self.clock = clock
        self.deadline = clock() + seconds
        self.longest: dict[str, float] = {}
        self.then = then or {}  # kinds of task that must fit after one of a kind (a seed: one of its cells)

    def allows(self, kind: str) -> bool:
        """Is there time for one more task of this kind and those that must follow it (at the longest so far)?"""
        kinds = (kind, *self.then.get(kind, ()))
        return self.clock() + sum(self.longest.get(k, 0.0) for k in kinds) < self.deadline

    def record(self, kind: str, seconds: float) -> None:
        self.longest[kind] = max(self.longest.get(kind, 0.0), seconds)

    def left(self) -> float:
        return self.deadline - self.clock()


def _clock(budget: Budget | None) -> Callable[[], float]:
    """Tasks are timed on the budget's clock when there is one (the time it counts), else on perf_counter."""
    return budget.clock if budget is not None else time.perf_counter


class Executor(ABC):
    """Runs a list of tasks (a module-level function applied to picklable arguments)."""

    name = "executor"

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], labels: Sequence[str],
            log: Callable[..., None], budget: Budget | None = None) -> list[Outcome]:
        """Run ``fn(task)`` for each task; an exception becomes the outcome's error, other tasks go on.

        With a ``budget``, a task the budget no longer allows is not started (``Outcome.not_started``).
        """


def _budget_stops(budget: Budget | None, kind: str, label: str, log: Callable[..., None]) -> bool:
    if budget is None or budget.allows(kind):
        return False
    log("task_not_started", f"{label}: not started, the time budget is spent (run again to continue)", task=label)
    return True


class LocalExecutor(Executor):
    """Each task in turn, in this process."""

    name = "local"

    def map(self, fn, tasks, labels, log, budget=None) -> list[Outcome]:
        out = []
        for task, label in zip(tasks, labels):
            if _budget_stops(budget, fn.__name__, label, log):
                out.append(Outcome(label, not_started=True))
                continue
            log("task_started", f"{label} ...", task=label)
            clock = _clock(budget)
            t0 = clock()
            try:
                res = fn(task)
            except Exception as e:  # noqa: BLE001 - one failed cell must not stop the grid
                log("task_failed", f"{label} failed: {type(e).__name__}: {e}", task=label,
                    traceback=traceback.format_exc())
                out.append(Outcome(label, error=f"{type(e).__name__}: {e}"))
                continue
            dt = clock() - t0
            if budget is not None:
                budget.record(fn.__name__, dt)
            log("task_finished", f"{label} done in {dt:.1f}s", task=label, seconds=round(dt, 2))
            out.append(Outcome(label, res))
        return out


def _in_job(fn: Callable[[Any], Any], task: Any, threads: int | None) -> Any:
    """What a submitit job runs: quiet Hugging Face, the CPU thread share, then the task."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        import torch

        torch.set_num_threads(threads)
    return fn(task)


class SubmititExecutor(Executor):
    """Tasks as submitit jobs: Slurm when available (or ``cluster="slurm"``), else local subprocesses.

    At most ``jobs`` run at once.  Local jobs share the machine's cores between them.  ``source`` (the experiment file)
    names where a bad parameter came from.
    """

    name = "submitit"

    def __init__(self, folder: str | Path, *, cluster: str | None = None, jobs: int = 1, timeout_min: int = 120,
                 parameters: dict[str, Any] | None = None, poll_s: float = 1.0, source: str = "submitit"):
        try:
            import submitit
        except ImportError:
            raise LeakauditError(
                "--executor submitit needs the submitit package: pip install 'leakaudit[cluster]'"
            ) from None
        self._submitit = submitit
        self.folder = Path(folder)
        self.jobs = max(1, jobs)
        self.poll_s = poll_s
        try:
            self.executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=cluster)
        except RuntimeError as e:  # no srun for --cluster slurm, say
            raise LeakauditError(f"--executor submitit: {str(e).splitlines()[0]}") from None
        self.cluster = self.executor.cluster
        params = {"timeout_min": timeout_min, "name": "leakaudit"}
        if self.cluster == "slurm":
            params["slurm_array_parallelism"] = self.jobs
        params.update(parameters or {})
        try:
            self.executor.update_parameters(**params)
        except (TypeError, ValueError, NameError) as e:  # NameError: an unknown parameter
            raise LeakauditError(f"{source}: field 'submitit.parameters': {e}") from None
        self.threads = None
        if self.cluster == "local":
            import os

            self.threads = max(1, (os.cpu_count() or 1) // self.jobs)

    def map(self, fn, tasks, labels, log, budget=None) -> list[Outcome]:
        pending = list(zip(range(len(tasks)), tasks, labels))
        running: list[tuple[int, str, Any, float]] = []
        results: dict[int, Outcome] = {}
        try:
            self._run(fn, pending, running, results, log, budget)
        except BaseException:  # interrupted or killed by an error: no job may go on writing into the run
            for _, label, job, _ in running:
                with contextlib.suppress(Exception):
                    job.cancel(check=False)
                    log("task_cancelled", f"{label}: submitit job {job.job_id} cancelled", task=label)
            raise
        return [results[i] for i in range(len(tasks))]

    def _run(self, fn, pending, running, results, log, budget) -> None:
        while pending or running:
            while pending and len(running) < self.jobs:
                i, task, label = pending.pop(0)
                if _budget_stops(budget, fn.__name__, label, log):
                    results[i] = Outcome(label, not_started=True)
                    continue
                job = self.executor.submit(_in_job, fn, task, self.threads)
                log("task_submitted", f"{label}: submitit job {job.job_id} ({self.cluster})", task=label,
                    job_id=str(job.job_id))
                running.append((i, label, job, _clock(budget)()))
            still = []
            for i, label, job, t0 in running:
                if not job.done():
                    still.append((i, label, job, t0))
                    continue
                try:
                    results[i] = Outcome(label, job.result())
                    dt = _clock(budget)() - t0
                    if budget is not None:
                        budget.record(fn.__name__, dt)
                    log("task_finished", f"{label} done in {dt:.1f}s", task=label, seconds=round(dt, 2))
                except Exception as e:  # noqa: BLE001 - submitit raises FailedJobError and others
                    msg = str(e).strip().splitlines()
                    err = msg[-1] if msg else type(e).__name__
                    log("task_failed", f"{label} failed (job {job.job_id}): {err}", task=label, error=str(e))
                    results[i] = Outcome(label, error=err)
            running[:] = still  # in place: the caller cancels what is still running if this is interrupted
            if running:
                time.sleep(self.poll_s)


def make_executor(kind: str, exp: Experiment, out: Path, *, jobs: int = 1, cluster: str | None = None) -> Executor:
    if jobs < 1:
        raise LeakauditError(f"--jobs must be >= 1 (got {jobs})")
    if kind == "local":
        if jobs != 1:
            raise LeakauditError("--jobs: the local executor runs one cell at a time; use --executor submitit")
        return LocalExecutor()
    if kind == "submitit":
        s = exp.config.submitit
        return SubmititExecutor(out / "submitit", cluster=cluster or s.cluster, jobs=jobs, timeout_min=s.timeout_min,
                                parameters=s.parameters, source=exp.source)
    raise LeakauditError(f"--executor: expected local or submitit (got '{kind}')")


# ------------------------------------------------------------------------------ the grid


class ExperimentFailed(RuntimeError):
    def __init__(self, failed: dict[str, str], paths: dict[str, Path]):
        self.failed, self.paths = failed, paths
        super().__init__(f"{len(failed)} task(s) failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))


@dataclass
class ExperimentRun:
    out: Path
    cells: list[dict]
    ran: list[str]
    skipped: list[str]
    paths: dict[str, Path]
    seconds: float
    left: list[str] = field(default_factory=list)  # cells not started: the time budget was spent


def run_experiment(
    exp: Experiment, out: str | Path, *, executor: Executor | None = None, echo: Callable[[str], None] | None = None,
    max_seconds: float | None = None,
) -> ExperimentRun:
    """Run (or resume) every cell of the grid into ``out`` and write the comparison.

    With ``max_seconds``, no seed or cell starts once the time left is shorter than the longest one
    so far (``ExperimentRun.left`` lists the cells left; running again continues).  A grid can go on
    in another directory or on another machine from its finished cells alone (``cells/*/cell.json``
    and ``seeds/*/seed.json``): a seed whose data and base model are missing is prepared again
    before its next cell (each cell records the hash of its base model; see ``base_models``).

    Raises :class:`ExperimentFailed` (after writing the comparison of the finished cells) when a
    seed or a cell failed; running again retries only what is unfinished.
    """
    from leakaudit.runs import EventLog

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    executor = executor or LocalExecutor()
    budget = Budget(max_seconds, then={"prepare_seed": ("run_cell",)}) if max_seconds is not None else None
    log = EventLog(out, echo)
    t0 = time.perf_counter()
    write_text_atomic(out / "experiment.yaml", yaml.safe_dump(_resolved(exp), sort_keys=False))
    cells = exp.cells()
    log("experiment_started", f"experiment {exp.config.name}: {len(cells)} cells, {len(exp.config.grid.seed)} "
        f"seed(s), executor {executor.name}, output {out}", cells=len(cells))
    failed: dict[str, str] = {}
    done = [c for c in cells if cell_done(exp, out, c)]
    for c in done:
        log("cell_skipped", f"[cached] cell {c.id}", cell=c.id)
    unfinished = {c.seed for c in cells if c not in done}
    todo_seeds = [s for s in exp.config.grid.seed
                  if not seed_done(exp, out, s) or (s in unfinished and not seed_stages_present(out, s))]
    for s in exp.config.grid.seed:
        if s not in todo_seeds:
            log("seed_skipped", f"[cached] seed {s}: data, canaries, base model", seed=s)
        elif seed_done(exp, out, s):
            log("seed_again", f"seed {s}: finished cells found but not its data and base model: preparing it again",
                seed=s)
    # seed by seed (a seed is prepared just before its cells) when cells run in turn or under a time
    # budget; all seeds, then all cells, when a cluster runs them side by side
    by_seed = isinstance(executor, LocalExecutor) or budget is not None
    groups = [[s] for s in exp.config.grid.seed] if by_seed else [list(exp.config.grid.seed)]
    ran: list[str] = []
    for group in groups:
        prep = [s for s in group if s in todo_seeds]
        if prep:
            outcomes = executor.map(prepare_seed, [SeedTask(exp, str(out), s) for s in prep],
                                    [f"seed {s}: data, canaries, base model" for s in prep], log, budget)
            failed.update({o.label: o.error for o in outcomes if o.error})
        ready = {s for s in group if seed_done(exp, out, s) and seed_stages_present(out, s)}
        todo = [c for c in cells if c.seed in ready and c not in done]
        if todo:
            outcomes = executor.map(run_cell, [CellTask(exp, str(out), c) for c in todo],
                                    [f"cell {c.id}" for c in todo], log, budget)
            failed.update({o.label: o.error for o in outcomes if o.error})
            ran += [c.id for c, o in zip(todo, outcomes) if not o.not_started]
    rows = finished_rows(exp, out)
    paths = write_comparison(exp, out, rows)
    dt = time.perf_counter() - t0
    finished = {r["cell"] for r in rows}
    left = [c.id for c in cells if c.id not in finished and f"cell {c.id}" not in failed]
    log("experiment_finished", f"comparison: {paths['html']} ({len(rows)}/{len(cells)} cells, {dt:.1f}s)",
        seconds=round(dt, 2), failed=sorted(failed), left=left)
    if failed:
        raise ExperimentFailed(failed, paths)
    return ExperimentRun(out, rows, ran, [c.id for c in done], paths, dt, left)


def finished_rows(exp: Experiment, out: Path) -> list[dict]:
    """The metrics of every cell finished for its current settings, in grid order."""
    return [read_json(cell_dir(out, c) / "cell.json")["metrics"] for c in exp.cells() if cell_done(exp, out, c)]


def rewrite_comparison(path: str | Path, out: str | Path) -> int:
    """Write the comparison of experiment file ``path`` from the cells finished under ``out``, running nothing
    (after a run was stopped before it could write one); returns the number of cells in it."""
    exp = load_experiment(Path(path))
    rows = finished_rows(exp, Path(out))
    write_comparison(exp, Path(out), rows)
    return len(rows)


def _resolved(exp: Experiment) -> dict:
    return {"experiment": exp.config.model_dump(mode="json"), "resolved_base": exp.base.model_dump(mode="json")}


def _shareable(config: dict) -> dict:
    """The resolved configuration for the comparison (a shared report): without the seeds of the canary specs
    and of the data, which regenerate every secret and PII value; ``config_sha256`` identifies what is left.

    A hash of the whole would give the seeds back: they are small integers, and trying a few against it
    finds them at once (found by review; the hash once covered them)."""
    def drop_seeds(part: Any) -> Any:
        if isinstance(part, dict):
            part = {k: v for k, v in part.items() if k != "seed"}
        return part

    out = json.loads(json.dumps(config))
    for section in (out["experiment"].get("base", {}), out["resolved_base"]):
        if isinstance(section.get("canaries"), list):
            section["canaries"] = [drop_seeds(c) for c in section["canaries"]]
        if isinstance(section.get("data"), dict):
            section["data"] = drop_seeds(section["data"])
    out["config_sha256"] = stable_hash(out)
    out["seeds_removed"] = "canaries[*].seed and data.seed (they regenerate the secrets); see experiment.yaml"
    return out


# ------------------------------------------------------------------------------ comparison

METRICS = (
    ("epsilon", "accountant ε", "{:.2f}"),
    ("perplexity", "held-out perplexity", "{:.2f}"),
    ("best_tpr_at_1pct_fpr", "best TPR @ 1% FPR", "{:.1%}"),
    ("loss_auc", "LOSS AUC", "{:.3f}"),
    ("exposure_median", "median exposure (bits)", "{:.2f}"),
    ("exposure_max", "max exposure (bits)", "{:.2f}"),
    ("exposure_skewnorm_median", "median exposure, skew-normal (bits)", "{:.2f}"),
    ("canaries_extracted", "canaries extracted", "{:g}"),
    ("canaries_within_guesses", "within the search's guesses", "{:g}"),
    ("other_secret_first", "another canary's secret first", "{:g}"),
    ("memorization_exact_rate", "memorization exact rate", "{:.1%}"),
    ("untargeted_memorized", "untargeted memorized", "{:g}"),
    ("pii_recall", "PII recall", "{:.1%}"),
    ("one_run_eps_lower_bound", "one-run ε lower bound", "{:.2f}"),
)
CSV_COLUMNS = (
    "cell", "mode", "seed", "dp", "target_epsilon", "epsilon_label", "epsilon", "delta", "noise_multiplier", "steps",
    "sample_rate", "expected_batch", "dataset_size", "lr", "lora_rank", "perplexity", "member_loss",
    "non_member_loss", "best_tpr_at_1pct_fpr", "best_attack", "loss_auc", "loss_tpr_at_1pct_fpr", "exposure_median",
    "exposure_max", "exposure_at_cap", "exposure_skewnorm_median", "exposure_reference_median", "n_exposure_canaries",
    "canaries_extracted", "canaries_searched",
    "extraction_searches_completed", "canaries_within_guesses", "other_secret_first", "memorization_k_n",
    "memorization_exact_rate", "memorization_exact_rate_non_members", "untargeted_memorized",
    "untargeted_samples", "pii_recall", "one_run_eps_lower_bound", "one_run_best_possible", "dp_guarantee_failed",
    "train_seconds", "audit_seconds", "device", "platform", "software", "run_dir", "base_sha256",
)


def _eps_order(label: str) -> float:
    return math.inf if label == "inf" else float(label)


def capped(row: dict, key: str) -> bool:
    """Whether a cell's exposure figure is the interpolation's cap (a lower bound): the median when at least half
    of its canaries beat every null sample, the maximum when one did."""
    at_cap, n = row.get("exposure_at_cap") or 0, row.get("n_exposure_canaries") or 0
    return (key == "exposure_median" and n > 0 and 2 * at_cap >= n) or (key == "exposure_max" and at_cap > 0)


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation (over seeds), min, max and n of each metric per (mode, epsilon); ``at_cap``: some
    seed's value is a lower bound (:func:`capped`)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["epsilon_label"]), []).append(r)
    out = []
    for (mode, label), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -_eps_order(kv[0][1]))):
        g: dict[str, Any] = {"mode": mode, "epsilon_label": label, "n_seeds": len(rs),
                             "seeds": sorted(r["seed"] for r in rs)}
        for key, _, _ in METRICS:
            vals = [float(r[key]) for r in rs if r.get(key) is not None and math.isfinite(float(r[key]))]
            g[key] = {
                "mean": statistics.fmean(vals) if vals else None,
                "std": statistics.stdev(vals) if len(vals) > 1 else None,  # one value: no spread measured
                "min": min(vals) if vals else None, "max": max(vals) if vals else None, "n": len(vals),
                "at_cap": any(capped(r, key) for r in rs),
            }
        out.append(g)
    return out


def matched_check(rows: list[dict]) -> list[dict]:
    """Per (mode, seed): do the non-DP cells take the DP cells' steps and expected batch?  (With both arms'
    learning rates: they differ where the experiment gives the non-DP cells their own.)"""
    out = []
    keys = sorted({(r["mode"], r["seed"]) for r in rows})
    for mode, seed in keys:
        rs = [r for r in rows if r["mode"] == mode and r["seed"] == seed]
        dp = [r for r in rs if r["dp"]]
        plain = [r for r in rs if not r["dp"]]
        if not dp or not plain:
            continue
        ok = all(p["steps"] == d["steps"] and abs((p["expected_batch"] or 0) - (d["expected_batch"] or 0)) <= 1
                 for p in plain for d in dp)
        out.append({"mode": mode, "seed": seed, "matched": ok, "dp_steps": dp[0]["steps"],
                    "dp_expected_batch": dp[0]["expected_batch"], "non_dp_steps": plain[0]["steps"],
                    "non_dp_batch": plain[0]["expected_batch"], "dp_lr": dp[0].get("lr"),
                    "non_dp_lr": plain[0].get("lr")})
    return out


def _software() -> str:
    """The packages that make a cell's numbers, as one line (recorded per cell: a grid may run on several machines)."""
    from leakaudit.runs import package_versions

    v = package_versions()
    return ", ".join(f"{k} {v[k]}" for k in ("leakaudit", "python", "torch", "transformers", "opacus") if k in v)


def _machine(rows: list[dict]) -> dict:
    """Where the cells ran (per-cell device, platform and software, counted) and where this comparison was written."""
    from collections import Counter

    from leakaudit.runs import package_versions

    versions = package_versions()
    for pkg in ("peft", "matplotlib", "submitit"):
        try:
            from importlib import metadata

            versions[pkg] = metadata.version(pkg)
        except Exception:  # noqa: BLE001
            pass
    ran_on = Counter((r.get("device") or "", r.get("platform") or "", r.get("software") or "") for r in rows)
    return {
        "devices": sorted({r["device"] for r in rows if r.get("device")}),
        "cells_ran_on": [{"device": d, "platform": p, "software": s, "cells": n}
                         for (d, p, s), n in sorted(ran_on.items())],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
    }


def write_comparison(exp: Experiment, out: Path, rows: list[dict]) -> dict[str, Path]:
    """Write comparison.json, .csv, .md and .html (and figures/*.png) into ``out``."""
    out = Path(out)
    rows = sorted(rows, key=lambda r: (r["mode"], -_eps_order(r["epsilon_label"]), r["seed"]))
    summary = summarize(rows)
    check = matched_check(rows)
    base_ppl = {}
    for seed in exp.config.grid.seed:  # from a seed.json of the current settings only
        info = _marker(seed_dir(out, seed) / "seed.json") if seed_done(exp, out, seed) else {}
        if info.get("base_perplexity") is not None:
            base_ppl[str(seed)] = info["base_perplexity"]
    expected = [c.id for c in exp.cells()]
    doc = {
        "experiment": exp.config.name,
        "description": exp.config.description,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "grid": {"epsilon": [_eps_label(e) for e in exp.config.grid.epsilon], "seed": exp.config.grid.seed,
                 "mode": exp.config.grid.mode},
        "matched_steps": exp.config.matched_steps,
        "matched_check": check,
        "base_model_perplexity": base_ppl,
        "base_models": _base_models(rows),
        "exposure_min_repetitions": exp.config.exposure_min_repetitions,
        "n_cells": len(expected),
        "missing_cells": [c for c in expected if c not in {r["cell"] for r in rows}],
        "machine": _machine(rows),
        "cells": rows,
        "summary": summary,
        "config": _shareable(_resolved(exp)),
    }
    paths = {k: out / f"comparison.{k}" for k in ("json", "csv", "md", "html")}
    write_json(paths["json"], _json_safe(doc))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in CSV_COLUMNS})
    write_text_atomic(paths["csv"], buf.getvalue())
    figures = comparison_figures(rows, exp.config.grid.epsilon, reps=exp.config.exposure_min_repetitions,
                                 base_perplexity=list(base_ppl.values()))
    fig_dir = out / "figures"
    fig_files = {}
    for name, png in figures.items():
        fig_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(fig_dir / f"{name}.png", png)
        fig_files[name] = f"figures/{name}.png"
    write_text_atomic(paths["md"], _markdown(doc, fig_files))
    write_text_atomic(paths["html"], _html(doc, figures))
    return {"json": paths["json"], "csv": paths["csv"], "markdown": paths["md"], "html": paths["html"]}


def _base_models(rows: list[dict]) -> dict[str, list[str]]:
    """Per seed, the base models (hashes of their weights) its finished cells were fine-tuned from: one,
    unless the seed was prepared again (on another machine: training on a GPU is not bitwise repeatable)."""
    out: dict[str, set[str]] = {}
    for r in rows:
        if r.get("base_sha256"):
            out.setdefault(str(r["seed"]), set()).add(r["base_sha256"])
    return {seed: sorted(v) for seed, v in sorted(out.items())}


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


FIGURES = {
    "leakage_tpr": ("best_tpr_at_1pct_fpr", "Membership inference: best TPR at 1% FPR", "TPR at 1% FPR", 0.01),
    "leakage_exposure": ("exposure_median", "Canary exposure (inserted ≥{reps}×, median)", "exposure (bits)", None),
    "utility_perplexity": ("perplexity", "Utility: held-out perplexity (lower is better)", "perplexity", None),
    "empirical_epsilon": ("one_run_eps_lower_bound", "One-run audit: empirical ε lower bound", "ε lower bound", None),
}
MODE_STYLE = {"full": ("#1f77b4", "o"), "lora": ("#d62728", "s")}


def comparison_figures(
    rows: list[dict], epsilons: Sequence[float], *, reps: int = 16, base_perplexity: Sequence[float] = ()
) -> dict[str, bytes]:
    """PNG figures: each metric against epsilon (evenly spaced, ∞ = no DP at the right), one line per mode.

    A line joins the means over seeds; the bars span mean ± one standard deviation and the faint
    points are the single seeds.  Baselines are grey: chance (1% TPR), the median exposure of the
    reference canaries (never inserted), the base model's perplexity, the accountant's epsilon.
    """
    if not rows:
        return {}
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.style import context

    labels = [_eps_label(e) for e in sorted(epsilons)]
    xpos = {lab: i + (0.5 if lab == "inf" and i else 0.0) for i, lab in enumerate(labels)}  # a gap before ∞
    modes = sorted({r["mode"] for r in rows})
    figs = {}
    for name, (key, title, ylabel, chance) in FIGURES.items():
        if not any(r.get(key) is not None for r in rows):
            continue
        with context("default"):
            fig = Figure(figsize=(6.0, 4.0), dpi=100)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(1, 1, 1)
            for j, mode in enumerate(modes):
                color, marker = MODE_STYLE.get(mode, ("#2ca02c", "^"))
                off = (j - (len(modes) - 1) / 2) * 0.08
                xs, means, stds = [], [], []
                for lab in labels:
                    vals = [float(r[key]) for r in rows if r["mode"] == mode and r["epsilon_label"] == lab
                            and r.get(key) is not None and math.isfinite(float(r[key]))]
                    if not vals:
                        continue
                    x = xpos[lab] + off
                    ax.scatter([x] * len(vals), vals, color=color, alpha=0.3, s=14, linewidths=0)
                    xs.append(x)
                    means.append(statistics.fmean(vals))
                    stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
                if xs:
                    ax.errorbar(xs, means, yerr=stds, color=color, marker=marker, capsize=3, label=mode)
            if key == "one_run_eps_lower_bound":
                fin = [e for e in sorted(epsilons) if math.isfinite(e)]
                if fin:
                    ax.plot([xpos[_eps_label(e)] for e in fin], fin, color="grey", ls=":", label="accountant ε")
            if chance is not None:
                ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
            ref = [float(r["exposure_reference_median"]) for r in rows
                   if r.get("exposure_reference_median") is not None]
            if key == "exposure_median" and ref:
                ax.axhline(statistics.fmean(ref), color="grey", ls="--", lw=1, label="reference canaries")
            if key == "perplexity" and base_perplexity:
                ax.axhline(statistics.fmean(base_perplexity), color="grey", ls="--", lw=1, label="base model")
            ax.set_xticks([xpos[lab] for lab in labels], ["∞\n(no DP)" if lab == "inf" else lab for lab in labels])
            ax.set_xlim(-0.5, max(xpos.values()) + 0.5)
            ax.set_xlabel("target ε (DP-SGD)")
            ax.set_ylabel(ylabel)
            ax.set_title(title.format(reps=reps), fontsize=11)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best", framealpha=0.8)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
            figs[name] = buf.getvalue()
    return figs


def _fmt(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return fmt.format(v)


def _summary_cell(g: dict, key: str, fmt: str) -> str:
    s = g[key]
    if s["mean"] is None:
        return "—"
    text = ("≥ " if s.get("at_cap") else "") + _fmt(s["mean"], fmt)
    if s["n"] > 1:
        text += " ± " + _fmt(s["std"], fmt)
    if s["n"] < g["n_seeds"]:  # not measured (or not finite, e.g. a diverged model's perplexity) in some seeds
        text += f" ({s['n']} of {g['n_seeds']} seeds)"
    return text


def _tables(doc: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    head = ["mode", "target ε", "seeds", *[label for _, label, _ in METRICS]]
    body = [[g["mode"], g["epsilon_label"], str(g["n_seeds"]), *[_summary_cell(g, k, f) for k, _, f in METRICS]]
            for g in doc["summary"]]
    chead = ["cell", "steps", "expected batch", "noise σ", *[label for _, label, _ in METRICS], "best attack",
             "train s", "audit s"]
    cbody = [[r["cell"], _fmt(r["steps"], "{:g}"), _fmt(r["expected_batch"], "{:g}"),
              _fmt(r["noise_multiplier"], "{:.3f}"),
              *[("≥ " if capped(r, k) else "") + _fmt(r.get(k), f) for k, _, f in METRICS],
              r.get("best_attack") or "—", _fmt(r.get("train_seconds"), "{:.0f}"),
              _fmt(r.get("audit_seconds"), "{:.0f}")]
             for r in doc["cells"]]
    return head, body, chead, cbody


def _md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def _worse_than_base(doc: dict) -> list[str]:
    """Cells whose held-out perplexity is above their seed's base model's, and which of them overfit (non-DP,
    member loss under half the non-member loss): those reached the matched settings' leakage, not the
    utility a non-DP run could reach."""
    base = doc.get("base_model_perplexity") or {}
    worse, overfit = [], []
    for c in doc["cells"]:
        b, p = base.get(str(c.get("seed"))), c.get("perplexity")
        if b is None or p is None or p <= b:
            continue
        worse.append(f"{c['cell']} ({p:.2f} vs {b:.2f})")
        m, n = c.get("member_loss"), c.get("non_member_loss")
        if not c.get("dp") and m is not None and n is not None and m < n / 2:
            overfit.append(f"{c['cell']} (member loss {m:.2f}, non-member {n:.2f})")
    out = []
    if worse:
        out.append("Held-out perplexity above the base model's (fine-tuning did not improve utility) in "
                   + ", ".join(worse) + ".")
    if overfit:
        out.append("Overfit: " + ", ".join(overfit) + ". Their leakage is an upper end of these settings; their "
                   "utility is not the best a non-DP run reaches (a lower learning rate or fewer steps would do "
                   "better), so compare utility across eps with care.")
    return out


def _join_modes(modes) -> str:
    modes = sorted(set(modes))
    return ("mode " if len(modes) == 1 else "modes ") + " and ".join(modes) + " take"


def _notes(doc: dict) -> list[str]:
    notes = []
    if doc["matched_steps"] and not doc["matched_check"]:
        notes.append("Matched steps: asked for, but no mode and seed has both a DP and a non-DP cell finished yet, so "
                     "nothing has been compared.")
    elif doc["matched_steps"]:
        bad = [c for c in doc["matched_check"] if not c["matched"]]
        own = sorted({(c["mode"], c.get("dp_lr"), c.get("non_dp_lr")) for c in doc["matched_check"]
                      if c.get("non_dp_lr") != c.get("dp_lr")})
        if own:
            lrs = "; ".join(f"{m}: DP {d:g}, non-DP {p:g}" for m, d, p in own)
            what = ("the optimizer steps and expected batch size of the DP cells of its mode; the non-DP cells of "
                    f"{_join_modes(m for m, _, _ in own)} a learning rate of their own ({lrs}): there clipping, noise "
                    "and the learning rate differ.")
        else:
            what = ("the optimizer steps, expected batch size and learning rate of the DP cells of its mode; "
                    "only clipping and noise differ.")
        notes.append(
            "Matched steps: every non-DP cell took " + what
            + (" MISMATCH in " + ", ".join(f"{c['mode']} seed {c['seed']}" for c in bad) + "." if bad else "")
        )
    else:
        notes.append("Steps not matched: non-DP cells used the base config's finetune settings, so part of any "
                     "difference may come from the number of steps and the batch size, not from DP.")
    notes.append(f"Exposure: over canaries inserted at least {doc['exposure_min_repetitions']} times. Best TPR: "
                 "the largest TPR at 1% FPR over the attacks run. Spread: ± one standard deviation over seeds.")
    if any(capped(r, k) for r in doc["cells"] for k in ("exposure_median", "exposure_max")):
        notes.append("≥: a lower bound. The interpolation's exposure cannot exceed log2 of the null samples; at "
                     "least half of the canaries (median) or one (max) beat every null sample there. The skew-normal "
                     "column estimates past the cap (a fitted tail, not a measurement); the figure's points at the "
                     "cap are lower bounds too.")
    if doc["base_model_perplexity"]:
        vals = list(doc["base_model_perplexity"].values())
        notes.append(f"Base model (pretrained on public data, before fine-tuning): held-out perplexity "
                     f"{statistics.fmean(vals):.2f}.")
    failed = [c["cell"] for c in doc["cells"] if c.get("dp_guarantee_failed")]
    if failed:  # first: nothing else in the comparison can be trusted for these cells
        notes.insert(0, "DP GUARANTEE FAILED in " + ", ".join(failed) + ": an empirical lower bound on eps lies above "
                     "the accountant's eps, so the DP training or its accounting is broken (see each cell's report).")
    notes += _worse_than_base(doc)
    several = {seed: len(h) for seed, h in doc.get("base_models", {}).items() if len(h) > 1}
    if several:
        notes.append("Base models: the cells of " + ", ".join(f"seed {s} come from {n}" for s, n in several.items())
                     + " base models (the seed was prepared again in a later run, from the same data and settings; "
                     "training on a GPU is not bitwise repeatable). Per-cell hashes: comparison.json, base_sha256.")
    if doc["missing_cells"]:
        notes.append(f"Missing cells (not finished): {', '.join(doc['missing_cells'])}.")
    return notes


def _machine_lines(doc: dict) -> list[str]:
    m = doc["machine"]
    lines = [f"Device: {', '.join(m['devices']) or '—'}"]
    for g in m.get("cells_ran_on", []):
        n = f"{g['cells']} cell{'s' if g['cells'] != 1 else ''}"
        if g["platform"] or g["software"]:
            lines.append(f"Ran {n} on: {g['device'] or 'an unrecorded device'}; {g['platform']}; {g['software']}")
        else:  # cells finished before the platform was kept with them
            lines.append(f"Ran {n} on: {g['device'] or 'an unrecorded device'} (platform and software not recorded)")
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items())
    return [*lines, f"Comparison written on: {m['platform']}; {v}"]


FIGURE_TEXT = {
    "leakage_tpr": "Leakage to membership inference: the best attack's TPR at 1% FPR (chance: 1%).",
    "leakage_exposure": "Leakage of repeated canaries: median exposure in bits (higher: the model ranks the true "
    "secret above more random ones).",
    "utility_perplexity": "Utility: perplexity on held-out records (lower is better).",
    "empirical_epsilon": "Empirical ε lower bound from the one-run canary audit beside the accountant's ε "
    "(the bound must stay below it).",
}


def _markdown(doc: dict, figures: dict[str, str]) -> str:
    head, body, chead, cbody = _tables(doc)
    g = doc["grid"]
    lines = [
        f"# Experiment {doc['experiment']}: DP versus non-DP", "",
        *([doc["description"], ""] if doc["description"] else []),
        f"Grid: ε {', '.join(g['epsilon'])} × "
        f"seeds {', '.join(map(str, g['seed']))} × modes {', '.join(g['mode'])} "
        f"({len(doc['cells'])}/{doc['n_cells']} cells finished). Created {doc['created']}.", "",
        *[f"- {line}" for line in _machine_lines(doc)], "",
        "## Summary (mean ± sd over seeds)", "", _md_table(head, body), "",
        *[f"- {n}" for n in _notes(doc)], "",
        "## Figures", "",
    ]
    for name, path in figures.items():
        lines += [FIGURE_TEXT[name], "", f"![{name}]({path})", ""]
    lines += ["## Cells", "", _md_table(chead, cbody), "",
              "Each cell's own audit report lies in `cells/<cell>/report.html`.", ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}
th,td{border:1px solid #ccc;padding:0.3em 0.5em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:0.5em;vertical-align:top;max-width:600px}
figcaption{font-size:0.85em;color:#444}.meta{color:#555;font-size:0.9em}
"""


def _html_table(head: list[str], body: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{rows}</tbody></table>"


def _html(doc: dict, figures: dict[str, bytes]) -> str:
    import base64

    head, body, chead, cbody = _tables(doc)
    g = doc["grid"]
    figs = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(FIGURE_TEXT[name])}</figcaption></figure>"
        for name, png in figures.items()
    )
    title = f"Experiment {doc['experiment']}: DP versus non-DP"
    grid = (f"Grid: ε {', '.join(g['epsilon'])} × seeds "
            f"{', '.join(map(str, g['seed']))} × modes {', '.join(g['mode'])} ({len(doc['cells'])}/{doc['n_cells']} "
            f"cells finished). Created {doc['created']}.")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(doc['description'])}</p>" if doc["description"] else "",
        f"<p>{html.escape(grid)}</p>",
        "<ul class='meta'>" + "".join(f"<li>{html.escape(x)}</li>" for x in _machine_lines(doc)) + "</ul>",
        "<h2>Summary (mean ± sd over seeds)</h2>", _html_table(head, body),
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in _notes(doc)) + "</ul>",
        "<h2>Figures</h2>", figs or "<p>No finished cells.</p>",
        "<h2>Cells</h2>", _html_table(chead, cbody),
        "<p class='meta'>Each cell's own audit report lies in cells/&lt;cell&gt;/report.html.</p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


__all__ = [
    "CellSpec", "Executor", "Experiment", "ExperimentConfig", "ExperimentFailed", "LocalExecutor",
    "SubmititExecutor", "cell_metrics", "load_experiment", "make_executor", "run_experiment", "write_comparison",
]
