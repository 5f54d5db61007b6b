"""The ``recsys`` command: parse, compose the config, call one function, print a summary.

Every failure the user can fix (bad input, bad config, missing upstream output) is a
:class:`~recsys.errors.RecsysError` and becomes one paragraph on stderr with exit code 2. Anything else is a
bug: exit code 1, with the traceback when ``RECSYS_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

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


def _train(cfg: DictConfig, _: argparse.Namespace) -> None:
    plain = to_plain(cfg)
    if plain["model"]["family"] != "dlrm":
        raise ConfigError(f"recsys train supports model=dlrm so far, not model={plain['model']['name']}.")
    from models.dlrm.train import run_train

    _ensure_features(plain)
    run_train(plain)


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
    train = commands.add_parser("train", help="train a model (dlrm) with Lightning, log to MLflow")
    train.add_argument("overrides", nargs="*", help="e.g. model=dlrm trainer=ddp_cpu")
    train.set_defaults(handler=_train)
    index = commands.add_parser("index", help="FAISS index + candidates + register the retriever pyfunc")
    index.add_argument("overrides", nargs="*", help="e.g. model=puresvd index=hnsw")
    index.set_defaults(handler=_index)
    bench = commands.add_parser("bench", help="run a benchmark; prints a table and writes JSON")
    bench.add_argument("name", choices=["features", "retrieval", "dlrm"])
    bench.add_argument("overrides", nargs="*")
    bench.set_defaults(handler=_bench)
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
