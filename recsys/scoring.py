"""Retrievers as history scorers, looked up by the family that published them.

A two-stage recommender asks its retriever for candidates at points in time it chooses (a validation event,
a test event, a served request), from the history before that point. Each family says how its published
folder becomes a :class:`recsys.stage.SequenceScorer`; the registry maps ``model.family`` to that source
and is filled by the application layer (``pipelines.stages``), so the core imports no family.

A retriever may be a fusion of published models, named ``a+b``: each part scores the catalog, each row is
standardised over the real items (z-scores, so models on different scales weigh alike) and the sum ranks the
candidates. Its top K therefore holds what either model ranks far above its average: the union of two
retrievers' candidates, ordered by their agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import ConfigError, InputError
from recsys.manifest import MANIFEST_FILE, read_manifest
from recsys.paths import RunPaths
from recsys.schema import FIRST_INDEX
from recsys.stage import ScorerSource, SequenceScorer

FUSION = "+"
"""Joins the published models of a fused retriever: ``model.candidates.retriever=sasrec+molar``."""

_SOURCES: dict[str, Callable[[], ScorerSource | None]] = {}


def register_scorer_source(family: str, loader: Callable[[], ScorerSource | None]) -> None:
    """Make ``family``'s published models usable as retrievers (``loader`` imports the family lazily)."""
    _SOURCES[family] = loader


def retriever_parts(name: str) -> tuple[str, ...]:
    """The published models behind retriever ``name`` (one, or the parts of a fusion ``a+b``)."""
    parts = tuple(part.strip() for part in name.split(FUSION))
    if not all(parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"retriever {name!r}: a fusion names distinct models joined by {FUSION!r}.")
    return parts


class FusedScorer:
    """The sum of its parts' per-row z-scores (over the real items, ``FIRST_INDEX:``)."""

    def __init__(self, parts: Mapping[str, SequenceScorer]) -> None:
        self.parts = dict(parts)

    def score(self, histories: Any) -> np.ndarray:
        rows = list(histories)
        total: np.ndarray | None = None
        for scorer in self.parts.values():
            scores = np.asarray(scorer.score(rows), dtype=np.float32)
            real = scores[:, FIRST_INDEX:]
            std = real.std(axis=1, keepdims=True)
            z = (scores - real.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
            total = z if total is None else total + z
        assert total is not None
        return total.astype(np.float32)


def retriever_folder(paths: RunPaths, name: str) -> Path:
    """Where retriever ``name`` is published: ``train/<name>`` (trained families) when that has a manifest,
    else ``evaluate/<name>`` (baselines), the folder a missing-input message then names."""
    trained = paths.train(name)
    return trained if (trained / MANIFEST_FILE).is_file() else paths.evaluate(name)


def _candidate_spec(model_cfg: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``model.candidates`` of a candidate ranker (``task: candidates``); None for any other model."""
    candidates = model_cfg.get("candidates")
    return candidates if model_cfg.get("task") == "candidates" and candidates else None


def candidate_models(model_cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The published models a candidate ranker reads: its retriever's parts, then its score-feature models;
    none for any other model."""
    candidates = _candidate_spec(model_cfg)
    if candidates is None:
        return ()
    names = [
        *retriever_parts(str(candidates["retriever"])),
        *(str(n) for n in candidates.get("score_features") or ()),
    ]
    return tuple(dict.fromkeys(names))


def reranked_retriever(model_cfg: Mapping[str, Any], evaluation: Mapping[str, Any]) -> str:
    """The retriever whose lists a ranker's ``rerank`` stage re-orders: a candidate ranker's own, else
    ``evaluation.rerank_retriever``."""
    candidates = _candidate_spec(model_cfg)
    return str(evaluation["rerank_retriever"] if candidates is None else candidates["retriever"])


def load_retriever_scorer(paths: RunPaths, name: str) -> SequenceScorer:
    """The scorer of the published retriever ``name`` of this snapshot (a :class:`FusedScorer` for ``a+b``).

    Raises:
        InputError: nothing is published under that name (the message names the command that makes it).
        ConfigError: the published model's family cannot score histories.
    """
    parts = retriever_parts(name)
    if len(parts) > 1:
        return FusedScorer({part: load_retriever_scorer(paths, part) for part in parts})
    folder = retriever_folder(paths, name)
    if not (folder / MANIFEST_FILE).is_file():
        raise InputError(
            f"retriever {name!r}: neither {paths.train(name)} nor {folder} is published; run "
            f"`recsys evaluate model={name}` (baselines) or `recsys train model={name}` first."
        )
    family = str(read_manifest(folder).extra.get("family", ""))
    source = _SOURCES[family]() if family in _SOURCES else None
    if source is None:
        raise ConfigError(
            f"{folder / MANIFEST_FILE}: retriever {name!r} has family {family!r}, which cannot score "
            f"histories; retrievers come from the families {sorted(_SOURCES)}."
        )
    return source.load(folder, paths.features)
