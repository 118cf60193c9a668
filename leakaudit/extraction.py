"""The generation stages of an audit: samples, discoverable memorization, untargeted extraction.

Two cached stages per model, beside the scoring stage of :mod:`leakaudit.audit`:

* ``samples/<model>/``: the untargeted samples (token ids and strategy), drawn once per model
  and reused: the reference model's samples are the baseline of PII extraction.
* ``extraction/<model>/``: discoverable memorization for each (k, n), untargeted extraction
  ranked, deduplicated and verified against the training texts, PII extraction.  Summaries
  (``*.json``, no text) go into ``results.json``; per-record and per-sample tables
  (``*.parquet``, ids and numbers only) are copied to ``per_sample/``.

Generated text stays inside the stage directories: it may hold training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from leakaudit.attacks.memorization import discoverable_memorization
from leakaudit.attacks.pii import normalise, pii_extraction, pii_reconstruction
from leakaudit.attacks.untargeted import Samples, decode_records, sample_texts, untargeted_extraction
from leakaudit.io import read_json, records_hash, texts_hash, write_json, write_parquet
from leakaudit.models.loading import hash_model_dir, load_model
from leakaudit.models.target import Target, dtype_name
from leakaudit.report.schema import MemorizationResult, PIIExtraction, PIIReconstruction, UntargetedExtraction
from leakaudit.runs import EventLog, stage


@dataclass
class ExtractionOptions:
    """What the generation stages run (all off when ``memorization`` is empty and ``samples`` is 0)."""

    memorization: list[tuple[int, int]] = field(default_factory=lambda: [(32, 32), (50, 50)])
    memorization_max_records: int | None = 500  # per side, a seeded sample
    samples: int = 0  # untargeted samples per model (0: no untargeted or PII extraction)
    sample_tokens: int = 64
    verify_ngram: int = 16  # tokens shared with a training record that count as reproduction
    pii_reconstruction_records: int = 200  # records per side for PII reconstruction (0: none)
    pii_candidates: int = 32  # candidates per reconstruction query, the true value included
    batch_size: int = 64
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.memorization) or self.samples > 0


def _target(path: Path, *, device: str, dtype, token_budget: int | None, trust_remote_code: bool) -> Target:
    loaded = load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return Target(loaded.model, loaded.tokenizer, token_budget=token_budget)


def sample_stage(
    run_dir: Path, name: str, path: Path, options: ExtractionOptions, public_texts: Sequence[str], *,
    device: str, dtype, token_budget: int | None, trust_remote_code: bool, log: EventLog,
) -> Path:
    """Draw (or reuse) the model's untargeted samples: ``samples/<name>/samples.json``."""
    key = {"model": hash_model_dir(path), "n": options.samples, "tokens": options.sample_tokens,
           "public": texts_hash(public_texts), "seed": options.seed, "batch": options.batch_size,
           "dtype": dtype_name(dtype), "texts": 2}

    def build(tmp: Path) -> None:
        target = _target(path, device=device, dtype=dtype, token_budget=token_budget,
                         trust_remote_code=trust_remote_code)
        with log.timed("untargeted sampling", model=name, samples=options.samples, tokens=options.sample_tokens):
            s = sample_texts(target, options.samples, length=options.sample_tokens, public_texts=public_texts,
                             batch_size=options.batch_size, seed=options.seed)
        # the generated text, decoded here with the model's own tokenizer (a baseline (reference) model's
        # samples are read beside another model's, whose tokenizer may differ), a paragraph per record written
        generated = [decode_records(target.tokenizer, g) for g in s.new]
        write_json(tmp / "samples.json", {"prompts": s.prompts, "new": s.new, "strategy": s.strategy,
                                          "generated": generated}, compact=True)  # 100,000 x 256 ids: 4 s, not 16

    return stage(run_dir, f"samples/{name}", key, build, log)


def load_samples(stage_dir: Path) -> Samples:
    d = read_json(stage_dir / "samples.json")
    return Samples(d["prompts"], d["new"], d["strategy"])


def extraction_stage(
    run_dir: Path,
    name: str,
    path: Path,
    options: ExtractionOptions,
    *,
    records: Sequence[dict],
    n_members: int,
    train_texts: Sequence[str],
    public_texts: Sequence[str],
    samples_dir: Path | None,
    reference: Path | None,
    baseline_samples_dir: Path | None = None,
    device: str,
    dtype,
    token_budget: int | None,
    trust_remote_code: bool,
    log: EventLog,
) -> Path:
    """Memorization and untargeted extraction of one model (members first in ``records``)."""
    key = {
        "model": hash_model_dir(path), "records": records_hash(records), "n_members": n_members,
        "train": texts_hash(train_texts), "public": texts_hash(public_texts),
        "samples": read_json(samples_dir / "stage.json")["key"] if samples_dir else None,
        "reference": hash_model_dir(reference) if reference else None,
        "baseline_samples": read_json(baseline_samples_dir / "stage.json")["key"] if baseline_samples_dir else None,
        "pii": [options.pii_reconstruction_records, options.pii_candidates],
        "memorization": [list(x) for x in options.memorization], "max_records": options.memorization_max_records,
        "ngram": options.verify_ngram, "seed": options.seed, "dtype": dtype_name(dtype),
        # 3: PII extraction's held-out baseline; 4: reconstruction's per-query table; 5: records written out;
        # 6: records with no non-public n-gram marked untestable; 7: names before a possessive, emails with an
        # apostrophe, candidates counted as people
        "pii_version": 7,
    }

    def build(tmp: Path) -> None:
        kw = dict(device=device, dtype=dtype, token_budget=token_budget, trust_remote_code=trust_remote_code)
        target = _target(path, **kw)
        ids = [str(r["id"]) for r in records]
        texts = [r["text"] for r in records]
        member = [i < n_members for i in range(len(records))]
        mem = []
        for k, n in options.memorization:
            with log.timed("memorization", model=name, k=k, n=n):
                result, table = discoverable_memorization(
                    target, ids, texts, member, k=k, n=n, batch_size=options.batch_size,
                    max_records=options.memorization_max_records, seed=options.seed,
                )
            mem.append(result.model_dump(mode="json"))
            write_parquet(table, tmp / f"memorization-k{k}-n{n}.parquet")
        write_json(tmp / "memorization.json", mem)
        if samples_dir is not None:
            ref = _target(reference, **kw) if reference is not None else None
            with log.timed("untargeted verification", model=name):
                per_record: list[dict] = []
                summary, table = untargeted_extraction(
                    target, load_samples(samples_dir), train_texts, public_texts=public_texts,
                    non_member_texts=texts[n_members:], reference=ref, ngram=options.verify_ngram,
                    member_texts=texts[:n_members], per_record=per_record,
                )
            write_json(tmp / "untargeted.json", summary.model_dump(mode="json"))
            write_parquet(table, tmp / "untargeted.parquet")
            if per_record:
                write_parquet(pd.DataFrame({"id": ids, "member": member}).join(pd.DataFrame(per_record)),
                              tmp / "untargeted_records.parquet")
        with log.timed("pii", model=name):
            _pii(tmp, target, records, n_members, options, samples_dir, baseline_samples_dir)

    return stage(run_dir, f"extraction/{name}", key, build, log)


def _generated_texts(samples_dir: Path) -> list[str]:
    """The generated part of each sample (a public prompt is not the model's output), as the model that
    drew it decoded it."""
    return read_json(samples_dir / "samples.json")["generated"]


def _pii(tmp: Path, target: Target, records: Sequence[dict], n_members: int, options: ExtractionOptions,
         samples_dir: Path | None, baseline_samples_dir: Path | None) -> None:
    """PII extraction from the samples and PII reconstruction, when the records carry PII annotations."""
    members = [r for r in records[:n_members] if r.get("pii")]
    if not members:
        return
    held_out = [r for r in records[n_members:] if r.get("pii")]
    if samples_dir is not None:
        baseline = _generated_texts(baseline_samples_dir) if baseline_samples_dir else []
        result = pii_extraction(_generated_texts(samples_dir), baseline, members, held_out=held_out)
        if baseline_samples_dir is None:
            result.notes.append("no baseline model: PII the model would produce without training is not filtered")
        write_json(tmp / "pii_extraction.json", result.model_dump(mode="json"))
    if options.pii_reconstruction_records <= 0:
        return
    annotated = [r for r in records if r.get("pii")]
    names = sorted({r["text"][p["start"]:p["end"]] for r in annotated for p in r["pii"] if p["type"] == "name"})
    if len({normalise("name", v) for v in names}) < options.pii_candidates:
        return  # too few names to draw candidates from (names that differ only in case are one person)
    out, queries = {}, []
    for side, rows in (("members", members), ("non_members", held_out)):
        if rows:
            asked: list[dict] = []
            out[side] = pii_reconstruction(
                target, rows, pii_type="name", n_candidates=options.pii_candidates, seed=options.seed,
                max_records=options.pii_reconstruction_records, candidate_pool=names, per_query=asked,
            ).model_dump(mode="json")
            queries += [{**q, "member": side == "members"} for q in asked]
    write_json(tmp / "pii_reconstruction.json", out)
    write_parquet(pd.DataFrame(queries, columns=["id", "member", "top1"]), tmp / "pii_reconstruction.parquet")


@dataclass
class ExtractionReadout:
    """What the generation stages of one model found (the summaries only)."""

    memorization: list[MemorizationResult]
    untargeted: UntargetedExtraction | None
    pii_extraction: PIIExtraction | None
    pii_reconstruction: dict[str, PIIReconstruction]


def read_extraction(stage_dir: Path | None) -> ExtractionReadout:
    if stage_dir is None:
        return ExtractionReadout([], None, None, {})

    def optional(name: str):
        f = stage_dir / name
        return read_json(f) if f.is_file() else None

    unt, pii, rec = optional("untargeted.json"), optional("pii_extraction.json"), optional("pii_reconstruction.json")
    return ExtractionReadout(
        memorization=[MemorizationResult.model_validate(x) for x in read_json(stage_dir / "memorization.json")],
        untargeted=UntargetedExtraction.model_validate(unt) if unt else None,
        pii_extraction=PIIExtraction.model_validate(pii) if pii else None,
        pii_reconstruction={k: PIIReconstruction.model_validate(v) for k, v in (rec or {}).items()},
    )
