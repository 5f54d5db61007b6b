"""Run-folder layout: ``<root>/<run.date>/<stage>/<output>/``, named in one place (:class:`RunPaths`).

Every stage reads and publishes through these names, so a stage folder is spelled once and a reader and its
writer cannot disagree about where an output lives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

INGEST = "ingest"
FEATURES = "features"
EVALUATE = "evaluate"
TRAIN = "train"
INDEX = "index"
CANDIDATES = "candidates"
RERANK = "rerank"
REPORT = "report"
MARKERS = "_markers"
WORK = "_work"
LOCKS = "_locks"
# Stages that publish one folder per model (``evaluate/<model>``); the others publish the stage folder.
_PER_MODEL = (EVALUATE, TRAIN, INDEX, CANDIDATES, RERANK)
_WHOLE = (INGEST, FEATURES, REPORT)


def run_dir(root: str | Path, date: str) -> Path:
    if not _DATE.match(str(date)):
        raise ConfigError(f"run.date must look like YYYY-MM-DD, got {date!r}.")
    return Path(root) / str(date)


def stage_dir(root: str | Path, date: str, stage: str) -> Path:
    return run_dir(root, date) / stage


@dataclass(frozen=True)
class RunPaths:
    """Every folder of one snapshot's run: ``RunPaths(root, date)``; ``root`` is made absolute."""

    root: Path
    date: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())
        run_dir(self.root, self.date)  # validates the date

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> RunPaths:
        """From the composed config's ``paths.root`` and ``run.date``."""
        return cls(Path(str(cfg["paths"]["root"])), str(cfg["run"]["date"]))

    @property
    def run(self) -> Path:
        return self.root / self.date

    def stage(self, name: str) -> Path:
        return self.run / name

    @property
    def ingest(self) -> Path:
        return self.stage(INGEST)

    @property
    def features(self) -> Path:
        return self.stage(FEATURES)

    def evaluate(self, model: str) -> Path:
        """A baseline's fitted evaluation: metrics, recommendations, vectors of vector models."""
        return self.stage(EVALUATE) / model

    def train(self, model: str) -> Path:
        """A trained model family's published outputs (weights, metrics, vectors of retrievers)."""
        return self.stage(TRAIN) / model

    def work(self, stage: str, name: str) -> Path:
        """Scratch space of a stage (checkpoints, intermediate tables); never an input of another stage."""
        return self.stage(WORK) / stage / name

    def index(self, model: str, index: str) -> Path:
        return self.stage(INDEX) / f"{model}-{index}"

    def candidates(self, model: str) -> Path:
        return self.stage(CANDIDATES) / model

    def rerank(self, ranker: str, retriever: str) -> Path:
        return self.stage(RERANK) / f"{ranker}-{retriever}"

    @property
    def report(self) -> Path:
        return self.stage(REPORT)

    @property
    def markers(self) -> Path:
        return self.stage(MARKERS)

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder (how markers and pipeline configs name outputs)."""
        return str(Path(path).relative_to(self.run))


def unit_of(path: str | Path) -> tuple[Path, str] | None:
    """The run folder and the published unit (``features``, ``evaluate/<model>``, ...) that ``path`` lies in;
    ``None`` outside a run folder's published stages (``_work``, ``_markers``, a path elsewhere)."""
    path = Path(path).expanduser().absolute()
    for folder in path.parents:
        if not _DATE.match(folder.name):
            continue
        parts = path.relative_to(folder).parts
        if parts[0] in _WHOLE:
            return folder, parts[0]
        if parts[0] in _PER_MODEL and len(parts) >= 2:
            return folder, f"{parts[0]}/{parts[1]}"
        return None
    return None


def earlier_runs(root: str | Path, date: str) -> list[Path]:
    """Run folders under ``root`` dated strictly before ``date``, newest first."""
    base = Path(root)
    if not base.is_dir():
        return []
    dates = sorted(
        (p for p in base.iterdir() if p.is_dir() and _DATE.match(p.name) and p.name < date), reverse=True
    )
    return dates
