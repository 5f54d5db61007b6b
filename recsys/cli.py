"""The ``recsys`` command: the application layer on top of every package (nothing in ``recsys/`` imports it).

Each verb composes the config, runs stages through the stage registry (``pipelines.stages``) exactly as the
pipeline runner does, and prints a summary. ``--cfg job`` prints the composed config instead of running.

Every failure the user can fix (bad input, bad config, missing upstream output) is a
:class:`~recsys.errors.RecsysError` and becomes one paragraph on stderr with exit code 2; so does a failure
the machine caused (disk full, read-only folder, busy store: :mod:`recsys.conditions`). Anything else is a
bug: exit code 1, with the traceback when ``RECSYS_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from recsys.conditions import known_condition
from recsys.config import add_config_dirs, compose, conf_dir, to_plain
from recsys.console import console, print_table
from recsys.errors import RecsysError
from recsys.extras import missing_dependency
from recsys.paths import RunPaths
from recsys.stage import StageResult

EXIT_USER_ERROR = 2
CONFIG_DIR_OPTION = "--config-dir"
EXIT_INTERNAL_ERROR = 1

# Verb -> the stage kinds it runs, in order (pipelines.stages.STAGES).
STAGE_VERBS: dict[str, tuple[str, ...]] = {
    "features": ("ingest", "features"),
    "evaluate": ("evaluate",),
    "train": ("train",),
    "index": ("index",),
    "rerank": ("rerank",),
}
VERB_HELP = {
    "features": "ingest + validate data, build vocabularies/splits/features (Spark)",
    "evaluate": "fit a baseline (mostpop, itemknn, ease, puresvd), full-ranking metrics, log to MLflow",
    "train": "train a model (dlrm, dcn, sasrec, molar, reclora) with Lightning, log + register in MLflow",
    "index": "FAISS index + candidates + register the retriever pyfunc (puresvd, sasrec, molar)",
    "rerank": "two-stage: a trained ranker (dlrm, dcn) re-ranks a retriever's candidates",
}
VERB_EXAMPLES = {
    "features": "data=movielens_100k run.date=1998-04-23",
    "evaluate": "model=ease run.date=1998-04-23",
    "train": "model=dlrm trainer=ddp_cpu run.date=1998-04-23",
    "index": "model=puresvd index=hnsw run.date=1998-04-23",
    "rerank": "model=dlrm evaluation.rerank_retriever=puresvd run.date=1998-04-23",
}
# Verbs that build the snapshot's features first when they are missing (a fresh root works in one command).
BUILDS_FEATURES = ("evaluate", "train")


@dataclass(frozen=True)
class Benchmark:
    """``recsys bench <name>``: the function returning its results and the engine its ratios compare with."""

    run: Callable[[Mapping[str, Any]], dict[str, Any]]
    reference: str


def _bench_features(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from features.bench import run_features_bench

    return run_features_bench(cfg)


def _bench_retrieval(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from recsys.retrieval.bench import run_retrieval_bench

    return run_retrieval_bench(cfg)


def _bench_dlrm(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from models.dlrm.bench import run_dlrm_bench

    return run_dlrm_bench(cfg)


def _bench_sequential(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from models.sequential.bench import run_sequential_bench

    return run_sequential_bench(cfg)


def _bench_reclora(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from models.reclora.bench import run_reclora_bench

    return run_reclora_bench(cfg)


def _bench_scaling(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from pipelines.scaling import run_scaling_bench

    return run_scaling_bench(cfg)


def _bench_serving(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from recsys.serving_bench import run_serving_bench

    return run_serving_bench(cfg)


BENCHMARKS: dict[str, Benchmark] = {
    "features": Benchmark(_bench_features, "duckdb"),
    "retrieval": Benchmark(_bench_retrieval, "exact (Flat)"),
    "dlrm": Benchmark(_bench_dlrm, "plain TorchRec loop"),
    "sequential": Benchmark(_bench_sequential, "plain PyTorch loop"),
    "reclora": Benchmark(_bench_reclora, "shared LoRA"),
    "serving": Benchmark(_bench_serving, "served retriever (users/s)"),
    "scaling": Benchmark(_bench_scaling, "the smallest size"),
}


def _features_published(cfg: Mapping[str, Any]) -> bool:
    return (RunPaths.from_cfg(cfg).features / "split" / "manifest.json").is_file()


def _run_verb(verb: str, cfg: Mapping[str, Any]) -> list[tuple[str, StageResult]]:
    from pipelines import stages as registry

    kinds = STAGE_VERBS[verb]
    for kind in kinds:
        registry.check_family_stage(kind, cfg)
    if verb in BUILDS_FEATURES and not _features_published(cfg):
        kinds = (*STAGE_VERBS["features"], *kinds)
    done = []
    with registry.stage_locks(kinds, cfg):
        for kind in kinds:
            with registry.scope(kind, kind):
                done.append((kind, registry.run_stage(kind, cfg)))
    return done


def _print_stages(done: Sequence[tuple[str, StageResult]]) -> None:
    rows = [
        (kind, result.mlflow_run_id or "", ", ".join(str(p) for p in result.outputs) or "(MLflow only)")
        for kind, result in done
    ]
    print_table("stages", ["stage", "MLflow run", "published"], rows)


def _stage_handler(cfg: DictConfig, args: argparse.Namespace) -> None:
    _print_stages(_run_verb(str(args.command), to_plain(cfg)))


def _pipeline(cfg: DictConfig, args: argparse.Namespace) -> None:
    from pipelines.runner import run_pipeline

    # The user's overrides go to every stage's own config (the root config only carries the graph).
    run_pipeline(
        to_plain(cfg), force=bool(args.force), from_stage=args.from_stage, overrides=list(args.overrides)
    )


def _bench(cfg: DictConfig, args: argparse.Namespace) -> None:
    from recsys.bench import report_bench

    plain = to_plain(cfg)
    benchmark = BENCHMARKS[str(args.name)]
    results = benchmark.run(plain)
    report_bench(str(args.name), benchmark.reference, results, str(plain["bench"]["out_dir"]))


def group_options() -> dict[str, list[str]]:
    """Each config group of the ``conf/`` tree and its options (``conf/<group>/<option>.yaml``)."""
    root = conf_dir()
    return {
        folder.name: sorted(p.stem for p in folder.glob("*.yaml"))
        for folder in sorted(root.iterdir())
        if folder.is_dir() and any(folder.glob("*.yaml"))
    }


def _groups_epilog() -> str:
    lines = ["config groups (choose with group=option; change any key with key=value):"]
    lines += [f"  {group:<11} {', '.join(options)}" for group, options in group_options().items()]
    lines.append("`--cfg job` prints the composed config and exits; RECSYS_DEBUG=1 shows tracebacks.")
    return "\n".join(lines)


def _add_common(command: argparse.ArgumentParser, example: str) -> None:
    command.add_argument("overrides", nargs="*", help=f"Hydra overrides, e.g. {example}")
    command.add_argument(
        "--cfg",
        choices=["job"],
        default=None,
        help="print the composed config (Hydra's `--cfg job`) and exit without running",
    )
    command.add_argument(
        CONFIG_DIR_OPTION,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of your own config files, searched before the bundled ones (e.g. DIR/data/mine.yaml "
        "makes data=mine); repeatable; also $RECSYS_CONFIG_PATH",
    )


def _parser() -> argparse.ArgumentParser:
    epilog = _groups_epilog()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Batch recommender pipelines. Settings are Hydra overrides: key=value (see conf/).",
        epilog=epilog,
        formatter_class=formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for verb, help_text in VERB_HELP.items():
        command = commands.add_parser(
            verb, help=help_text, description=help_text, epilog=epilog, formatter_class=formatter
        )
        _add_common(command, VERB_EXAMPLES[verb])
        command.set_defaults(handler=_stage_handler)
    bench = commands.add_parser(
        "bench",
        help="run a benchmark; prints a table and writes JSON",
        epilog=epilog,
        formatter_class=formatter,
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    _add_common(bench, "bench.repeats=3")
    bench.set_defaults(handler=_bench)
    pipeline = commands.add_parser(
        "pipeline", help="run the batch pipeline's stage graph (idempotent, resumable)"
    )
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    pipeline_run = pipeline_commands.add_parser(
        "run", help="run every stage that is not already done", epilog=epilog, formatter_class=formatter
    )
    pipeline_run.add_argument("--force", action="store_true", help="redo every stage, even finished ones")
    pipeline_run.add_argument(
        "--from",
        dest="from_stage",
        default=None,
        help="redo this stage and every stage that reads its outputs",
    )
    _add_common(pipeline_run, "pipeline=daily run.date=2026-11-25")
    pipeline_run.set_defaults(handler=_pipeline)
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.command == "bench":
        # Each benchmark's settings are the option of the `bench` group with its name.
        overrides = [f"bench={args.name}", *overrides]
    return overrides


def _pop_config_dirs(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--config-dir DIR`` / ``--config-dir=DIR`` taken out of ``argv`` wherever it stands: argparse cannot
    read an option between overrides (``pipeline=demo --config-dir conf data=mine``)."""
    rest, folders = [], []
    items = iter(argv)
    for item in items:
        if item == CONFIG_DIR_OPTION:
            folders.append(next(items, ""))
        elif item.startswith(f"{CONFIG_DIR_OPTION}="):
            folders.append(item.partition("=")[2])
        else:
            rest.append(item)
    return rest, folders


def main(argv: Sequence[str] | None = None) -> int:
    argv, config_dirs = _pop_config_dirs(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.config_dir = [*args.config_dir, *config_dirs]
    handler: Callable[[DictConfig, argparse.Namespace], None] = args.handler
    try:
        from pipelines.stages import register_schemas

        register_schemas()
        add_config_dirs(args.config_dir)
        cfg = compose(_overrides(args))
        if args.cfg == "job":
            sys.stdout.write(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        handler(cfg, args)
    except RecsysError as exc:
        return _failed(args.command, exc)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return EXIT_INTERNAL_ERROR
    except ModuleNotFoundError as exc:
        missing = missing_dependency(exc)
        if missing is None:
            return _crashed(args.command, exc)
        return _failed(args.command, missing)
    except Exception as exc:
        condition = known_condition(exc)
        if condition is not None:
            return _failed(args.command, condition)
        return _crashed(args.command, exc)
    return 0


def _failed(command: str, exc: RecsysError) -> int:
    # Escaped: messages quote overrides and extras ("[llm]") that rich would read as markup.
    console.print(f"[bold red]recsys {command} failed:[/bold red] {escape(str(exc))}", soft_wrap=True)
    return EXIT_USER_ERROR


def _crashed(command: str, exc: BaseException) -> int:
    if os.environ.get("RECSYS_DEBUG") == "1":
        traceback.print_exception(exc)
    console.print(
        f"[bold red]recsys {command} crashed:[/bold red] {type(exc).__name__}: {escape(str(exc))}. "
        "This is a bug; rerun with RECSYS_DEBUG=1 for the traceback.",
        soft_wrap=True,
    )
    return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
