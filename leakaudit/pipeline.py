"""The end-to-end demo: data -> canaries -> base model -> plain and DP fine-tuning -> audit -> report.

Every stage is cached in the run directory by a hash of its inputs (see :mod:`leakaudit.runs`),
so an interrupted demo resumes where it stopped and a finished one re-renders in seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from leakaudit.audit import AuditOptions, ModelToAudit, run_audit
from leakaudit.canaries.manifest import CanaryManifest, generate_canaries, insert_canaries
from leakaudit.canaries.preflight import preflight_all
from leakaudit.config import DemoConfig
from leakaudit.data.split import check_no_overlap, split_members
from leakaudit.data.synthetic import make_corpora
from leakaudit.extraction import ExtractionOptions
from leakaudit.io import read_jsonl, sha256_file, stable_hash, write_json, write_jsonl, write_text_atomic
from leakaudit.models.loading import load_model, load_tokenizer
from leakaudit.models.target import default_device
from leakaudit.models.tiny import build_model, train_tokenizer
from leakaudit.report.schema import Results
from leakaudit.runs import EventLog, clear_results, stage
from leakaudit.train.loop import RECORD_VERSION, TrainSettings, dp_delta, save_trained, train_model
from leakaudit.train.shadows import train_shadows

BarFactory = Callable[[str, int], contextlib.AbstractContextManager]


@contextlib.contextmanager
def _no_bar(description: str, total: int) -> Iterator[Callable[[int, int, float], None]]:
    yield lambda step, total, loss: None


def run_demo(
    cfg: DemoConfig,
    run_dir: str | Path,
    *,
    echo: Callable[[str], None] | None = None,
    bar: BarFactory = _no_bar,
    command: str = "leakaudit demo",
) -> Results:
    """Run (or resume) the whole demo in ``run_dir`` and return its results."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(run_dir, echo)
    device = cfg.device or default_device()
    cfg_json = cfg.model_dump(mode="json")
    clear_results(run_dir)  # until this run's are written, no results of earlier settings beside its config
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg_json, sort_keys=False))
    log("run_started", f"run directory {run_dir} (device {device})", config_sha256=stable_hash(cfg_json))

    shared = shared_stages(cfg, run_dir, log, device, bar)
    data_dir, can_dir, base_dir = shared.data_dir, shared.canaries_dir, shared.base_dir
    manifests, train_texts, warnings = shared.manifests, shared.train_texts, shared.preflight_warnings
    members, non_members = shared.members, shared.non_members
    base_key, can_key = shared.keys["base"], shared.keys["canaries"]

    # 4. fine-tuning, plain and DP --------------------------------------------------------
    def finetune(settings: TrainSettings, dp, label: str):
        def build(tmp: Path) -> None:
            loaded = load_model(base_dir, device=device)
            record = _train(loaded.model, loaded.tokenizer, train_texts, settings, dp, bar, label)
            save_trained(loaded.model.cpu(), loaded.tokenizer, tmp, record)

        return build

    tune_key = {"base": base_key, "canaries": can_key, "record": RECORD_VERSION}
    nondp_dir = stage(
        run_dir, "models/non_dp", {**tune_key, "train": cfg_json["finetune"]},
        finetune(cfg.finetune, None, "fine-tuning without DP"), log,
    )
    dp_dir = stage(
        run_dir, "models/dp", {**tune_key, "train": cfg_json["dp_train"], "dp": cfg_json["dp"]},
        finetune(cfg.dp_train, cfg.dp, f"fine-tuning with DP-SGD ({_dp_label(cfg.dp)})"), log,
    )

    # 5. shadow models (optional) and the audit ---------------------------------------------
    shadows = None
    population = members + non_members
    if cfg.shadows:
        shadows = train_shadows(
            run_dir / "shadows", base_dir, [r["text"] for r in population], cfg.shadows, cfg.finetune,
            device=device, log=log, seed=cfg.seed, bar=bar,
        )
    models = [
        ModelToAudit("base", base_dir, "pretrained on public data only (never saw the private records)", control=True),
        ModelToAudit("non_dp", nondp_dir, "fine-tuned on the members and canaries without DP"),
        ModelToAudit("dp", dp_dir, f"fine-tuned with DP-SGD, {_dp_label(cfg.dp)}"),
    ]
    options = audit_options(cfg)
    return run_audit(
        run_dir, models, members, non_members, manifests, device=device, options=options,
        references={"base": base_dir}, shadows=shadows, log=log, command=command,
        extra_data_sha256={"train": sha256_file(can_dir / "train.jsonl")}, preflight_warnings=warnings,
        train_texts=train_texts, public_texts=[r["text"] for r in read_jsonl(data_dir / "public.jsonl")],
        write_config=False,  # config.yaml is the demo's own (written above), which results.json hashes
    )


@dataclass(frozen=True)
class SharedStages:
    """What every run of one configuration and seed shares: the data, the canaries, the base model.

    Built (or found) by :func:`shared_stages` in ``data/``, ``canaries/`` and ``models/base/`` of a
    run directory, or read back by :func:`read_shared`; the demo and each seed of an experiment
    use the same stages and cache keys.
    """

    data_dir: Path
    canaries_dir: Path
    base_dir: Path
    members: list[dict]
    non_members: list[dict]
    manifests: list[CanaryManifest]
    train_texts: list[str]  # the members with the canaries inserted
    keys: dict[str, dict] = field(default_factory=dict)  # the stage keys "data", "canaries", "base" (when built)
    preflight_warnings: list[str] = field(default_factory=list)


def read_shared(cfg: DemoConfig, run_dir: Path, **extra: Any) -> SharedStages:
    """The shared stages of ``run_dir`` as they are on disk (built earlier by :func:`shared_stages`)."""
    run_dir = Path(run_dir)
    data_dir, can_dir = run_dir / "data", run_dir / "canaries"
    return SharedStages(
        data_dir, can_dir, run_dir / "models" / "base",
        members=read_jsonl(data_dir / "members.jsonl"), non_members=read_jsonl(data_dir / "non_members.jsonl"),
        manifests=[CanaryManifest.load(can_dir / f"manifest-{s.name}.json") for s in cfg.canaries],
        train_texts=[r["text"] for r in read_jsonl(can_dir / "train.jsonl")], **extra,
    )


def shared_stages(
    cfg: DemoConfig, run_dir: Path, log: EventLog, device: str, bar: BarFactory = _no_bar, *, dp: bool = True
) -> SharedStages:
    """Stages 1-3 (data, canaries, base model) and the canary pre-flight, each cached in ``run_dir``;
    ``dp``: whether models will be trained with ``cfg.dp`` (its delta is then checked before the base model)."""
    cfg_json = cfg.model_dump(mode="json")
    data_key = {"data": cfg_json["data"]}

    def build_data(tmp: Path) -> None:
        private, public = make_corpora(cfg.data.n_private, cfg.data.n_public, seed=cfg.data.seed)
        members, non_members, split = split_members(
            private, member_fraction=cfg.data.member_fraction, seed=cfg.data.seed
        )
        check_no_overlap([r["text"] for r in members], [r["text"] for r in non_members])
        write_jsonl(tmp / "public.jsonl", public)
        write_jsonl(tmp / "members.jsonl", members)
        write_jsonl(tmp / "non_members.jsonl", non_members)
        write_json(tmp / "split.json", split.model_dump(mode="json"))

    data_dir = stage(run_dir, "data", data_key, build_data, log)
    can_key = {**data_key, "canaries": cfg_json["canaries"], "seed": cfg.seed}

    def build_canaries(tmp: Path) -> None:
        rows = read_jsonl(data_dir / "members.jsonl")
        for i, spec in enumerate(cfg.canaries):
            manifest = generate_canaries(spec)
            manifest.save(tmp / f"manifest-{spec.name}.json")
            rows = insert_canaries(rows, manifest, seed=cfg.seed + i)
        write_jsonl(tmp / "train.jsonl", rows)

    can_dir = stage(run_dir, "canaries", can_key, build_canaries, log)
    if dp:  # a delta the DP training would refuse is refused now, before the base model is trained
        dp_delta(cfg.dp, len(read_jsonl(can_dir / "train.jsonl")), where="dp.delta")
    base_key = {**data_key, "model": cfg_json["model"], "pretrain": cfg_json["pretrain"], "seed": cfg.seed}

    def build_base(tmp: Path) -> None:
        public = [r["text"] for r in read_jsonl(data_dir / "public.jsonl")]
        tok = train_tokenizer(public, vocab_size=cfg.model.vocab_size)
        m = cfg.model
        model = build_model(
            tok, arch=m.arch, n_layer=m.n_layer, n_embd=m.n_embd, n_head=m.n_head, context=m.context, seed=cfg.seed
        ).to(device)
        record = _train(model, tok, public, cfg.pretrain, None, bar, "pretraining base model")
        save_trained(model.cpu(), tok, tmp, record)

    base_dir = stage(run_dir, "models/base", base_key, build_base, log)
    shared = read_shared(cfg, run_dir, keys={"data": data_key, "canaries": can_key, "base": base_key})
    # canary pre-flight: will the training loss see every inserted canary?
    warnings = preflight_all(
        shared.manifests, shared.train_texts, load_tokenizer(base_dir),
        max_length=min(cfg.finetune.max_length, cfg.dp_train.max_length, cfg.model.context),  # training cuts there
    )
    for w in warnings:
        log("preflight_warning", f"warning: {w}", warning=w)
    return replace(shared, preflight_warnings=warnings)


def audit_options(cfg: DemoConfig, **extraction: Any) -> AuditOptions:
    """The audit settings of a demo configuration (``extraction`` overrides ExtractionOptions fields)."""
    return AuditOptions(
        attacks=cfg.attacks, params=cfg.attack_params, n_neighbours=cfg.n_neighbours,
        token_budget=cfg.token_budget, seed=cfg.seed, exact_exposure_max=cfg.exact_exposure_max,
        extraction_budget=cfg.extraction_budget, extraction_guesses=cfg.extraction_guesses,
        beam_width=cfg.beam_width, dtype=cfg.dtype,
        extraction=ExtractionOptions(
            memorization=[tuple(x) for x in cfg.memorization], memorization_max_records=cfg.memorization_max_records,
            samples=cfg.extraction_samples, sample_tokens=cfg.sample_tokens, verify_ngram=cfg.verify_ngram,
            seed=cfg.seed, **extraction,
        ),
    )


def _dp_label(dp) -> str:
    if dp.target_epsilon is not None:
        return f"target eps {dp.target_epsilon:g}"
    return f"noise multiplier {dp.noise_multiplier:g}"


def _train(model, tok, texts, settings, dp, bar: BarFactory, label: str):
    n_steps = settings.steps or settings.epochs * max(1, -(-len(texts) // settings.batch_size))
    with bar(label, n_steps) as update:
        return train_model(model, tok, texts, settings, dp=dp, progress=update)

