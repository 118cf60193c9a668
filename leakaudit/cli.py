"""The ``leakaudit`` command line: a thin layer over the Python API.

Every command validates its inputs before writing anything; a problem the user can fix is
printed as one line (``leakaudit: error: ...``) with exit code 2 and no traceback.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shlex
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, get_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn  # noqa: E402

from leakaudit.errors import LeakauditError, describe_validation_error  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure how much a language model leaks of its training data.",
)
canaries_app = typer.Typer(no_args_is_help=True, help="Generate canaries from a spec and insert them into data.")
app.add_typer(canaries_app, name="canaries")
console = Console(stderr=True)


def _say(message: str) -> None:
    """A progress line as it is: no console markup ("[cached] data" kept its tag; a path with "[/x]" crashed)."""
    console.print(message, markup=False, highlight=False)


@contextlib.contextmanager
def _bar(description: str, total: int) -> Iterator:
    with Progress(
        TextColumn("  {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total, loss="-")

        def update(step: int, total_steps: int, loss: float) -> None:
            progress.update(task, completed=step, total=total_steps, loss=f"{loss:.3f}")

        yield update
    _say(f"  {description}: done")


def _command() -> str:
    return "leakaudit " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# -- demo --------------------------------------------------------------------------------
@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Run directory (resumed if it exists).")] = Path("runs/demo"),
    preset: Annotated[str, typer.Option(help="tiny (tests, ~2 min), cpu (~12 min on 2 cores) or gpu.")] = "cpu",
    config: Annotated[Path | None, typer.Option(help="YAML file overriding the preset.")] = None,
    canaries: Annotated[list[Path] | None, typer.Option("--canaries", help="Canary spec file(s).")] = None,
    epsilon: Annotated[float | None, typer.Option(help="Target eps of the DP model.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: best available).")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the whole run: shifts the data and its split, the canaries' draws and both trainings' seeds "
        "(0: the configuration as written).")] = None,
    shadows: Annotated[int | None, typer.Option(help="Shadow models for LiRA and RMIA (even, >= 4).")] = None,
) -> None:
    """Build everything from nothing: data, canaries, a base model, plain and DP fine-tuning, audit, report."""
    from leakaudit.config import resolve_config

    overrides: dict = {}
    if epsilon is not None:
        if epsilon == float("inf"):  # Opacus would calibrate "inf" to a noise multiplier of 10: a very private model
            raise LeakauditError("--epsilon inf is no privacy: the demo's DP model needs a finite eps (its plain "
                                 "model is the one without DP)")
        _positive(epsilon, "--epsilon")
        overrides["dp"] = {"target_epsilon": epsilon, "noise_multiplier": None}
    if device is not None:
        overrides["device"] = device
    if seed is not None:
        overrides["seed"] = seed
    if shadows is not None:
        overrides["shadows"] = shadows
    _check_out(out, "dir")
    try:
        cfg = resolve_config(preset=preset, config_file=config, canary_files=canaries, overrides=overrides)
    except LeakauditError as e:  # a field set by a flag is named by its flag
        flags = {"shadows": ("--shadows", shadows), "seed": ("--seed", seed), "device": ("--device", device),
                 "dp.target_epsilon": ("--epsilon", epsilon)}
        for field_name, (flag, given) in flags.items():
            if given is None:
                continue
            if str(e).startswith(f"config: field '{field_name}': "):
                raise LeakauditError(f"{flag}: " + str(e).removeprefix(f"config: field '{field_name}': ")) from None
        raise
    _check_device(cfg.device, "--device" if device is not None else
                  f"{config}: field 'device'" if config is not None else f"preset {preset}: device")
    from leakaudit.io import run_lock
    from leakaudit.pipeline import run_demo

    with run_lock(out, "demo"):
        results = run_demo(cfg, out, echo=_say, bar=_bar, command=_command())
    _print_summary(results)
    typer.echo(f"report: {out / 'report.html'}")


RUN_MARKERS = {"dir": ("events.jsonl",), "experiment": ("experiment.yaml", "seeds", "cells")}
"""What marks a directory as a leakaudit run (of ``audit``/``demo``; of ``experiment``, whose finished seeds
and cells may have been copied into a new directory to continue there): only such a directory, or an empty
one, is written into, since a run replaces files by name (config.yaml, report.md ...)."""


def _check_out(path: Path, kind: str, *, inputs: dict[str, Path] | None = None, overwrite: bool | None = None) -> None:
    """Refuse an --out that cannot take the output, before any work: ``kind`` is file, dir, experiment or
    model; ``inputs`` are the files and directories the command reads (models, corpora, a spec), which it
    must neither overwrite nor write into (a trained model replaces its whole directory).  A command with an
    ``--overwrite`` flag (``overwrite`` not None) replaces an earlier output only when given it: a manifest
    holds the only copy of its secrets, and a trained model its privacy record."""
    _check_writable(path, kind)
    if kind == "file" and path.is_dir():
        raise LeakauditError(f"--out {path}: is a directory; give the path of a file to write")
    if kind != "file" and path.exists() and not path.is_dir():
        raise LeakauditError(f"--out {path}: is a file; give a directory")
    for flag, d in (inputs or {}).items():
        a, b = path.resolve(), Path(d).resolve()
        if a == b or b in a.parents or a in b.parents:
            raise LeakauditError(f"--out {path}: overlaps {flag} {d}; write the output somewhere else")
    if kind != "file":
        markers = RUN_MARKERS.get(kind, ())
        if (markers and path.is_dir() and any(not f.name.startswith(".") for f in path.iterdir())
                and not any((path / m).exists() for m in markers)):
            raise LeakauditError(f"--out {path}: holds files that are not a leakaudit run, which the run could "
                                 "replace; choose another directory or empty it")
        if kind == "model" and path.is_dir() and any(path.iterdir()) and not (path / "privacy.json").is_file():
            raise LeakauditError(
                f"--out {path}: holds files that are not a model written by 'leakaudit train', and the trained "
                "model would replace them; choose another directory or empty it"
            )
    if overwrite is False and path.exists() and (kind == "file" or any(path.iterdir())):
        what = "a model" if kind == "model" else "a file"
        raise LeakauditError(f"--out {path}: {what} is already there; add --overwrite to replace it")


def _check_writable(path: Path, kind: str) -> None:
    """Refuse an --out under a file, or where this user cannot write: one line now, not a traceback after
    the work.  A run directory is written into; a file or a trained model is built under a temporary name
    in its parent and moved into place.  A path not made yet is made under its nearest existing ancestor."""
    here = path.resolve()
    while not here.exists():
        here = here.parent
    if not here.is_dir() and here != path.resolve():
        raise LeakauditError(f"--out {path}: {here} is a file, so nothing can be written under it")
    targets = [here] if here.is_dir() else []  # (an existing file where a directory is wanted: refused later)
    if here == path.resolve() and kind in ("file", "model"):
        targets.append(here.parent)
    for d in targets:
        if not os.access(d, os.W_OK | os.X_OK):
            raise LeakauditError(f"--out {path}: cannot write in {d} (permission denied)")


def _positive(value: float, flag: str) -> None:
    if not (value > 0 and math.isfinite(value)):  # NaN and inf too
        raise LeakauditError(f"{flag} must be a finite number > 0 (got {value:g})")


def _check_device(device: str | None, source: str = "--device") -> None:
    """Refuse a device this machine cannot use; ``source`` names where it was set (a flag, or a file's field)."""
    if device is None:
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LeakauditError(f"{source} {device}: no CUDA device is available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise LeakauditError(f"{source}: expected cpu or cuda (got '{device}')")


def _print_summary(results) -> None:
    import statistics

    from rich.table import Table

    def med(v: list[float]) -> str:
        return f"{statistics.median(v):.2f}" if v else "-"

    t = Table(title="leakaudit summary")
    for col in ("model", "eps", "exposure, >=16x (bits)", "exposure, reference", "LOSS AUC",
                "best attack at 1% FPR"):
        t.add_column(col)
    for name, m in results.models.items():
        hi = [c.exposure_bits for c in m.canaries if c.repetitions >= 16]
        ref = [c.exposure_bits for c in m.canaries if not c.inserted]
        eps = "inf" if m.privacy.epsilon is None else f"{m.privacy.epsilon:.2f}"
        if m.privacy.bound_to_weights is False and m.privacy.epsilon is not None:
            eps += " (unchecked claim)"
        loss = f"{m.mia['loss'].auc:.3f}" if "loss" in m.mia else "-"
        best = max(m.mia.items(), key=lambda kv: (kv[1].tpr_at_fpr["0.01"], kv[1].auc), default=None)
        best_s = "-"
        if best:
            coarse = "" if best[1].min_resolvable_fpr <= 0.01 else " (unresolved: fewer than 100 non-members)"
            best_s = f"{best[0]}: TPR {best[1].tpr_at_fpr['0.01']:.1%}{coarse}, AUC {best[1].auc:.3f}"
        t.add_row(f"{name} (control)" if m.control else name, eps, med(hi), med(ref), loss, best_s)
    console.print(t)
    from leakaudit.report.findings import control_failures, control_findings
    from leakaudit.report.formatting import _lower

    for name, hits in control_failures(results.models, control_findings(results)).items():
        typer.echo(f"split check failed: {name} was never trained on these records, yet it shows a signal in "
                   f"{', '.join(_lower(f.label) for f in hits)}; the other models' findings of that kind measure "
                   "the split too (see the report)")


# -- canaries ----------------------------------------------------------------------------
@canaries_app.command("generate")
def canaries_generate(
    spec: Annotated[Path, typer.Argument(help="Canary spec (YAML).")],
    out: Annotated[Path, typer.Option("--out", help="Manifest to write (JSON; holds the secrets).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
) -> None:
    """Draw the canaries of a spec and write their manifest."""
    from leakaudit.canaries import generate_canaries, load_spec

    _check_out(out, "file", inputs={"SPEC": spec}, overwrite=overwrite)
    loaded = load_spec(spec)
    manifest = generate_canaries(loaded)
    manifest.save(out)
    n_in = len(manifest.inserted)
    typer.echo(f"{out}: {n_in} canaries to insert, {len(manifest.canaries) - n_in} reference canaries")
    if loaded.seed is not None:
        typer.echo(f"note: {spec} sets seed {loaded.seed}, so anyone with the spec can regenerate these secrets; "
                   "leave 'seed' out for canaries nobody else can draw (the manifest then records the seed)")


@canaries_app.command("insert")
def canaries_insert(
    manifest: Annotated[Path, typer.Option(help="Manifest from 'leakaudit canaries generate'.")],
    data: Annotated[Path, typer.Option(help="Training corpus (JSONL, CSV, Parquet, text, saved dataset).")],
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write: the corpus with canaries.")],
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
) -> None:
    """Insert a manifest's canaries into a corpus at their repetition counts."""
    from leakaudit.canaries import insert_canaries
    from leakaudit.data.loading import load_corpus, record_id
    from leakaudit.io import write_jsonl

    _check_out(out, "file", inputs={"--manifest": manifest, "--data": data}, overwrite=overwrite)
    if out.suffix.lower() not in {".jsonl", ".ndjson"}:
        raise LeakauditError(f"--out {out}: the corpus with canaries is written as JSONL; name it *.jsonl")
    m = _load_manifest(manifest)
    ds = load_corpus(data, text_field=text_field)
    # the corpus keeps its own columns and text field (so --text-field works on the output too);
    # canary rows carry an id, the text under that field and their canary_id
    rows = [{**r, "id": record_id(r, i), "text": r[text_field]} for i, r in enumerate(ds)]
    rows = insert_canaries(rows, m, seed=seed)
    write_jsonl(out, [
        {k: v for k, v in r.items() if k != "text" or text_field == "text"} | {text_field: r["text"]}
        if "canary_id" not in r else {"id": r["id"], text_field: r["text"], "canary_id": r["canary_id"]}
        for r in rows
    ])
    typer.echo(f"{out}: {len(rows)} records ({len(rows) - len(ds)} canary copies)")


@canaries_app.command("check")
def canaries_check(
    manifest: Annotated[Path, typer.Option(help="Manifest from 'leakaudit canaries generate'.")],
    data: Annotated[Path, typer.Option(help="The training corpus, as the trainer will read it.")],
    tokenizer: Annotated[Path, typer.Option(help="Model or tokenizer directory used for training.")],
    max_length: Annotated[int, typer.Option(min=1, help="The trainer's truncation length in tokens.")],
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
) -> None:
    """Pre-flight: confirm every inserted canary will be seen by the training loss (exit 1 if not)."""
    from leakaudit.canaries.preflight import preflight
    from leakaudit.data import load_texts
    from leakaudit.models.loading import load_tokenizer

    m = _load_manifest(manifest)
    texts = load_texts(data, text_field=text_field)
    tok = load_tokenizer(tokenizer)
    context = _model_context(tokenizer)
    if context is not None and context < max_length:  # training truncates there too (with a warning)
        typer.echo(f"note: --max-length {max_length} exceeds the {context} positions of the model in {tokenizer}; "
                   f"training truncates at {context} tokens, so the check does too")
        max_length = context
    problems = preflight(m, texts, tok, max_length=max_length)
    for w in problems:
        typer.echo(f"warning: {w}")
    n = len(m.inserted)
    typer.echo(f"{n - sum(1 for c in m.inserted if any(w.startswith(c.id + ':') for w in problems))}/{n} "
               "inserted canaries will be trained on as planned")
    if problems:
        raise typer.Exit(1)


def _model_context(model_dir: Path) -> int | None:
    """The positions a model directory's config.json gives (None for a tokenizer alone, or no such field)."""
    import json

    from leakaudit.models.generate import context_of

    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return context_of(cfg) if isinstance(cfg, dict) else None


def _load_manifest(path: Path):
    from pydantic import ValidationError

    from leakaudit.canaries import CanaryManifest

    if not path.is_file():
        raise LeakauditError(f"{path}: canary manifest not found")
    try:
        return CanaryManifest.load(path)
    except ValidationError as e:
        raise LeakauditError(describe_validation_error(e, f"{path}: not a canary manifest")) from None
    except ValueError as e:
        raise LeakauditError(f"{path}: not a canary manifest ({str(e).splitlines()[0]})") from None


# -- train -------------------------------------------------------------------------------
@app.command()
def train(
    base: Annotated[Path, typer.Option(help="Base model directory (Hugging Face format, safetensors).")],
    data: Annotated[Path, typer.Option(help="Training corpus.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the trained model.")],
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option()] = 1e-3,
    max_length: Annotated[int, typer.Option(min=8)] = 256,
    dp: Annotated[bool, typer.Option("--dp", help="Train with DP-SGD (Opacus).")] = False,
    epsilon: Annotated[float | None, typer.Option(help="Target eps (with --dp).")] = None,
    delta: Annotated[float | None, typer.Option(help="Target delta (default min(1e-5, 1/(10N))).")] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="Per-sample clip norm (with --dp; default 1).")] = None,
    accountant: Annotated[str | None, typer.Option(help="prv (default) or rdp (with --dp).")] = None,
    grad_sample_mode: Annotated[str | None, typer.Option(
        help="Per-example clipping (with --dp): hooks (default), ghost (GPT-2, Llama, Qwen2, Mistral, GPT-NeoX and "
        "OPT only) or functorch (Opacus), or bookkeeping (one backward pass; the fastest, flat clipping).")] = None,
    dp_randomness: Annotated[str | None, typer.Option(
        help="With --dp: secret (batches and noise from unrecorded random seeds: the default, for models to "
        "release) or seeded (from --seed: the run repeats exactly, and the guarantee holds only while the seed "
        "stays secret).")] = None,
    device: Annotated[str | None, typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
) -> None:
    """Fine-tune a model on a corpus, plainly or with DP-SGD; saves the model and privacy.json."""
    from leakaudit.data import load_texts
    from leakaudit.io import atomic_dir
    from leakaudit.models import check_model_loadable, default_device, load_model
    from leakaudit.train import DPSettings, TrainSettings, save_trained, train_model

    _check_out(out, "model", inputs={"--base": base, "--data": data}, overwrite=overwrite)
    _positive(lr, "--lr")
    dp_settings = None
    dp_only = {"--epsilon": epsilon, "--delta": delta, "--max-grad-norm": max_grad_norm, "--accountant": accountant,
               "--grad-sample-mode": grad_sample_mode, "--dp-randomness": dp_randomness}
    if not dp:
        given = [flag for flag, value in dp_only.items() if value is not None]
        if given:  # it would be ignored, and the model trained without DP
            raise LeakauditError(f"{given[0]} needs --dp")
    else:
        if epsilon is None:
            raise LeakauditError("--dp needs --epsilon")
        if epsilon == float("inf"):
            raise LeakauditError("--epsilon inf is no privacy: leave out --dp to train without it")
        _positive(epsilon, "--epsilon")
        max_grad_norm = 1.0 if max_grad_norm is None else max_grad_norm
        accountant, grad_sample_mode = accountant or "prv", grad_sample_mode or "hooks"
        dp_randomness = dp_randomness or "secret"
        _positive(max_grad_norm, "--max-grad-norm")
        if delta is not None and not 0 < delta < 1:
            raise LeakauditError(f"--delta must lie in (0, 1) (got {delta:g})")
        for flag, name, value in (("--accountant", "accountant", accountant),
                                  ("--grad-sample-mode", "grad_sample_mode", grad_sample_mode),
                                  ("--dp-randomness", "randomness", dp_randomness)):
            choices = get_args(DPSettings.model_fields[name].annotation)  # the settings' own Literal
            if value not in choices:
                raise LeakauditError(f"{flag}: expected one of {', '.join(choices)} (got '{value}')")
        dp_settings = DPSettings(
            target_epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, accountant=accountant,
            grad_sample_mode=grad_sample_mode, randomness=dp_randomness,
        )
    _check_device(device)
    check_model_loadable(base)
    texts = load_texts(data, text_field=text_field)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length, seed=seed)
    loaded = load_model(base, device=device or default_device())
    with atomic_dir(out) as tmp:
        with _bar("training" + (" with DP-SGD" if dp else ""), 1) as update:
            record = train_model(loaded.model, loaded.tokenizer, texts, settings, dp=dp_settings, progress=update)
        save_trained(loaded.model.cpu(), loaded.tokenizer, tmp, record)
    eps = "none (non-private)" if record.epsilon is None else f"{record.epsilon:.3f} (delta {record.delta:g})"
    typer.echo(f"{out}: trained for {record.steps} steps, eps {eps}")


# -- audit -------------------------------------------------------------------------------
def _parse_params(params: list[str]) -> dict[str, dict]:
    import yaml

    out: dict[str, dict] = {}
    for p in params:
        key, eq, value = p.partition("=")
        attack, dot, name = key.partition(".")
        if not eq or not dot or not name:
            raise LeakauditError(f"--param: expected ATTACK.NAME=VALUE (got '{p}')")
        try:
            out.setdefault(attack, {})[name] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise LeakauditError(f"--param {key}: '{value}' is not a valid value (a number, a word or a YAML list)"
                                 ) from None
    return out


@app.command()
def audit(
    model: Annotated[list[str], typer.Option(help="Model directory, or NAME=DIR; repeat to compare models.")],
    members: Annotated[Path, typer.Option(help="Records the model was trained on.")],
    non_members: Annotated[Path, typer.Option(help="Held-out records from the same distribution.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")],
    canaries: Annotated[list[Path] | None, typer.Option("--canaries", help="Canary manifest(s).")] = None,
    reference: Annotated[
        list[str] | None, typer.Option(help="Reference model directory or NAME=DIR (reference attacks).")
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(help="Name of a --model never trained on these records (a base model): the split check; any "
                     "leak it shows is a member/non-member difference needing no memorization (repeatable)."),
    ] = None,
    shadows: Annotated[int, typer.Option(help="Train this many shadow models (even, >= 4) for LiRA/RMIA.")] = 0,
    shadow_base: Annotated[Path | None, typer.Option(help="Model the shadows are fine-tuned from.")] = None,
    shadow_epochs: Annotated[int, typer.Option(min=1)] = 3,
    shadow_batch_size: Annotated[int, typer.Option(min=1)] = 32,
    shadow_lr: Annotated[float, typer.Option()] = 1e-3,
    shadow_store: Annotated[Path | None, typer.Option(help="Reuse shadow models kept here (default RUN/shadows).")]
    = None,
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
    attacks: Annotated[str | None, typer.Option(help="Comma-separated attacks (default: all that apply).")] = None,
    param: Annotated[list[str] | None, typer.Option(help="Attack parameter, e.g. min_k.k=0.1 (repeatable).")] = None,
    device: Annotated[str | None, typer.Option()] = None,
    dtype: Annotated[
        str, typer.Option(help="Weights while auditing: auto (bfloat16 on a GPU, float32 on a CPU), float32 or "
                          "bfloat16 (about 2x faster on CPUs with native bf16, ~0.03 nats/token less exact).")
    ] = "auto",
    token_budget: Annotated[
        int | None, typer.Option(min=256, help="Padded tokens per scoring batch (default: by device).")
    ] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Run code shipped with the model (unsafe).")] = False,
    extraction_budget: Annotated[
        int, typer.Option(min=0, help="Expansions per canary for the extraction search (0: none).")
    ] = 200,
    extraction_guesses: Annotated[
        int,
        typer.Option(
            min=1,
            help="Guesses per canary of the extraction search: its most likely secrets in order, to report at "
            "which guess it finds the canary's own. More than 1 keeps searching past the first guess, at most "
            "--extraction-budget expansions per canary (1: stop at the first, cheapest).",
        ),
    ] = 10,
    exact_exposure_max: Annotated[
        int, typer.Option(min=0, help="Enumerate canary spaces up to this size for exact exposure.")
    ] = 0,
    beam_width: Annotated[int, typer.Option(min=0, help="Beam search over each canary's format (0: none).")] = 16,
    memorization: Annotated[
        list[str] | None,
        typer.Option(help="Discoverable memorization K:N (prompt K tokens, decode N); repeatable; 'none' to skip."),
    ] = None,
    memorization_max_records: Annotated[int, typer.Option(min=1, help="Records per side tested.")] = 500,
    samples: Annotated[
        int, typer.Option(min=0, help="Untargeted extraction: samples drawn from each model (0: none).")
    ] = 0,
    sample_tokens: Annotated[int, typer.Option(min=1, help="New tokens per sample.")] = 64,
    verify_ngram: Annotated[int, typer.Option(min=2, help="Tokens a sample must share with a training record.")]
    = 16,
    public: Annotated[
        Path | None, typer.Option(help="Public corpus: sampling prompts, and text not counted as extracted.")
    ] = None,
    train_data: Annotated[
        Path | None, typer.Option(help="What the model was trained on, if more than --members (canaries included).")
    ] = None,
) -> None:
    """Score models on members and non-members, run the attacks and canary exposure, write a report."""
    from leakaudit.attacks import ATTACKS, get_attack
    from leakaudit.attacks.registry import check_params
    from leakaudit.audit import AuditOptions, ModelToAudit, run_audit
    from leakaudit.data import check_no_overlap, load_records, load_texts
    from leakaudit.extraction import ExtractionOptions
    from leakaudit.models import check_model_loadable, default_device
    from leakaudit.parallel import init_from_env, is_writer
    from leakaudit.runs import EventLog
    from leakaudit.train import TrainSettings
    from leakaudit.train.shadows import train_shadows

    names = [a.strip() for a in attacks.split(",") if a.strip()] if attacks else list(ATTACKS)
    if not names:
        raise LeakauditError(f"--attacks: no attack named (got '{attacks}')")
    for a in names:
        get_attack(a)
    from leakaudit.models.target import DTYPES

    if dtype not in DTYPES:
        raise LeakauditError(f"--dtype: must be one of {', '.join(DTYPES)}, not '{dtype}'")
    params = _parse_params(param or [])
    for a, ps in params.items():
        check_params(a, ps)

    from leakaudit.io import SAFE_NAME

    def named(specs: list[str], flag: str) -> dict[str, Path]:
        out_: dict[str, Path] = {}
        for spec in specs:
            name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
            name = name or Path(path).resolve().name or "model"
            # the name becomes a folder of the run (scores/NAME, per_sample/NAME...): nothing that leaves it
            if not re.fullmatch(SAFE_NAME, name) or ".." in name:
                raise LeakauditError(f"{flag} {spec}: the model name '{name}' may hold only letters, digits, '_', "
                                     "'.' and '-' (and no '..'); name it with NAME=DIR")
            if name in out_:
                raise LeakauditError(f"{flag}: two models named '{name}' (use NAME=DIR)")
            out_[name] = check_model_loadable(path, trust_remote_code=trust_remote_code)
        return out_

    models = named(model, "--model")
    controls = set(control or [])
    for c in sorted(controls - set(models)):
        raise LeakauditError(f"--control {c}: no --model named '{c}' (named: {', '.join(models)})")
    refs = named(reference or [], "--reference")
    # one name for two directories would make one model's scores stand in for the other's; one name for one
    # directory audits the reference model too (its own reference attacks are then skipped, as in the demo)
    clash = sorted(n for n in set(models) & set(refs) if models[n].resolve() != refs[n].resolve())
    if clash:
        raise LeakauditError(f"--reference {clash[0]}: the same name as a --model with another directory; "
                             "name it apart (NAME=DIR)")
    for a, ps in params.items():
        if a not in names:
            raise LeakauditError(f"--param {a}.{next(iter(ps))}: attack '{a}' is not among --attacks")
        ref = ps.get("reference")
        if ref is not None and ref not in refs:
            raise LeakauditError(f"--param {a}.reference={ref}: no --reference named '{ref}' "
                                 f"(named: {', '.join(refs) or 'none'})")
    if shadows and (shadows % 2 or shadows < 4):
        raise LeakauditError(f"--shadows must be an even number >= 4 (got {shadows})")
    if shadows and shadow_base is None:
        raise LeakauditError("--shadows needs --shadow-base (the model the shadows are fine-tuned from)")
    if shadow_base is not None:
        check_model_loadable(shadow_base)
    if attacks:  # attacks asked for by name must be able to run (by default, those that cannot are skipped)
        given = {"reference": (bool(refs), "a reference model (--reference DIR)"),
                 "shadows_out": (bool(shadows), "shadow models (--shadows N --shadow-base DIR)"),
                 "shadows_in": (bool(shadows), "shadow models (--shadows N --shadow-base DIR)")}
        for a in names:
            lacking = [what for r in get_attack(a).requires for ok, what in [given.get(r, (True, ""))] if not ok]
            if lacking:
                raise LeakauditError(f"--attacks {a}: needs {lacking[0]}")
    _positive(shadow_lr, "--shadow-lr")
    _check_out(out, "dir", inputs={**{f"--model {k}": v for k, v in models.items()},
                                   **{f"--reference {k}": v for k, v in refs.items()},
                                   **({"--shadow-base": shadow_base} if shadow_base else {})})
    _check_device(device)
    mem_settings = _parse_memorization(memorization)

    def rows(path: Path, side: str) -> list[dict]:
        return load_records(path, text_field=text_field, id_prefix=f"{side}-")

    mem, non = rows(members, "member"), rows(non_members, "non_member")
    check_no_overlap([r["text"] for r in mem], [r["text"] for r in non])
    manifests = [_load_manifest(p) for p in canaries or []]
    # every input read before anything is written (shadow models take long and write into --out)
    train_texts = load_texts(train_data, text_field=text_field) if train_data else None
    if train_texts is not None:  # a held-out record the model trained on is no non-member
        check_no_overlap(train_texts, [r["text"] for r in non], what=f"--train-data {train_data}",
                         where=f"in --train-data {train_data}")
    public_texts = load_texts(public, text_field=text_field) if public else None
    dev = init_from_env(device) or default_device()  # under torchrun: join the group, one device each
    log = EventLog(out, _say)
    shadow_set = None
    if shadows:
        recipe = TrainSettings(epochs=shadow_epochs, batch_size=shadow_batch_size, lr=shadow_lr)
        shadow_set = train_shadows(
            shadow_store or out / "shadows", shadow_base, [r["text"] for r in mem + non], shadows, recipe,
            device=dev, log=log, bar=_bar,
        )
    results = run_audit(
        out, [ModelToAudit(n, p, control=n in controls) for n, p in models.items()], mem, non, manifests, device=dev,
        references=refs, shadows=shadow_set,
        options=AuditOptions(
            attacks=names, params=params, token_budget=token_budget, extraction_budget=extraction_budget,
            extraction_guesses=extraction_guesses, exact_exposure_max=exact_exposure_max, beam_width=beam_width,
            dtype=dtype,
            extraction=ExtractionOptions(
                memorization=mem_settings, memorization_max_records=memorization_max_records, samples=samples,
                sample_tokens=sample_tokens, verify_ngram=verify_ngram,
            ),
        ),
        trust_remote_code=trust_remote_code, log=log, command=_command(),
        train_texts=train_texts, public_texts=public_texts,
    )
    if not is_writer():
        return
    _print_summary(results)
    typer.echo(f"report: {out / 'report.html'}")


def _parse_memorization(specs: list[str] | None) -> list[tuple[int, int]]:
    """``K:N`` settings of --memorization (default 32:32 and 50:50; 'none' for none)."""
    if not specs:
        return [(32, 32), (50, 50)]
    if [s.strip().lower() for s in specs] == ["none"]:
        return []
    out = []
    for spec in specs:
        k, sep, n = spec.partition(":")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit() or int(k) < 1 or int(n) < 1:
            raise LeakauditError(f"--memorization: expected K:N with positive integers, e.g. 32:32 (got '{spec}')")
        out.append((int(k), int(n)))
    return out


# -- gate --------------------------------------------------------------------------------
@app.command()
def gate(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding results.json.")],
    policy: Annotated[Path, typer.Option(help="Release policy (YAML), e.g. experiments/policy.yaml.")],
    model: Annotated[str | None, typer.Option(help="Check only this model of the run.")] = None,
) -> None:
    """Check a finished run against a release policy: exit 0 on pass, 1 on fail, 2 on error."""
    from leakaudit.policy import gate as run_gate

    code, lines = run_gate(run_dir, policy, model=model)
    for line in lines:
        typer.echo(line)
    raise typer.Exit(code)


# -- experiment --------------------------------------------------------------------------
@app.command()
def experiment(
    file: Annotated[Path, typer.Argument(help="Experiment file (YAML), e.g. experiments/dp_vs_nondp.yaml.")],
    out: Annotated[Path | None, typer.Option("--out", help="Output directory (default runs/experiments/NAME); "
                                             "resumed if it exists.")] = None,
    executor: Annotated[str, typer.Option(help="local (cells in turn, in this process) or submitit.")] = "local",
    jobs: Annotated[int, typer.Option(help="Cells running at once (submitit).")] = 1,
    cluster: Annotated[str | None, typer.Option(help="submitit: slurm or local (default: Slurm when available).")]
    = None,
    max_minutes: Annotated[float | None, typer.Option(
        "--max-minutes", help="Time budget: start no seed or cell once the time left is shorter than the longest "
        "so far; exit 3 when cells are left (run again to continue).")] = None,
) -> None:
    """Run a grid of train-and-audit cells (eps x seed x full/LoRA) and write one comparison report."""
    from leakaudit.experiment import ExperimentFailed, load_experiment, make_executor, run_experiment

    exp = load_experiment(file)
    if cluster is not None and cluster not in ("slurm", "local"):
        raise LeakauditError(f"--cluster: expected slurm or local (got '{cluster}')")
    if max_minutes is not None:
        _positive(max_minutes, "--max-minutes")
    out = out or Path("runs") / "experiments" / exp.config.name
    _check_out(out, "experiment")
    existed = out.exists()
    try:
        ex = make_executor(executor, exp, out, jobs=jobs, cluster=cluster)
        where = getattr(ex, "cluster", "this process")  # submitit: "local" or "slurm"
        if where != "slurm":  # cells sent to Slurm run on its nodes: a login node needs no GPU of its own
            _check_device(exp.base.device, f"{file}: field 'base.device'")
        if where == "local" and "gpus_per_node" not in exp.config.submitit.parameters:
            import torch

            device = exp.base.device or ("cuda" if torch.cuda.is_available() else "cpu")
            if device.startswith("cuda"):  # submitit's local jobs would fail, or quietly run on the CPU
                raise LeakauditError(f"{file}: field 'submitit.parameters': submitit's local jobs see no GPU "
                                     "unless gpus_per_node is set (for example gpus_per_node: 1)")
    except LeakauditError:
        if not existed:  # submitit made its folder before the error: leave no half-made output behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    from leakaudit.io import run_lock

    try:
        with run_lock(out, "experiment"):
            run = run_experiment(exp, out, executor=ex, echo=_say,
                                 max_seconds=None if max_minutes is None else 60 * max_minutes)
    except ExperimentFailed as e:
        for label, err in e.failed.items():
            _say(f"failed: {label}: {err}")
        typer.echo(f"comparison (finished cells only): {e.paths['html']}")
        raise typer.Exit(1) from None
    typer.echo(f"{len(run.ran)} cell(s) run, {len(run.skipped)} already finished, {run.seconds:.0f}s")
    typer.echo(f"comparison: {run.paths['html']}")
    if run.left:
        typer.echo(f"stopped at --max-minutes: {len(run.left)} cell(s) left ({', '.join(run.left)}); "
                   "run the same command again to continue")
        raise typer.Exit(3)


# -- report ------------------------------------------------------------------------------
@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory holding results.json.")],
    pdf: Annotated[bool, typer.Option("--pdf", help="Also print report.pdf (the 'pdf' extra or Chromium).")] = False,
) -> None:
    """Re-render report.md and report.html (and with --pdf report.pdf) from a run's results.json (offline)."""
    from leakaudit.policy import load_results_file
    from leakaudit.report.render import write_reports
    from leakaudit.report.schema import Results

    # the gate's checks: a file the gate would refuse (a NaN, a broken schema) is not rendered either
    results = Results.model_validate(load_results_file(run_dir))
    paths = write_reports(results, run_dir)
    typer.echo(f"report: {paths['html']}")
    if pdf:
        from leakaudit.report.pdf import write_pdf

        typer.echo(f"pdf: {write_pdf(paths['html'])}")


@app.command("attacks")
def list_attacks() -> None:
    """List the registered attacks with their papers and requirements."""
    from leakaudit.attacks import ATTACKS

    for a in ATTACKS.values():
        needs = ", ".join(a.requires) or "target model only"
        typer.echo(f"{a.name:10s} {a.summary}\n{'':10s} paper: {a.paper}\n{'':10s} needs: {needs}")


@app.command()
def version() -> None:
    """Print the leakaudit version."""
    from leakaudit import __version__

    typer.echo(__version__)


def _click_errors() -> tuple[type, ...]:
    """Click's exception class, and the copy of click that newer typer releases carry inside them."""
    found: list[type] = []
    try:
        import click

        found.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer may come without the separate package
        pass
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        found.append(TyperClickException)
    except ImportError:
        pass
    return tuple(found)


def _usage_error(e: Exception) -> int:
    """A command-line error as one line (message, then where to look), and its exit code."""
    if type(e).__name__ == "NoArgsIsHelpError":  # a bare command: its help is already shown, not an error
        return 0
    msg = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    sys.stderr.write(f"leakaudit: error: {msg}{hint}\n")
    return getattr(e, "exit_code", 2) or 2


INTERRUPTED = "leakaudit: interrupted; run the same command again to resume\n"
INTERRUPTED_TRAINING = ("leakaudit: interrupted; nothing was saved (a trained model is written only when "
                        "training ends), and the same command trains again from the start\n")
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}
"""Errors of the file system a user can fix (permissions, a full disk, a file where a directory should be):
one line naming the path, not a traceback."""


def _interrupted() -> None:
    training = len(sys.argv) > 1 and sys.argv[1] == "train"  # training has no checkpoints to resume from
    sys.stderr.write(INTERRUPTED_TRAINING if training else INTERRUPTED)
    sys.exit(130)


def _check_repeated_options(args: list[str], root: typer.Typer = app) -> None:
    """Refuse an option that takes one value given twice (``--out a --out b``): the parser would keep the last
    without a word, and a run would go where the user did not look.  (Flags, ``--x`` and ``--no-x``, may be
    given again: the last one counts, as a script's override expects.)"""
    if "--help" in args:
        return
    cmd = typer.main.get_command(root)
    args = list(args)
    while args and hasattr(cmd, "commands") and args[0] in cmd.commands:
        cmd = cmd.commands[args.pop(0)]
    if hasattr(cmd, "commands"):
        return
    single: dict[str, str] = {}
    takes_value: set[str] = set()
    for p in cmd.params:
        if p.param_type_name != "option":
            continue
        if not p.is_flag:
            takes_value.update(p.opts)
            if not p.multiple:
                single.update({o: p.opts[0] for o in p.opts})
    seen: set[str] = set()
    i = 0
    while i < len(args) and args[i] != "--":
        name = args[i].split("=", 1)[0]
        if name in single:
            if single[name] in seen:
                raise LeakauditError(f"{name} is given twice; give it once")
            seen.add(single[name])
        i += 2 if name in takes_value and "=" not in args[i] else 1


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the CLI's other messages: one line, no source file or code."""
    return f"leakaudit: warning: {' '.join(str(message).split())}\n"


def main() -> None:
    shown, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        _main()
    finally:
        warnings.formatwarning = shown


def _main() -> None:
    try:
        _check_repeated_options(sys.argv[1:])
        rc = app(standalone_mode=False, prog_name="leakaudit")  # returns a typer.Exit's code in this mode
        if rc == 130:  # click turned a Ctrl-C into this exit code
            _interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except LeakauditError as e:
        sys.stderr.write(f"leakaudit: error: {e}\n")
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _interrupted()
    except OSError as e:
        if e.errno not in WRITE_ERRNOS or not e.filename:
            raise
        sys.stderr.write(f"leakaudit: error: {e.filename}: {e.strerror}; fix that and run the same command "
                         "again\n")
        sys.exit(2)
    except Exception as e:  # click's usage errors (bad values, unknown options, missing arguments)
        if isinstance(e, _click_errors()):
            sys.exit(_usage_error(e))
        raise
