"""The audit stage: score each model once, run the attacks, measure canary exposure.

Used by ``leakaudit demo`` and ``leakaudit audit`` alike.  For each model a cached stage
``scores/<name>/`` holds the score table (``mia.parquet``) and the canary exposures
(``canaries.json``: ids only, no secrets).  Reference models are scored the same way;
shadow models score the audited rows once (``scores/shadows-<key>/stats.npy``).  Attacks then
run on these tables alone; their per-sample scores go to ``per_sample/<model>/scores.parquet``.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from pydantic import ValidationError

from leakaudit import __version__
from leakaudit.attacks import (
    ATTACKS,
    AttackInputs,
    attack_result,
    build_score_table,
    canary_exposures,
    exposure_groups,
    get_attack,
    load_score_table,
    run_attack,
    save_score_table,
)
from leakaudit.attacks.exposure import null_secrets
from leakaudit.attacks.extraction import Extraction, beam_search_secret, extract_secret
from leakaudit.attacks.memorization import APPROX_BLEU
from leakaudit.attacks.metrics import JOINT_PERMUTATIONS, joint_auc_p_values, joint_rate_p_values
from leakaudit.attacks.registry import REQUIREMENTS, missing_requirements
from leakaudit.attacks.untargeted import public_skew_warning
from leakaudit.canaries.manifest import Canary, CanaryManifest
from leakaudit.data.loading import user_of
from leakaudit.errors import LeakauditError, describe_validation_error
from leakaudit.extraction import ExtractionOptions, extraction_stage, read_extraction, sample_stage
from leakaudit.io import (
    read_json,
    records_hash,
    sha256_file,
    stable_hash,
    texts_hash,
    write_json,
    write_parquet,
    write_text_atomic,
)
from leakaudit.models.loading import hash_model_dir, load_model
from leakaudit.models.target import Target, dtype_name, resolve_dtype
from leakaudit.parallel import barrier, is_writer
from leakaudit.privacy import compare_with_accountant, one_run_audit
from leakaudit.report.render import write_reports
from leakaudit.report.schema import (
    AttackResult,
    CanaryResult,
    CanarySpecSummary,
    EmpiricalPrivacy,
    MemorizationResult,
    ModelResult,
    PermutationTest,
    PrivacyRecord,
    Results,
    RunInfo,
    Utility,
)
from leakaudit.runs import EventLog, clear_results, device_name, git_revision, package_versions, stage
from leakaudit.train.shadows import ShadowSet

DEFAULT_ATTACKS = ["loss", "zlib", "lowercase", "min_k", "min_k_pp", "neighbourhood"]


@dataclass(frozen=True)
class ModelToAudit:
    name: str
    path: Path
    description: str = ""
    control: bool = False
    """Never trained on the audit's records (a base model, one trained on other data): the split check."""


@dataclass
class AuditOptions:
    """What to run.  Attacks whose inputs are missing for a model are skipped with the reason."""

    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    params: dict[str, dict] = field(default_factory=dict)
    n_neighbours: int = 8
    token_budget: int | None = None
    n_boot: int = 1000
    permutations: int = JOINT_PERMUTATIONS  # relabellings of the attacks' joint test (metrics.joint_auc_p_values)
    seed: int = 0
    exact_exposure_max: int = 0  # enumerate canary spaces up to this size for exact exposure (0: never)
    extraction_budget: int = 200  # expansions per canary for the extraction search (0: no search)
    extraction_guesses: int = 10  # the best-first search's guesses per canary, within extraction_budget
    beam_width: int = 16  # beam search over each canary's format beside best-first (0: none)
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    dtype: str = "auto"  # the models' weights while scoring and sampling (see models.target.resolve_dtype)


def spec_summaries(manifests: list[CanaryManifest]) -> list[CanarySpecSummary]:
    out = []
    for m in (m for m in manifests if m.spec.design == "fixed"):
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


def extraction_fields(found: Extraction, canary: Canary, manifest: CanaryManifest, guesses: int) -> dict:
    """The per-canary record of a best-first search: whether and at which guess it found the canary's
    secret, and whether its first guess was another inserted canary's secret of the same spec.

    Only booleans and ranks are kept: the guessed strings may be real secrets and never leave here.
    """
    others = {c.secret for c in manifest.canaries if c.inserted and c.id != canary.id and c.secret != canary.secret}
    position = found.guesses.index(canary.secret) + 1 if canary.secret in found.guesses else None
    return {
        "extracted": found.secret == canary.secret,
        "extraction_expansions": found.expansions,
        "extraction_guesses": guesses,
        "extraction_guesses_found": len(found.guesses),
        "extraction_guess": position,
        # None when the search completed no guess: nothing was measured (not "no")
        "extraction_first_guess_inserted": None if found.secret is None else found.secret in others,
    }


def _needs(attacks: list[str]) -> set[str]:
    return {r for a in attacks for r in get_attack(a).requires}


# Versions of what the scoring stage computes; part of its cache key (and of an experiment cell's key), so that a
# change of method recomputes cached results instead of reusing them.  exposure 4: skew-normal counts inserted
# secrets and their neighbourhood exactly; 5: a secret's score includes the whitespace before it on every path, and
# tokens crossing the prefix's split are scored with offsets.  scores 2: Min-K%++'s variance as
# sum p (log p - mu)^2 where the reduction is not compiled.
SCORE_VERSIONS = {"exposure_version": 5, "scores_version": 2}


def check_shadow_population(shadows: ShadowSet, rows: list[dict]) -> None:
    """The shadows' membership matrix has one column per population text, in order: the audited rows (members
    then non-members) must be exactly those texts (the same number is not enough: a reordered population would
    pair each row with another record's IN/OUT shadows)."""
    if shadows.membership.shape[1] != len(rows) or (
            shadows.population_sha256 is not None
            and shadows.population_sha256 != texts_hash([r["text"] for r in rows])):
        raise LeakauditError("the shadow models were trained on a different population (or order) than the "
                             "audited members and non-members; train them on exactly these records")


def score_model(
    run_dir: Path,
    model: ModelToAudit,
    rows: list[dict],
    n_members: int,
    manifests: list[CanaryManifest],
    *,
    lowercase: bool,
    n_neighbours: int,
    device: str,
    token_budget: int | None,
    log: EventLog,
    trust_remote_code: bool = False,
    seed: int = 0,
    exact_max: int = 0,
    extraction_budget: int = 0,
    extraction_guesses: int = 1,
    beam_width: int = 0,
    dtype: torch.dtype | None = None,
) -> Path:
    """The cached scoring stage of one model (members first in ``rows``); returns its directory."""
    dtype = dtype or resolve_dtype(device)
    key = {
        "model": hash_model_dir(model.path),
        "rows": records_hash(rows),
        "n_members": n_members,
        "canaries": [stable_hash(m.model_dump(mode="json")) for m in manifests],
        "lowercase": lowercase,
        "neighbours": n_neighbours,
        "seed": seed if n_neighbours else None,  # the seed only draws the neighbours
        # the exposure and search settings matter only when fixed-design canaries are scored (a reference
        # model is scored with the one-run canaries alone: its stage is then the same for every search budget)
        "search": [exact_max, extraction_budget, extraction_guesses, beam_width]
        if any(m.spec.design == "fixed" for m in manifests) else None,
        **SCORE_VERSIONS,
        "dtype": dtype_name(dtype),
    }

    def build(tmp: Path) -> None:
        with log.timed("load model", model=model.name):
            loaded = load_model(model.path, device=device, trust_remote_code=trust_remote_code, dtype=dtype)
            target = Target(loaded.model, loaded.tokenizer, token_budget=token_budget)
        with log.timed("membership scores", model=model.name, texts=len(rows), neighbours=n_neighbours):
            table = build_score_table(
                target, [str(r["id"]) for r in rows], [r["text"] for r in rows],
                [i < n_members for i in range(len(rows))],
                lowercase=lowercase, n_neighbours=n_neighbours, seed=seed,
            )
        table["user_id"] = [user_of(r.get("user_id")) for r in rows]
        save_score_table(table, tmp / "mia.parquet")
        exposures, audit_nll = [], []
        for m in (m for m in manifests if m.spec.design == "one_run"):
            with log.timed("one-run canaries", model=model.name, canaries=len(m.canaries)):
                nll = target.secrets_nll([c.prefix for c in m.canaries], [c.secret for c in m.canaries])
            audit_nll += [{"id": c.id, "spec": m.spec.name, "included": c.inserted, "nll": float(x)}
                          for c, x in zip(m.canaries, nll)]
        write_json(tmp / "audit_canaries.json", audit_nll)
        for m in (m for m in manifests if m.spec.design == "fixed"):
            with log.timed("exposure", model=model.name, canaries=len(m.canaries)):
                found_exposures = list(canary_exposures(target, m, exact_max=exact_max))
            if extraction_budget:
                with log.timed("extraction search", model=model.name, canaries=len(m.canaries),
                               budget=extraction_budget):
                    found_exposures = [
                        res.model_copy(update=extraction_fields(
                            extract_secret(target, c.prefix, m.spec.secret_format, max_expansions=extraction_budget,
                                           guesses=extraction_guesses), c, m, extraction_guesses))
                        for c, res in zip(m.canaries, found_exposures)]
            if beam_width:
                with log.timed("beam search", model=model.name, canaries=len(m.canaries), width=beam_width):
                    found_exposures = [
                        res.model_copy(update={"extracted_beam": beam_search_secret(
                            target, c.prefix, m.spec.secret_format, width=beam_width).secret == c.secret})
                        for c, res in zip(m.canaries, found_exposures)]
            exposures += found_exposures
        write_json(tmp / "canaries.json", [c.model_dump(mode="json") for c in exposures])
        write_json(tmp / "model.json", {"path": str(model.path), "files_sha256": loaded.files_sha256})

    return stage(run_dir, f"scores/{model.name}", key, build, log)


def _files_sha256(score_dir: Path | None, model_dir: Path) -> dict[str, str]:
    """The file hashes of a reference model: recorded when it was loaded for scoring, else read now."""
    if score_dir is not None and (score_dir / "model.json").is_file():
        return read_json(score_dir / "model.json").get("files_sha256", {})
    return hash_model_dir(model_dir)


def shadow_statistics(
    run_dir: Path, shadows: ShadowSet, rows: list[dict], *, device: str, token_budget: int | None, log: EventLog,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Mean token log-prob of every row under every shadow model: [n_shadows, n_rows] (cached)."""
    dtype = dtype or resolve_dtype(device)

    def build(tmp: Path) -> None:
        stats = []
        for d in shadows.dirs:
            loaded = load_model(d, device=device, dtype=dtype)
            lps = Target(loaded.model, loaded.tokenizer, token_budget=token_budget).score([r["text"] for r in rows])
            stats.append([float(np.mean(lp, dtype=np.float64)) if len(lp) else 0.0 for lp in lps])
        np.save(tmp / "stats.npy", np.array(stats))

    key = {"shadows": shadows.key, "rows": records_hash(rows), "dtype": dtype_name(dtype)}
    d = stage(run_dir, f"scores/shadows-{shadows.key}", key, build, log)
    return np.load(d / "stats.npy")


def _user_groups(table: pd.DataFrame) -> tuple[pd.DataFrame | None, str | None]:
    """Rows grouped by person, or why the per-user unit cannot be evaluated (None, None: no user ids at all).

    A person is a member when their records were trained on and a non-member when none was; a person
    with records on both sides has no single answer, so the unit is then not evaluated (and the reason
    is reported rather than the unit silently missing).
    """
    if "user_id" not in table or table["user_id"].isna().all():
        return None, None
    n_missing = int(table["user_id"].isna().sum())
    if n_missing:
        return None, f"{n_missing} of {len(table)} records have no user_id"
    df = pd.DataFrame({"user": table["user_id"].to_numpy(), "member": table["member"].to_numpy(bool)})
    share = df.groupby("user", sort=True)["member"].mean()
    mixed = share[(share > 0) & (share < 1)]
    if len(mixed):
        return None, (
            f"{len(mixed)} of {len(share)} users have records among both members and non-members "
            "(a person's membership is then not one answer)"
        )
    if share.nunique() < 2:
        side = "members" if share.iloc[0] == 1 else "non-members"
        return None, f"every user is among the {side}"
    return df, None


def _user_scores(users: pd.DataFrame, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A person's score is the mean score of their records: (members' scores, non-members' scores)."""
    g = users.assign(s=scores).groupby("user", sort=True).agg(member=("member", "first"), s=("s", "mean"))
    m = g["member"].to_numpy(bool)
    return g["s"].to_numpy()[m], g["s"].to_numpy()[~m]


def read_privacy(model_dir: Path, files_sha256: dict[str, str] | None = None) -> PrivacyRecord:
    """The model directory's privacy record (empty without ``privacy.json``); given the directory's file
    hashes, with ``bound_to_weights`` set: whether it was saved with the weights being audited (a record
    beside other weights is only a claim)."""
    f = Path(model_dir) / "privacy.json"
    if not f.is_file():
        return PrivacyRecord()
    try:
        rec = PrivacyRecord.model_validate(read_json(f))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeakauditError(f"{f}: not valid JSON ({e})") from None
    except ValidationError as e:
        raise LeakauditError(describe_validation_error(e, str(f))) from None
    if files_sha256 is None:
        return rec
    weights = {k: v for k, v in files_sha256.items() if k.endswith(".safetensors")}
    return rec.model_copy(update={"bound_to_weights": rec.weights_sha256 == weights})


def model_result(
    score_dir: Path,
    model: ModelToAudit,
    run_dir: Path,
    options: AuditOptions,
    *,
    references: dict[str, pd.DataFrame],
    shadow_stats: np.ndarray | None = None,
    shadow_in: np.ndarray | None = None,
    extraction_dir: Path | None = None,
    reference_dirs: dict[str, Path] | None = None,
) -> ModelResult:
    """Run the attacks on one model's tables and assemble its typed results."""
    table = load_score_table(score_dir / "mia.parquet")
    member = table["member"].to_numpy(bool)
    info = read_json(score_dir / "model.json")
    privacy = read_privacy(model.path, info["files_sha256"])
    inputs = AttackInputs(
        target=table,
        references={k: v for k, v in references.items() if k != model.name},
        shadow_stats=shadow_stats,
        shadow_in=shadow_in,
    )
    mia: dict[str, AttackResult] = {}
    by_user: dict[str, AttackResult] = {}
    skipped: dict[str, str] = {}
    per_sample = pd.DataFrame({"id": table["id"], "member": member, "user_id": table.get("user_id")})
    eps, delta = privacy.epsilon, privacy.delta
    users, no_users = _user_groups(table)
    dp_subset = None
    if users is not None and eps is not None:  # split per person: check the DP bound where one record differs
        single = users.groupby("user")["user"].transform("size").to_numpy() == 1
        dp_subset = (single[member], single[~member])
    # split per person: a person's records are not independent draws, so the intervals resample people
    people = None if users is None else (users["user"].to_numpy()[member], users["user"].to_numpy()[~member])
    # one DP bound check per attack, any of which failing fails the guarantee: each at 1 - 0.05 / k (Bonferroni),
    # so that the attacks' claim holds at 95% overall
    missing_of = {name: missing_requirements(name, inputs) for name in options.attacks}
    dp_level = 1 - 0.05 / max(1, sum(not missing for missing in missing_of.values()))
    for name, missing in missing_of.items():
        if missing:
            skipped[name] = "needs " + "; ".join(REQUIREMENTS[m] for m in missing)
            continue
        s = run_attack(name, inputs, options.params.get(name))
        per_sample[f"score_{name}"] = s
        mia[name] = attack_result(s[member], s[~member], epsilon=eps, delta=delta, n_boot=options.n_boot,
                                  dp_subset=dp_subset, groups=people, dp_level=dp_level)
        if users is not None:
            by_user[name] = attack_result(*_user_scores(users, s), epsilon=None, n_boot=options.n_boot)
    joint = None
    if mia:  # the attacks tested together, so that the verdict may take the best of them
        scores = {name: per_sample[f"score_{name}"].to_numpy() for name in mia}
        groups = users["user"].to_numpy() if users is not None else None  # a per-person split: relabel people
        joint = PermutationTest(
            unit="record" if groups is None else "user", permutations=options.permutations, seed=options.seed,
            p_values=joint_auc_p_values(scores, member, groups=groups, permutations=options.permutations,
                                        seed=options.seed),
        )
    # one folder per model, so that no model's files can be taken for another's (names 'a' and 'a-b')
    model_samples = run_dir / "per_sample" / model.name
    for old in model_samples.glob("*.parquet"):  # files of an earlier run's settings
        old.unlink()
    for pattern in ("", "-memorization-*", "-untargeted*", "-pii*"):  # the flat layout of earlier versions
        for old in (run_dir / "per_sample").glob(f"{model.name}{pattern}.parquet"):
            old.unlink()
    write_parquet(per_sample, model_samples / "scores.parquet")
    canaries = [CanaryResult.model_validate(c) for c in read_json(score_dir / "canaries.json")]
    units: dict[str, dict[str, AttackResult]] = {}
    if by_user:
        units["user"] = by_user
    ins = np.array([c.exposure_bits for c in canaries if c.inserted])
    ref = np.array([c.exposure_bits for c in canaries if not c.inserted])
    if ins.size and ref.size:
        k = max(c.repetitions for c in canaries if c.inserted)  # a canary inserted k times: k records
        units["canary"] = {"exposure": attack_result(ins, ref, epsilon=eps, delta=delta, n_boot=options.n_boot,
                                                     group=k)}  # reported on its own (not in the verdict)
    found = read_extraction(extraction_dir)
    # (record id, side) -> person: a members' file and a non-members' file may number their ids alike
    person = dict(zip(zip(table["id"].astype(str), member), users["user"])) if users is not None else None
    memorization = [_memorization_tested(m, extraction_dir, person, options) for m in found.memorization]
    written_table = extraction_dir / "untargeted_records.parquet" if extraction_dir else None
    untargeted_test = _rates_test(written_table, lambda rows: {"written": rows["written"].to_numpy(float)}, person,
                                  options)
    untargeted = found.untargeted
    if untargeted is not None:
        untargeted = untargeted.model_copy(update={"warnings": _public_skew(written_table, person)})
    reconstruction_test = None
    if "members" in found.pii_reconstruction and "non_members" in found.pii_reconstruction:
        reconstruction_test = _rates_test(extraction_dir / "pii_reconstruction.parquet",
                                          lambda rows: {"top1": rows["top1"].to_numpy(float)}, person, options)
    empirical = _one_run_bounds(score_dir, reference_dirs or {}, privacy, seed=options.seed)
    for f in sorted(extraction_dir.glob("*.parquet")) if extraction_dir else []:
        write_parquet(pd.read_parquet(f), model_samples / f.name)
    try:
        rel = str(model.path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        rel = str(model.path)
    published = [_published(c) for c in canaries]
    return ModelResult(
        description=model.description,
        control=model.control,
        path=rel,
        files_sha256=info["files_sha256"],
        privacy=privacy,
        utility=table_utility(table),
        mia=mia,
        mia_joint=joint,
        mia_by_unit=units,
        skipped_attacks=skipped,
        skipped_units={"user": no_users} if no_users else {},
        canaries=published,
        exposure_by_repetition=exposure_groups(published),  # medians of what is published, no finer
        memorization=memorization,
        untargeted_extraction=untargeted,
        pii_extraction=found.pii_extraction,
        pii_reconstruction=found.pii_reconstruction,
        pii_reconstruction_test=reconstruction_test,
        untargeted_test=untargeted_test,
        empirical_privacy=empirical,
    )


def _tested_rows(f: Path | None) -> pd.DataFrame | None:
    """The rows of the private per-record table ``f`` that a test compares: those marked ``testable`` where
    the table has the column (tables of earlier versions: all).  None when the table is missing."""
    if f is None or not f.is_file():
        return None
    rows = pd.read_parquet(f)
    return rows[rows["testable"].to_numpy(bool)] if "testable" in rows else rows


def _persons(rows: pd.DataFrame, person: dict, f: Path) -> np.ndarray:
    """Each row's person (``person``: (record id, member) -> user)."""
    keys = list(zip(rows["id"].astype(str), rows["member"].to_numpy(bool)))
    missing = sum(k not in person for k in keys)
    if missing:  # the tables are written from the score table's records: this is a bug, not bad input
        raise LeakauditError(f"{f}: {missing} rows name records absent from the score table")
    return np.array([person[k] for k in keys])


def _rates_test(f: Path | None, outcomes, person: dict | None, options: AuditOptions) -> PermutationTest | None:
    """Members' outcomes against non-members' in the private per-record table ``f`` (columns id, member,
    those ``outcomes(rows)`` maps to tests and optionally ``testable``, the rows tested), tested together
    by :func:`joint_rate_p_values`: people relabelled under a per-person split (``person``: (record id,
    member) -> user), else records (a record's rows together).  None when the table is missing (results of
    earlier versions) or one side has no row."""
    rows = _tested_rows(f)
    if rows is None:
        return None
    member = rows["member"].to_numpy(bool)
    if not member.any() or member.all():
        return None
    unit, groups = "record", None
    if person is not None:
        unit, groups = "user", _persons(rows, person, f)
    else:
        keys = list(zip(rows["id"].astype(str), member))
        if len(set(keys)) < len(keys):
            groups = np.array([f"{i}\x00{m}" for i, m in keys])
    p = joint_rate_p_values(outcomes(rows), member, groups=groups, permutations=options.permutations,
                            seed=options.seed)
    return PermutationTest(unit=unit, permutations=options.permutations, seed=options.seed, p_values=p)


def _public_skew(f: Path | None, person: dict | None) -> list[str]:
    """The records-written test's bias check (:func:`public_skew_warning`) over the records it tests: each
    person's mean share under a per-person split (a person's records are alike), else each record's."""
    rows = _tested_rows(f)
    if rows is None or "public_ngrams" not in rows:  # missing, or a table of an earlier version
        return []
    units = pd.DataFrame({"share": rows["public_ngrams"] / rows["ngrams"], "member": rows["member"].to_numpy(bool)})
    if person is not None:
        units["unit"] = _persons(rows, person, f)
        units = units.groupby("unit").agg(share=("share", "mean"), member=("member", "first"))
    w = public_skew_warning(units["share"].to_numpy(float), units["member"].to_numpy(bool),
                            "person" if person is not None else "record")
    return [w] if w else []


def _memorization_tested(m: MemorizationResult, extraction_dir: Path | None, person: dict | None,
                         options: AuditOptions) -> MemorizationResult:
    """``m`` with its exact and approximate matches tested together (:func:`_rates_test`)."""
    def outcomes(rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"exact": rows["exact"].to_numpy(float), "approx": (rows["bleu"] > APPROX_BLEU).to_numpy(float)}

    f = extraction_dir / f"memorization-k{m.k}-n{m.n}.parquet" if extraction_dir else None
    return m.model_copy(update={"test": _rates_test(f, outcomes, person, options)})


PUBLISHED_BITS = 1
"""Decimals of a single canary's exact and skew-normal exposure in results.json (full precision stays in the
private scores/<model>/canaries.json).  Exact exposure is log2|R| - log2(rank): at full precision it gives
the secret's exact rank, which anyone holding the model could turn back into the secret by ranking the
whole space; at 0.1 bit the rank is known only within about 7%."""


def _published(c: CanaryResult) -> CanaryResult:
    """A canary's record for the shared results: per-canary exposures no finer than :data:`PUBLISHED_BITS`."""
    def coarse(x: float | None) -> float | None:
        return None if x is None else round(x, PUBLISHED_BITS)

    return c.model_copy(update={"exposure_bits_exact": coarse(c.exposure_bits_exact),
                                "exposure_bits_skewnorm": coarse(c.exposure_bits_skewnorm)})


def _one_run_bounds(
    score_dir: Path, reference_dirs: dict[str, Path], privacy: PrivacyRecord, *, seed: int
) -> list[EmpiricalPrivacy]:
    """The one-run audit (Steinke et al. 2023) of each one-run canary spec.

    A canary's score is how much likelier the model finds its secret than a reference model
    does (the reference's NLL minus the model's), or minus the model's NLL without a reference;
    the top-scored canaries are guessed 'in', the bottom ones 'out'.  The bound is stated at the
    model's DP delta (1e-5 for a model without DP) and set beside the accountant's eps.
    """
    f = score_dir / "audit_canaries.json"
    rows = read_json(f) if f.is_file() else []
    if not rows:
        return []
    ref_nll: dict[str, float] = {}
    for d in reference_dirs.values():
        g = d / "audit_canaries.json"
        if g.is_file():
            ref_nll = {r["id"]: r["nll"] for r in read_json(g)}
            break
    delta = privacy.delta if privacy.delta is not None else 1e-5
    specs = sorted({r["spec"] for r in rows})
    # Reports and the gate take the largest bound over specs: each is computed at alpha / (number of
    # specs) so that the largest still holds at the total alpha of 0.05 (Bonferroni).
    alpha = 0.05 / len(specs)
    out = []
    for spec in specs:
        mine = [r for r in rows if r["spec"] == spec]
        use_ref = all(r["id"] in ref_nll for r in mine)
        scores = np.array([(ref_nll[r["id"]] if use_ref else 0.0) - r["nll"] for r in mine])
        included = np.array([r["included"] for r in mine], dtype=bool)
        audit = one_run_audit(scores, included, delta=delta, alpha=alpha, seed=seed)
        rec = compare_with_accountant(audit.to_empirical(), privacy.epsilon)
        score = "reference NLL minus model NLL of the secret" if use_ref else "minus the model's NLL of the secret"
        shared = f"; alpha 0.05 shared by the {len(specs)} one-run specs" if len(specs) > 1 else ""
        out.append(rec.model_copy(update={"note": f"canary spec '{spec}'; score: {score}{shared}; {rec.note}"}))
    return out


def table_utility(table: pd.DataFrame) -> Utility:
    """Member and non-member token loss, and non-member perplexity, from a model's score table."""
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


def _extraction(
    run_dir: Path, models: list[ModelToAudit], references: dict[str, Path], rows: list[dict], n_members: int,
    options: AuditOptions, common: dict, *, train_texts: list[str] | None, public_texts: list[str] | None,
) -> dict[str, Path]:
    """Run the generation stages of every audited model (see :mod:`leakaudit.extraction`)."""
    ext = options.extraction
    if not ext.enabled:
        return {}
    train_texts = list(train_texts) if train_texts is not None else [r["text"] for r in rows[:n_members]]
    public_texts = list(public_texts or [])
    kw = dict(device=common["device"], dtype=common["dtype"], token_budget=common["token_budget"],
              trust_remote_code=common["trust_remote_code"], log=common["log"])
    paths = {m.name: m.path for m in models}
    sample_dirs: dict[str, Path] = {}

    def samples(name: str, path: Path) -> Path | None:
        if ext.samples <= 0:
            return None
        if name not in sample_dirs:
            sample_dirs[name] = sample_stage(run_dir, name, path, ext, public_texts, **kw)
        return sample_dirs[name]

    out = {}
    for m in models:
        ref = next(((k, v) for k, v in references.items() if k != m.name and v != paths.get(m.name)), None)
        out[m.name] = extraction_stage(
            run_dir, m.name, m.path, ext, records=rows, n_members=n_members, train_texts=train_texts,
            public_texts=public_texts, samples_dir=samples(m.name, m.path),
            reference=ref[1] if ref else None, baseline_samples_dir=samples(*ref) if ref else None, **kw,
        )
    return out


def _note_changed_run(cfg_path: Path, models: list[str], attacks: list[str], log: EventLog) -> None:
    """Say when a run directory's earlier run audited other models or attacks: its results are replaced by this
    run's, and the stages only it used stay, unused, in the directory."""
    try:
        old = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(old, dict):
        return
    changes = []
    for what, before, now in (("models", old.get("models"), models), ("attacks", old.get("attacks"), attacks)):
        before = sorted(before) if isinstance(before, (dict, list)) else None
        if before is not None and before != sorted(now):
            changes.append(f"{what} {', '.join(map(str, before))} before, {', '.join(now)} now")
    if changes:
        log("run_changed", f"note: this directory held an earlier run of other settings ({'; '.join(changes)}); "
            "its results are replaced by this run's", changes=changes)


def run_audit(
    run_dir: str | Path,
    models: dict[str, Path] | list[ModelToAudit],
    members: list[dict],
    non_members: list[dict],
    manifests: list[CanaryManifest],
    *,
    device: str,
    options: AuditOptions | None = None,
    references: dict[str, Path] | None = None,
    shadows: ShadowSet | None = None,
    trust_remote_code: bool = False,
    echo=None,
    log: EventLog | None = None,
    command: str = "leakaudit audit",
    extra_data_sha256: dict[str, str] | None = None,
    preflight_warnings: list[str] | None = None,
    train_texts: list[str] | None = None,
    public_texts: list[str] | None = None,
    write_config: bool = True,
) -> Results:
    """Audit one or more models and write ``results.json`` and the reports into ``run_dir``.

    ``references`` are scored like the models and used by the reference attacks (a reference that
    is also an audited model is scored once).  ``shadows`` must have been trained on halves of
    ``members + non_members`` in that order.  When ``run_dir`` has no ``config.yaml`` yet (a
    standalone audit), one is written with the audit's inputs.

    The generation stages (``options.extraction``) verify what a model reproduces against
    ``train_texts`` (default: the members' texts; pass what the model was actually trained on,
    canaries included) and leave out text that also occurs in ``public_texts``, the data a base
    model saw; public texts also supply sampling prompts.
    """
    options = options or AuditOptions()
    for a in options.attacks:
        get_attack(a)
    if isinstance(models, dict):
        models = [ModelToAudit(name, Path(p)) for name, p in models.items()]
    for m in models:  # a malformed privacy record is refused before anything is written
        read_privacy(m.path)
    references = {k: Path(v) for k, v in (references or {}).items()}
    for name, path in references.items():
        same = [m.name for m in models if m.name != name and Path(m.path).resolve() == path.resolve()]
        if same:
            raise LeakauditError(f"reference model '{name}': {path} is the audited model '{same[0]}' itself; a model "
                                 "compared with itself scores every record 0 (to audit the reference model too, "
                                 "give it one name as model and as reference)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = log or EventLog(run_dir, echo)
    rows = list(members) + list(non_members)
    cfg_path = run_dir / "config.yaml"
    if is_writer():
        _note_changed_run(cfg_path, [m.name for m in models], options.attacks, log)
        clear_results(run_dir)
    if is_writer() and (write_config or not cfg_path.is_file()):  # this run's settings, even in an old directory
        cfg = {
            "command": command, "models": {m.name: str(m.path) for m in models},
            "controls": [m.name for m in models if m.control],
            "references": {k: str(v) for k, v in references.items()}, "attacks": options.attacks,
            "params": options.params, "members_sha256": records_hash(members),
            "non_members_sha256": records_hash(non_members), "canaries": [m.spec.name for m in manifests],
            "shadows": len(shadows.dirs) if shadows else 0, "seed": options.seed,
        }
        write_text_atomic(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    needs = _needs(options.attacks)
    common = dict(device=device, token_budget=options.token_budget, log=log, trust_remote_code=trust_remote_code,
                  seed=options.seed, exact_max=options.exact_exposure_max,
                  extraction_budget=options.extraction_budget, extraction_guesses=options.extraction_guesses,
                  beam_width=options.beam_width,
                  dtype=resolve_dtype(device, options.dtype))
    score_dirs = {}
    for m in models:
        score_dirs[m.name] = score_model(
            run_dir, m, rows, len(members), manifests, lowercase="lowercase" in needs,
            n_neighbours=options.n_neighbours if "neighbours" in needs else 0, **common,
        )
    ref_tables, ref_dirs = {}, {}
    if "reference" in needs or any(m.spec.design == "one_run" for m in manifests):
        for name, path in references.items():
            d = score_dirs.get(name) or score_model(
                run_dir, ModelToAudit(name, path), rows, len(members),
                [m for m in manifests if m.spec.design == "one_run"], lowercase=False, n_neighbours=0, **common
            )
            ref_tables[name] = load_score_table(d / "mia.parquet")
            ref_dirs[name] = d
    stats = member_in = None
    if shadows is not None and needs & {"shadows_in", "shadows_out"}:
        check_shadow_population(shadows, rows)
        stats = shadow_statistics(run_dir, shadows, rows, device=device, token_budget=options.token_budget,
                                  log=log, dtype=common["dtype"])
        member_in = shadows.membership
    extraction_dirs = _extraction(run_dir, models, references, rows, len(members), options, common,
                                  train_texts=train_texts, public_texts=public_texts)
    if not is_writer():
        barrier()  # rank 0 writes the results and reports
        return None  # type: ignore[return-value]
    t_results = time.perf_counter()
    results_by_model = {
        m.name: model_result(score_dirs[m.name], m, run_dir, options, references=ref_tables,
                             shadow_stats=stats, shadow_in=member_in, extraction_dir=extraction_dirs.get(m.name),
                             reference_dirs={k: v for k, v in ref_dirs.items() if k != m.name})
        for m in models
    }
    results = Results(
        run=RunInfo(
            leakaudit_version=__version__,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=command,
            config_sha256=sha256_file(cfg_path),
            seed=options.seed,
            git_revision=git_revision(),
            device=device_name(device),
            dtype=dtype_name(common["dtype"]),
            versions=package_versions(),
            n_members=len(members),
            n_non_members=len(non_members),
            n_canaries_inserted=sum(len(m.inserted) for m in manifests),
            n_reference_canaries=sum(len(m.canaries) - len(m.inserted) for m in manifests),
            data_sha256={
                "members": records_hash(members), "non_members": records_hash(non_members),
                **(extra_data_sha256 or {}),
            },
            reference_models={k: str(v) for k, v in references.items()},
            reference_models_sha256={k: _files_sha256(ref_dirs.get(k), v) for k, v in references.items()},
            shadow_models=len(shadows.dirs) if shadows else 0,
            shadow_set_key=shadows.key if shadows else None,
            preflight_warnings=list(preflight_warnings or []),
        ),
        canary_specs=spec_summaries(manifests),
        models=results_by_model,
    )
    write_json(run_dir / "results.json", results.model_dump(mode="json"))
    log.add_time("results", time.perf_counter() - t_results)
    with log.timed("reports"):
        paths = write_reports(results, run_dir)
    log("run_finished", report=str(paths["html"]))
    barrier()
    return results


__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "AuditOptions", "ModelToAudit", "run_audit"]
