"""The ``recsys`` command: parse, compose the config, call one function, print a summary.

Every failure the user can fix (bad input, bad config, missing upstream output) is a
:class:`~recsys.errors.RecsysError` and becomes one paragraph on stderr with exit code 2. Anything else is a
bug: exit code 1, with the traceback when ``RECSYS_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from recsys.bench import BENCHMARKS
from recsys.config import compose, to_plain
from recsys.console import console
from recsys.errors import ConfigError, RecsysError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def _features(cfg: DictConfig, _: argparse.Namespace) -> None:
    from features import run as features_run

    result = features_run.run(to_plain(cfg))
    features_run.print_summary(result)


def _ensure_features(cfg: dict[str, Any]) -> None:
    """Evaluation starts from the features stage; build it first when this snapshot has none yet."""
    from recsys.offline import features_dir

    if not (features_dir(cfg) / "split" / "manifest.json").is_file():
        from features import run as features_run

        features_run.print_summary(features_run.run(cfg))


def _evaluate(cfg: DictConfig, _: argparse.Namespace) -> None:
    from recsys.jobs import run_evaluate

    plain = to_plain(cfg)
    _ensure_features(plain)
    run_evaluate(plain)


# model.family -> "module:function" of its training entry point. Imported lazily: each family pulls in
# heavy libraries (TorchRec, transformers) that other commands never need.
TRAINERS: dict[str, str] = {
    "dlrm": "models.dlrm.train:run_train",
    "sequential": "models.sequential.train:run_train",
    "reclora": "models.reclora.train:run_train",
}


def _entry_point(spec: str) -> Callable[..., Any]:
    module_name, function_name = spec.split(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module_name), function_name)
    return function


def _train(cfg: DictConfig, _: argparse.Namespace) -> None:
    plain = to_plain(cfg)
    family = plain["model"].get("family")
    if family not in TRAINERS:
        raise ConfigError(
            f"recsys train does not train model={plain['model']['name']} (family {family!r}); "
            f"trainable families: {', '.join(sorted(TRAINERS))}."
        )
    _ensure_features(plain)
    _entry_point(TRAINERS[family])(plain)


def _pipeline(cfg: DictConfig, args: argparse.Namespace) -> None:
    from pipelines.runner import run_pipeline

    # The user's overrides go to every stage's own config (the root config only carries the graph).
    run_pipeline(
        to_plain(cfg), force=bool(args.force), from_stage=args.from_stage, overrides=list(args.overrides)
    )


def _index(cfg: DictConfig, _: argparse.Namespace) -> None:
    from recsys.jobs import run_index

    run_index(to_plain(cfg))


def _bench(cfg: DictConfig, args: argparse.Namespace) -> None:
    from recsys.bench import run_bench

    run_bench(str(args.name), to_plain(cfg))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Batch recommender pipelines. Settings are Hydra overrides: key=value (see conf/).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    features = commands.add_parser(
        "features", help="ingest + validate data, build vocabularies/splits/features"
    )
    features.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. data=movielens_100k paths.root=runs"
    )
    features.set_defaults(handler=_features)
    evaluate = commands.add_parser("evaluate", help="fit a baseline, full-ranking metrics, log to MLflow")
    evaluate.add_argument("overrides", nargs="*", help="e.g. model=ease data=movielens_100k")
    evaluate.set_defaults(handler=_evaluate)
    train = commands.add_parser(
        "train", help="train a model (dlrm, sasrec, molar, reclora) with Lightning, log to MLflow"
    )
    train.add_argument("overrides", nargs="*", help="e.g. model=dlrm trainer=ddp_cpu")
    train.set_defaults(handler=_train)
    index = commands.add_parser("index", help="FAISS index + candidates + register the retriever pyfunc")
    index.add_argument("overrides", nargs="*", help="e.g. model=puresvd index=hnsw")
    index.set_defaults(handler=_index)
    bench = commands.add_parser("bench", help="run a benchmark; prints a table and writes JSON")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("overrides", nargs="*")
    bench.set_defaults(handler=_bench)
    pipeline = commands.add_parser(
        "pipeline", help="run the batch pipeline's stage graph (idempotent, resumable)"
    )
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    pipeline_run = pipeline_commands.add_parser("run", help="run every stage that is not already done")
    pipeline_run.add_argument("--force", action="store_true", help="redo every stage, even finished ones")
    pipeline_run.add_argument(
        "--from",
        dest="from_stage",
        default=None,
        help="redo this stage and every stage that reads its outputs",
    )
    pipeline_run.add_argument("overrides", nargs="*", help="e.g. pipeline=daily run.date=2026-11-25")
    pipeline_run.set_defaults(handler=_pipeline)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Callable[[DictConfig, argparse.Namespace], None] = args.handler
    try:
        cfg = compose(list(args.overrides))
        handler(cfg, args)
    except RecsysError as exc:
        console.print(f"[bold red]recsys {args.command} failed:[/bold red] {exc}", soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return EXIT_INTERNAL_ERROR
    except Exception as exc:
        if os.environ.get("RECSYS_DEBUG") == "1":
            traceback.print_exc()
        console.print(
            f"[bold red]recsys {args.command} crashed:[/bold red] {type(exc).__name__}: {exc}. "
            "This is a bug; rerun with RECSYS_DEBUG=1 for the traceback.",
            soft_wrap=True,
        )
        return EXIT_INTERNAL_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
