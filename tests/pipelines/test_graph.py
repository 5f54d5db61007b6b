"""The stage graph: order, cycles, unknown stages and kinds, downstream sets, the typed pipeline schema, and
every shipped pipeline composes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pipelines.graph import downstream, parse_pipeline
from pipelines.runner import merge_overrides, plan
from pipelines.stages import STAGES, family_of, run_stage
from recsys.config import compose, conf_dir, to_plain
from recsys.errors import ConfigError
from recsys.paths import RunPaths

REPORT = {"split": "test", "k": 10, "ranking_metrics": ["ndcg"]}


def _pipeline(**stages: dict[str, Any]) -> dict[str, Any]:
    return {"name": "t", "overrides": [], "report": REPORT, "stages": stages}


def test_order_is_topological_and_keeps_declaration_order_among_ready_stages() -> None:
    spec = parse_pipeline(
        _pipeline(
            index={"kind": "index", "needs": ["ev_b"]},
            ev_a={"kind": "evaluate", "needs": ["features"]},
            ev_b={"kind": "evaluate", "needs": ["features"]},
            features={"kind": "features", "needs": ["ingest"]},
            ingest={"kind": "ingest"},
        )
    )
    assert [s.name for s in spec.stages] == ["ingest", "features", "ev_a", "ev_b", "index"]
    assert downstream(spec, "features") == {"features", "ev_a", "ev_b", "index"}
    assert downstream(spec, "ev_b") == {"ev_b", "index"}
    assert downstream(spec, "index") == {"index"}


def test_cycle_is_a_config_error_naming_the_cycle() -> None:
    with pytest.raises(
        ConfigError, match=r"stages (a -> c -> b -> a|c -> b -> a -> c|b -> a -> c -> b) form a cycle"
    ):
        parse_pipeline(
            _pipeline(
                root={"kind": "ingest"},
                a={"kind": "features", "needs": ["root", "c"]},
                b={"kind": "features", "needs": ["a"]},
                c={"kind": "features", "needs": ["b"]},
            )
        )


def test_unknown_need_and_unknown_from_stage_are_named() -> None:
    with pytest.raises(ConfigError, match=r"stage 'ev' needs unknown stage 'featurez'"):
        parse_pipeline(
            _pipeline(features={"kind": "features"}, ev={"kind": "evaluate", "needs": ["featurez"]})
        )
    spec = parse_pipeline(_pipeline(features={"kind": "features"}))
    with pytest.raises(ConfigError, match=r"no stage 'trian'; stages: features"):
        downstream(spec, "trian")


def test_missing_pipeline_and_missing_kind_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="pipeline=<name>"):
        parse_pipeline(None)
    with pytest.raises(ConfigError, match=r"pipeline\.stages\.x\.kind must be set"):
        parse_pipeline(_pipeline(x={"needs": []}))


def test_unknown_pipeline_and_stage_keys_are_named() -> None:
    """The yaml is typed: a stage no longer declares `outputs` (its kind does), and a typo is refused."""
    with pytest.raises(ConfigError, match=r"pipeline\.stages\.x\.outputs"):
        parse_pipeline(_pipeline(x={"kind": "ingest", "outputs": ["ingest"]}))
    with pytest.raises(ConfigError, match=r"pipeline\.stagez"):
        parse_pipeline({**_pipeline(x={"kind": "ingest"}), "stagez": {}})


def test_unknown_kind_fails_at_plan_time(tmp_path: Path) -> None:
    spec = parse_pipeline(_pipeline(ingest={"kind": "ingest"}, s={"kind": "trainn", "needs": ["ingest"]}))
    with pytest.raises(ConfigError, match=r"stage 's': unknown stage kind 'trainn'; kinds: ingest, features"):
        plan(spec, [f"paths.root={tmp_path}"])
    assert not any(tmp_path.iterdir())  # refused before any stage ran


def _with_published_split(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    """A config whose features/split is published (only its manifest: the stages below refuse before
    reading anything)."""
    cfg = to_plain(compose([f"paths.root={tmp_path}", "run.date=2026-01-02", *overrides]))
    split = RunPaths.from_cfg(cfg).features / "split"
    split.mkdir(parents=True)
    (split / "manifest.json").write_text("{}")
    return cfg


@pytest.mark.parametrize(
    ("kind", "model", "verb"),
    [
        ("train", "ease", "recsys evaluate model=ease"),
        ("train", "mostpop", "recsys evaluate model=mostpop"),
        ("evaluate", "dlrm", "recsys train"),
        ("index", "dlrm", "recsys train"),
        ("rerank", "puresvd", "recsys evaluate model=puresvd"),
    ],
)
def test_a_stage_the_model_family_does_not_have_names_the_verb_to_use(
    tmp_path: Path, kind: str, model: str, verb: str
) -> None:
    """`recsys train model=ease`, `recsys index model=dlrm`, ...: a ConfigError naming the model and the
    command that does handle it."""
    cfg = _with_published_split(tmp_path, f"model={model}")
    if kind == "rerank":  # the rerank stage also needs the ranker and the retriever published
        paths = RunPaths.from_cfg(cfg)
        for folder in (paths.train(model), paths.evaluate(str(cfg["evaluation"]["rerank_retriever"]))):
            folder.mkdir(parents=True)
            (folder / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match=rf"model={model}\b.*`{re.escape(verb)}"):
        run_stage(kind, cfg)


def test_plan_refuses_a_stage_its_model_family_does_not_have(tmp_path: Path) -> None:
    """Like an unknown kind, before any stage runs (a pipeline must not build features for nothing)."""
    spec = parse_pipeline(
        _pipeline(
            ingest={"kind": "ingest"},
            train_ease={"kind": "train", "overrides": ["model=ease"], "needs": ["ingest"]},
        )
    )
    with pytest.raises(ConfigError, match=r"train_ease.*model=ease.*`recsys evaluate model=ease`"):
        plan(spec, [f"paths.root={tmp_path}"])


def test_merge_overrides_keeps_the_last_value_of_each_key() -> None:
    merged = merge_overrides(["data=movielens_100k", "run.date=???"], ["model=ease"], ["run.date=2026-01-02"])
    assert merged == ["data=movielens_100k", "model=ease", "run.date=2026-01-02"]
    assert merge_overrides(["+a.b=1"], ["~a.b"]) == ["~a.b"]


def _pipeline_names() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("name", _pipeline_names())
def test_every_shipped_pipeline_plans_with_smoke_settings(name: str, tmp_path: Path) -> None:
    """Each stage of each preset composes, has a known kind whose model family has that stage, and publishes
    the folders of its kind (LHT's experiment=glob(*))."""
    user = [f"paths.root={tmp_path}", "run.date=2026-01-02", "data=movielens_100k", "trainer=smoke"]
    cfg = to_plain(compose([f"pipeline={name}", *user]))
    spec = parse_pipeline(cfg["pipeline"])
    _, planned = plan(spec, user)
    assert {p.spec.kind for p in planned} <= set(STAGES)
    for p in planned:
        paths = RunPaths.from_cfg(p.cfg)
        assert p.outputs == tuple(paths.relative(o) for o in STAGES[p.spec.kind].publishes(paths, p.cfg))
        if p.spec.kind in ("evaluate", "train", "rerank"):
            assert getattr(family_of(p.cfg), p.spec.kind) is not None, p.spec.name
        if p.spec.kind == "index":
            assert family_of(p.cfg).retriever is not None, p.spec.name
    assert all(p.cfg["paths"]["root"] == str(tmp_path) for p in planned)
    by_name = {p.spec.name: p for p in planned}
    evaluated = {p.cfg["model"]["name"] for p in planned if p.spec.kind == "evaluate"}
    assert {"mostpop", "puresvd"} <= evaluated
    # The stage's own overrides reach its config; the user's win over the pipeline's (trainer=smoke), except
    # a key the stage sets itself (the scaling pipeline's fixed number of batches).
    train = [p for p in planned if p.spec.kind == "train"]
    assert train
    for p in train:
        own = [o.split("=", 1)[1] for o in p.spec.overrides if o.startswith("trainer.limit_train_batches=")]
        assert p.cfg["trainer"]["limit_train_batches"] == (int(own[-1]) if own else 5), p.spec.name
    assert by_name["features"].cfg.get("pipeline") is None
    assert by_name["features"].outputs == ("features",)
    # The ranker publishes itself under train/, the two-stage metrics come from its own rerank stage.
    assert by_name["train_dlrm"].outputs == ("train/dlrm",)
    assert by_name["train_dlrm"].spec.needs == ("features",)
    assert by_name["rerank_dlrm"].outputs == ("rerank/dlrm-puresvd",)
    assert set(by_name["rerank_dlrm"].spec.needs) == {"train_dlrm", "evaluate_puresvd"}
    if "rerank_ranker" in by_name:  # the demo's two-stage recommender re-ranks its own retriever's lists
        assert by_name["rerank_ranker"].outputs == ("rerank/ranker-sasrec",)
        assert by_name["train_ranker"].outputs == ("train/ranker",)
    assert len({p.config_hash for p in planned}) == len(planned)


def test_daily_requires_a_date() -> None:
    cfg = to_plain(compose(["pipeline=daily"]))
    with pytest.raises(ConfigError, match=r"run\.date must be set"):
        plan(parse_pipeline(cfg["pipeline"]), [])


def test_stage_with_a_missing_model_config_names_the_stage(tmp_path: Path) -> None:
    user = [
        f"paths.root={tmp_path}",
        "+pipeline.stages.train_x={kind: train, overrides: ['model=no_such_model']}",
    ]
    cfg = to_plain(compose(["pipeline=demo", *user]))
    with pytest.raises(ConfigError, match=r"stage 'train_x' \(overrides \['model=no_such_model'\]\)"):
        plan(parse_pipeline(cfg["pipeline"]), [user[0]])


def test_sections_no_stage_reads_do_not_change_stage_hashes(tmp_path: Path) -> None:
    user = [f"paths.root={tmp_path}"]
    spec = parse_pipeline(to_plain(compose(["pipeline=demo", *user]))["pipeline"])
    assert spec.hash_exclude == ("bench", "locks")
    _, planned = plan(spec, user)
    _, bench_edited = plan(spec, [*user, "bench=features", "bench.num_events=5", "locks.wait_s=5"])
    _, data_edited = plan(spec, [*user, "features.sequences.max_length=7"])
    assert [p.config_hash for p in bench_edited] == [p.config_hash for p in planned]
    assert all(a.config_hash != b.config_hash for a, b in zip(planned, data_edited, strict=True))
