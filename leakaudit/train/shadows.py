"""Shadow models for LiRA and RMIA: fine-tuned copies of a base model on random halves of a population.

The design is balanced: every example is IN for exactly half of the shadows (n must be even),
chosen at random per example, so each example has IN and OUT statistics.  The membership
matrix ``[n_shadows, n_population]`` is recorded beside the models.  Shadows live in a store
keyed by everything that determines them (base model hash, population hash, recipe, seed,
index), so a later run with the same inputs reuses them instead of training again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leakaudit.io import read_json, stable_hash, texts_hash, write_json
from leakaudit.models.loading import hash_model_dir, load_model
from leakaudit.runs import EventLog, stage
from leakaudit.train.loop import TrainSettings, save_trained, train_model


def membership_matrix(n_shadows: int, n_population: int, seed: int) -> np.ndarray:
    """Boolean [n_shadows, n_population]: each column has exactly n_shadows / 2 True entries."""
    if n_shadows < 2 or n_shadows % 2:
        raise ValueError(f"the number of shadow models must be even and >= 2 (got {n_shadows})")
    rng = np.random.default_rng(seed)
    keys = rng.random((n_shadows, n_population))
    ranks = keys.argsort(0).argsort(0)
    return ranks < n_shadows // 2


@dataclass
class ShadowSet:
    dirs: list[Path]
    membership: np.ndarray  # [n_shadows, n_population]
    key: str
    population_sha256: str | None = None  # texts_hash of the population, in order (None: not recorded)


def train_shadows(
    store: Path,
    base_dir: Path,
    population: list[str],
    n_shadows: int,
    settings: TrainSettings,
    *,
    device: str,
    log: EventLog,
    seed: int = 0,
    bar: Callable | None = None,
) -> ShadowSet:
    """Train (or reuse from ``store``) ``n_shadows`` shadow models on halves of ``population``."""
    pop_hash = texts_hash(population)
    key = stable_hash({
        "base": hash_model_dir(base_dir), "population": pop_hash, "recipe": settings.model_dump(mode="json"),
        "n": n_shadows, "seed": seed,
    })
    root = Path(store) / key
    member = membership_matrix(n_shadows, len(population), seed)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "membership.json", {"population_sha256": pop_hash, "in": member.astype(int).tolist()})
    dirs = []
    for i in range(n_shadows):
        texts = [t for t, m in zip(population, member[i]) if m]

        def build(tmp: Path, texts=texts, i=i) -> None:
            loaded = load_model(base_dir, device=device)
            s = settings.model_copy(update={"seed": settings.seed + 1000 * (i + 1)})
            if bar is None:
                record = train_model(loaded.model, loaded.tokenizer, texts, s)
            else:
                with bar(f"shadow model {i + 1}/{n_shadows}", s.epochs * -(-len(texts) // s.batch_size)) as up:
                    record = train_model(loaded.model, loaded.tokenizer, texts, s, progress=up)
            save_trained(loaded.model.cpu(), loaded.tokenizer, tmp, record)

        dirs.append(stage(root, f"shadow-{i:03d}", {"key": key, "index": i}, build, log))
    return ShadowSet(dirs=dirs, membership=member, key=key, population_sha256=pop_hash)


def load_membership(root: Path) -> np.ndarray:
    return np.array(read_json(root / "membership.json")["in"], dtype=bool)
