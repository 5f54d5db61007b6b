"""The contract every stage and every model family keeps: what a stage hands back when it finishes.

A stage (``ingest``, ``features``, ``evaluate``, ``train``, ``index``, ``rerank``) is run the same way from
the command line and from the pipeline runner, and returns a :class:`StageResult`; the runner writes it into
the stage's success marker and the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class StageResult:
    """What a finished stage published and measured.

    Attributes:
        metrics: the stage's key numbers (MLflow keys such as ``test/ndcg_at_10``).
        mlflow_run_id: the MLflow run the stage logged to, when it has one.
        outputs: the folders it published (under the run folder), each with a manifest.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    outputs: tuple[Path, ...] = ()


class StageFunction(Protocol):
    """``run(cfg) -> StageResult`` with the composed, resolved config as plain containers."""

    def __call__(self, cfg: Mapping[str, Any]) -> StageResult: ...


@dataclass(frozen=True)
class PublishedVectors:
    """A retriever's published vectors, what ``recsys index`` builds its FAISS index and candidates from.

    Attributes:
        folder: the published stage folder they were read from (``evaluate/<model>`` or ``train/<model>``).
        item_vectors: ``[N, D]`` float32, row = item index.
        user_vectors: ``[num_users, D]`` float32, row = user index, from the model's own user encoder;
            ``None`` when a user vector is the user's history folded in (``history @ item_vectors``).
        model_version, run_id, eval_set: provenance recorded in the folder's manifest.
    """

    folder: Path
    item_vectors: Any
    user_vectors: Any | None
    model_version: str
    run_id: str
    eval_set: str


class Retriever(Protocol):
    """A model family whose user and item vectors serve candidates through a FAISS index."""

    def published(self, paths: Any, model: str) -> PublishedVectors:
        """The vectors ``model`` published under ``paths`` (a :class:`recsys.paths.RunPaths`)."""
        ...

    def log_pyfunc(
        self,
        vectors: PublishedVectors,
        index_dir: Path,
        item_ids: Any,
        popularity: Any,
        k: int,
        example: list[str],
    ) -> Any:
        """Log the retriever pyfunc (raw item-id history in, top-K raw item ids out; ``popularity``, the
        ``[N]`` event counts of the snapshot, orders its fallback) into the active run; returns MLflow's
        ``ModelInfo``."""
        ...


class SequenceScorer(Protocol):
    """Scores the whole catalog for users given only their histories: what a two-stage recommender needs
    from its retriever to build candidate lists at any point in time (the history strictly before it)."""

    def score(self, histories: Sequence[Any]) -> Any:
        """``[U, N]`` float32 scores (higher is better) of every item index for ``U`` histories, each an
        int64 array of item indices, oldest first. Reserved indices and seen items are not masked here."""
        ...


class ScorerSource(Protocol):
    """How a family turns one published model folder into a :class:`SequenceScorer`."""

    def load(self, folder: Path, features: Path) -> SequenceScorer:
        """The scorer of the model published in ``folder``, over the features snapshot ``features``."""
        ...


@dataclass(frozen=True)
class ModelFamily:
    """The surface every model family exposes; a stage a family does not have is ``None``.

    Attributes:
        name: ``model.family`` of its configs.
        train: the ``train`` stage (Lightning families): fit, test, log, register, publish ``train/<model>``.
        evaluate: the ``evaluate`` stage (baselines fit and evaluate in one step): publish
            ``evaluate/<model>``.
        retriever: how ``recsys index`` reads its user and item vectors and logs its retriever pyfunc.
        rerank: the ``rerank`` stage of a ranker: re-rank a retriever's candidates (two-stage metrics).
        scorer: how a published model of the family scores histories, when it can retrieve candidates for
            a two-stage recommender.
    """

    name: str
    train: StageFunction | None = None
    evaluate: StageFunction | None = None
    retriever: Retriever | None = None
    rerank: StageFunction | None = None
    scorer: ScorerSource | None = None
