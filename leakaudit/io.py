"""Small file helpers shared by every stage: atomic writes, hashing, JSON and JSONL."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)

# A name that becomes part of a file or folder name in a run (models, canary specs, experiments):
# letters, digits, '_', '.' and '-', starting with a letter or digit, so never a path out of the run.
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_hash(obj: Any) -> str:
    """Short hash of a JSON-serialisable object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def write_text_atomic(path: str | Path, text: str, *, private: bool = False) -> None:
    """Write a file so that readers see either the old content or the whole new one."""
    write_bytes_atomic(path, text.encode("utf-8"), private=private)


def write_bytes_atomic(path: str | Path, data: bytes, *, private: bool = False) -> None:
    """Write bytes so that readers see either the old content or the whole new one.

    ``private`` files (secrets: canary manifests) are readable by their owner only (mode 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if not private:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any, *, private: bool = False, compact: bool = False) -> None:
    """``compact``: no indentation (for large arrays: Python's fast encoder, half the size)."""
    text = json.dumps(obj, indent=None if compact else 2, sort_keys=False, default=str)
    write_text_atomic(path, text + "\n", private=private)


def records_hash(records: Iterable[dict]) -> str:
    """Order-sensitive hash of audited records: each one's id, text, user and PII annotations (everything a
    stage reads from them, so a corrected user id or PII span rebuilds what depends on it)."""
    return sha256_text("\n".join(
        sha256_text(json.dumps([r.get("id"), r["text"], r.get("user_id"), r.get("pii")], sort_keys=True, default=str))
        for r in records
    ))


def texts_hash(texts: Iterable[str]) -> str:
    """Order-sensitive hash of a list of texts (identifies a corpus or a population)."""
    return sha256_text("\n".join(sha256_text(t) for t in texts))


def write_parquet(df, path: str | Path) -> None:
    """Write a pandas DataFrame as Parquet, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only on success.

    An interrupted stage leaves no half-written output at ``path``; a stale temporary
    directory from an earlier crash is removed first.  An earlier output at ``path`` is moved
    aside before the new one moves in and deleted after, so no moment leaves neither.
    """
    path = Path(path).resolve()  # "." and ".." have no name to build the temporary names from
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    old = path.with_name(f".{path.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(old):
        _remove(old)
    if os.path.lexists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    if os.path.lexists(old):
        _remove(old)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


def _unique_key_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """yaml's safe loader, but a key given twice in one mapping is an error, not the last one silently."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):  # the mapping's own keys (a merged <<: *anchor may be overridden)
                seen = set()
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # (a non-scalar key is refused by the base loader with its own message)
                    key = self.construct_object(key_node, deep=deep)
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark.line + 1)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


_UniqueKeyLoader = _unique_key_loader()


def read_yaml_mapping(path: str | Path, what: str, *, empty_ok: bool = False) -> dict:
    """Read a YAML file that must hold a mapping; every problem is one LeakauditError naming the file.

    ``what`` names the file's role in the messages ("policy file", "canary spec", ...); with
    ``empty_ok`` an empty file reads as ``{}``.
    """
    import yaml

    from leakaudit.errors import LeakauditError

    p = Path(path)
    if not p.is_file():
        raise LeakauditError(f"{p}: {what} not found")
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except _DuplicateKey as e:
        raise LeakauditError(f"{p}: field '{e.key}' is given twice (line {e.line}); keep one") from None
    except yaml.YAMLError as e:
        raise LeakauditError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LeakauditError(f"{p}: cannot read the {what}: {e}") from None
    if raw is None and empty_ok:
        raw = {}
    if not isinstance(raw, dict):
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise LeakauditError(f"{p}: {article} {what} must be a YAML mapping")
    return raw


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def run_lock(directory: str | Path, what: str) -> Iterator[None]:
    """Let one process at a time write a run directory (two resuming into one would rebuild the same stages
    over each other).  ``.lock`` holds the writer's process id and host; a lock left by a process that is
    gone (on this host) is taken over.  ``what`` names the command in the refusal."""
    import socket

    from leakaudit.errors import LeakauditError

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock, host = directory / ".lock", socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid, _, owner = lock.read_text(encoding="utf-8").partition(" ")
            except OSError:
                pid, owner = "", ""
            owner = owner.strip()
            if owner and (owner != host or (pid.isdigit() and _alive(int(pid)))):
                where = "" if owner == host else f" on {owner}"
                raise LeakauditError(f"{directory}: another leakaudit {what}{where} (process {pid}) is writing into "
                                     f"it; wait for it to end (or, if it is gone, remove {lock})") from None
            lock.unlink(missing_ok=True)  # its writer is gone: take it over
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {host}")
        break
    else:
        raise LeakauditError(f"{directory}: could not take {lock}; another process keeps making it")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text(encoding="utf-8").split(" ")[0] == str(os.getpid()):
                lock.unlink()
