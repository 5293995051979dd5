"""Checkpoints of a sweep: one file per finished (α, chunk of seeds), written atomically, so
an interrupted sweep resumes where it stopped and a half-written file is never taken as done."""

import json
from pathlib import Path

import equinox as eqx
import numpy as np


class SweepCheckpoint:
    """A checkpoint directory of one sweep configuration."""

    def __init__(self, directory: str | Path, *, alphas, seeds, chunk: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "sweep.json").write_text(
            json.dumps({"alphas": alphas.tolist(), "seeds": seeds.tolist(), "chunk": chunk})
        )

    def path(self, i_alpha: int, alpha: float, seeds: np.ndarray) -> Path:
        return self.directory / f"alpha{i_alpha:03d}_{alpha:.6e}_seeds{seeds[0]}-{seeds[-1]}.eqx"

    def load(self, path: Path, like):
        """The chunk at `path` (structured like `like`), or None if it is not there."""
        if not path.exists():
            return None
        return eqx.tree_deserialise_leaves(path, like)

    def save(self, path: Path, solution) -> None:
        tmp = path.with_suffix(".tmp")
        eqx.tree_serialise_leaves(tmp, solution)
        tmp.replace(path)  # atomic rename
