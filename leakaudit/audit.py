"""The audit stage: score each model once, run the attacks, measure canary exposure.

Used by ``leakaudit demo`` and ``leakaudit audit`` alike.  For each model a cached stage
``scores/<name>/`` holds the score table (``mia.parquet``: per-sample token log-probs and
every attack's score) and the canary exposures (``canaries.json``: ids and hashes, no
secrets); :func:`model_result` turns them into the typed results.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from leakaudit import __version__
from leakaudit.attacks import (
    attack_result,
    build_score_table,
    canary_exposures,
    exposure_groups,
    load_score_table,
    run_attack,
    save_score_table,
)
from leakaudit.attacks.exposure import null_secrets
from leakaudit.canaries.manifest import CanaryManifest
from leakaudit.io import read_json, sha256_file, sha256_text, stable_hash, write_json, write_text_atomic
from leakaudit.models.loading import hash_model_dir, load_model
from leakaudit.models.target import Target
from leakaudit.report.render import write_reports
from leakaudit.report.schema import (
    CanaryResult,
    CanarySpecSummary,
    ModelResult,
    PrivacyRecord,
    Results,
    RunInfo,
    Utility,
)
from leakaudit.runs import EventLog, device_name, git_revision, package_versions, stage


@dataclass(frozen=True)
class ModelToAudit:
    name: str
    path: Path
    description: str = ""


def records_hash(records: list[dict]) -> str:
    return sha256_text("\n".join(sha256_text(r["text"]) for r in records))


def spec_summaries(manifests: list[CanaryManifest]) -> list[CanarySpecSummary]:
    out = []
    for m in manifests:
        fmt = m.spec.secret_format
        n_null = len(null_secrets(m))
        out.append(
            CanarySpecSummary(
                name=m.spec.name, format=m.spec.secret.format, length=m.spec.secret.length,
                space_size=fmt.space_size, max_exposure_bits=fmt.max_exposure_bits,
                null_samples=n_null, exposure_method="interpolation over sampled null secrets",
                exposure_cap_bits=float(np.log2(n_null)),
            )
        )
    return out


def score_model(
    run_dir: Path,
    model: ModelToAudit,
    members: list[dict],
    non_members: list[dict],
    manifests: list[CanaryManifest],
    *,
    attacks: list[str],
    device: str,
    token_budget: int,
    log: EventLog,
    trust_remote_code: bool = False,
) -> Path:
    """The cached scoring stage of one model; returns its directory."""
    key = {
        "model": hash_model_dir(model.path),
        "members": records_hash(members),
        "non_members": records_hash(non_members),
        "canaries": [stable_hash(m.model_dump(mode="json")) for m in manifests],
        "attacks": sorted(attacks),
    }

    def build(tmp: Path) -> None:
        loaded = load_model(model.path, device=device, trust_remote_code=trust_remote_code)
        target = Target(loaded.model, loaded.tokenizer, token_budget=token_budget)
        rows = members + non_members
        table = build_score_table(
            target, [str(r["id"]) for r in rows], [r["text"] for r in rows],
            [True] * len(members) + [False] * len(non_members),
        )
        for name in attacks:
            table[f"score_{name}"] = run_attack(name, table)
        save_score_table(table, tmp / "mia.parquet")
        exposures = [c for m in manifests for c in canary_exposures(target, m)]
        write_json(tmp / "canaries.json", [c.model_dump(mode="json") for c in exposures])
        write_json(tmp / "model.json", {"path": str(model.path), "files_sha256": loaded.files_sha256})

    return stage(run_dir, f"scores/{model.name}", key, build, log)


def model_result(score_dir: Path, model: ModelToAudit, attacks: list[str], run_dir: Path) -> ModelResult:
    """Typed results of one model from its scoring stage and its privacy record."""
    table = load_score_table(score_dir / "mia.parquet")
    member = table["member"].to_numpy(bool)
    mia = {}
    for name in attacks:
        s = table[f"score_{name}"].to_numpy(np.float64)
        mia[name] = attack_result(s[member], s[~member])
    canaries = [CanaryResult.model_validate(c) for c in read_json(score_dir / "canaries.json")]
    privacy_file = model.path / "privacy.json"
    privacy = PrivacyRecord.model_validate(read_json(privacy_file)) if privacy_file.is_file() else PrivacyRecord()
    info = read_json(score_dir / "model.json")
    try:
        rel = str(model.path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        rel = str(model.path)
    return ModelResult(
        description=model.description,
        path=rel,
        files_sha256=info["files_sha256"],
        privacy=privacy,
        utility=_utility(table),
        mia=mia,
        canaries=canaries,
        exposure_by_repetition=exposure_groups(canaries),
    )


def _utility(table: pd.DataFrame) -> Utility:
    def token_loss(rows: pd.DataFrame) -> float | None:
        n = int(rows["n_tokens"].sum())
        if n == 0:
            return None
        return float(-np.sum([np.sum(x, dtype=np.float64) for x in rows["token_logprobs"]]) / n)

    mem, non = token_loss(table[table["member"]]), token_loss(table[~table["member"]])
    return Utility(
        member_loss=mem, non_member_loss=non,
        non_member_perplexity=float(np.exp(min(non, 50.0))) if non is not None else None,
    )


def run_audit(
    run_dir: str | Path,
    models: dict[str, Path] | list[ModelToAudit],
    members: list[dict],
    non_members: list[dict],
    manifests: list[CanaryManifest],
    *,
    attacks: list[str],
    device: str,
    token_budget: int = 16384,
    trust_remote_code: bool = False,
    echo=None,
    log: EventLog | None = None,
    command: str = "leakaudit audit",
    seed: int = 0,
    extra_data_sha256: dict[str, str] | None = None,
) -> Results:
    """Audit one or more models and write ``results.json`` and the reports into ``run_dir``.

    When ``run_dir`` has no ``config.yaml`` yet (a standalone audit), one is written with the
    audit's inputs, so every run directory records what produced it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = log or EventLog(run_dir, echo)
    if isinstance(models, dict):
        models = [ModelToAudit(name, Path(p)) for name, p in models.items()]
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        cfg = {
            "command": command, "models": {m.name: str(m.path) for m in models}, "attacks": attacks,
            "members_sha256": records_hash(members), "non_members_sha256": records_hash(non_members),
            "canaries": [m.spec.name for m in manifests], "token_budget": token_budget, "seed": seed,
        }
        write_text_atomic(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    results_by_model = {}
    for m in models:
        sdir = score_model(
            run_dir, m, members, non_members, manifests, attacks=attacks, device=device,
            token_budget=token_budget, log=log, trust_remote_code=trust_remote_code,
        )
        results_by_model[m.name] = model_result(sdir, m, attacks, run_dir)
    results = Results(
        run=RunInfo(
            leakaudit_version=__version__,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=command,
            config_sha256=sha256_file(cfg_path),
            seed=seed,
            git_revision=git_revision(),
            device=device_name(device),
            versions=package_versions(),
            n_members=len(members),
            n_non_members=len(non_members),
            n_canaries_inserted=sum(len(m.inserted) for m in manifests),
            n_reference_canaries=sum(len(m.canaries) - len(m.inserted) for m in manifests),
            data_sha256={
                "members": records_hash(members), "non_members": records_hash(non_members),
                **(extra_data_sha256 or {}),
            },
        ),
        canary_specs=spec_summaries(manifests),
        models=results_by_model,
    )
    write_json(run_dir / "results.json", results.model_dump(mode="json"))
    paths = write_reports(results, run_dir)
    log("run_finished", report=str(paths["html"]))
    return results
