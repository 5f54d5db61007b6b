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

from omegaconf import DictConfig

from recsys.config import compose, to_plain
from recsys.console import console
from recsys.errors import RecsysError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def _features(cfg: DictConfig, _: argparse.Namespace) -> None:
    from features import run as features_run

    result = features_run.run(to_plain(cfg))
    features_run.print_summary(result)


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
    bench = commands.add_parser("bench", help="run a benchmark; prints a table and writes JSON")
    bench.add_argument("name", choices=["features"])
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
