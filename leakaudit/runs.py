"""Run directories: cached stages, the event log and the run record.

A stage writes its outputs into a temporary directory that is moved into place only when
the stage finishes, with ``stage.json`` holding the hash of its inputs.  Running again with
the same inputs skips finished stages; an interrupted stage leaves nothing behind and is
redone.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from leakaudit.errors import LeakauditError
from leakaudit.io import atomic_dir, read_json, write_json
from leakaudit.parallel import barrier, is_writer


class EventLog:
    """Line-buffered ``events.jsonl`` plus a human line on the console."""

    def __init__(self, run_dir: Path, echo: Callable[[str], None] | None = None):
        self.path = Path(run_dir) / "events.jsonl"
        self.echo = echo

    def __call__(self, event: str, message: str = "", **fields) -> None:
        if not is_writer():
            return
        row = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "event": event, **fields}
        if message:
            row["message"] = message
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=str) + "\n")
        if self.echo and message:
            self.echo(message)

    @contextmanager
    def timed(self, step: str, **fields) -> Iterator[None]:
        """Log a ``step_finished`` event with the seconds the block took (not echoed: a stage's parts,
        for finding where a run's time goes)."""
        t0 = time.perf_counter()
        yield
        self("step_finished", step=step, seconds=round(time.perf_counter() - t0, 3), **fields)

    def add_time(self, step: str, seconds: float, **fields) -> None:
        """Log the total of a step's time measured in several pieces (see :meth:`timed`)."""
        self("step_finished", step=step, seconds=round(seconds, 3), **fields)


def step_times(events: Path, offset: int = 0) -> dict[str, float]:
    """Seconds per step (``step_finished`` events, summed over models) logged in ``events`` from byte ``offset``."""
    out: dict[str, float] = {}
    if not events.is_file():
        return out
    with open(events, encoding="utf-8") as f:
        f.seek(offset)
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by a kill
                continue
            if row.get("event") == "step_finished":
                out[row["step"]] = round(out.get(row["step"], 0.0) + float(row["seconds"]), 3)
    return out


def clear_results(run_dir: Path) -> None:
    """Remove a run directory's results and reports when a (re)run starts: a run that then fails or is
    killed leaves no results of earlier inputs beside its new config.yaml for ``gate`` or ``report`` to
    take as this run's.  Cached stages stay; the results are rebuilt from them at the end."""
    for name in ("results.json", "report.md", "report.html", "report.pdf"):
        (run_dir / name).unlink(missing_ok=True)
    for card in run_dir.glob("model_card-*.md"):
        card.unlink()


def stage(run_dir: Path, name: str, key: dict, build: Callable[[Path], None], log: EventLog) -> Path:
    """Run ``build(tmp_dir)`` unless ``run_dir/name`` already holds the output for ``key``.

    Under several processes every process builds (the scoring inside is sharded and gathered)
    but only rank 0 keeps its output; the others build into a throw-away directory.
    """
    out = Path(run_dir) / name
    marker = out / "stage.json"
    key = json.loads(json.dumps(key, sort_keys=True, default=str))
    barrier()  # every process decides on the same, complete state
    if marker.is_file() and read_json(marker).get("key") == key:
        log("stage_skipped", f"[cached] {name}", stage=name)
        return out
    if not marker.is_file() and (out.is_file() or (out.is_dir() and any(out.iterdir()))):
        # not a stage's output (every stage writes stage.json, atomically): the user's files; never replace them
        raise LeakauditError(f"{out}: exists and is not a leakaudit output, and the '{name}' stage would replace "
                             "it; choose another output directory or move it away")
    log("stage_started", f"{name} ...", stage=name)
    t0 = time.perf_counter()
    if is_writer():
        with atomic_dir(out) as tmp:
            build(tmp)
            write_json(tmp / "stage.json", {"stage": name, "key": key})
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
    barrier()
    dt = time.perf_counter() - t0
    log("stage_finished", f"{name} done in {dt:.1f}s", stage=name, seconds=round(dt, 2))
    return out


def git_revision() -> str | None:
    """The git revision of the leakaudit source tree, when it is a checkout."""
    src = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("leakaudit", "torch", "transformers", "opacus", "datasets", "tokenizers", "numpy", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
