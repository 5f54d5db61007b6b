"""The stage graph: order, cycles, unknown stages, downstream sets, and every shipped pipeline composes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.graph import downstream, parse_pipeline
from pipelines.kinds import KINDS, check_entry_point, entry_point
from pipelines.runner import merge_overrides, plan
from recsys.config import compose, conf_dir, to_plain
from recsys.errors import ConfigError


def _pipeline(**stages: dict[str, Any]) -> dict[str, Any]:
    return {"name": "t", "overrides": [], "stages": stages}


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
    with pytest.raises(ConfigError, match=r"stage 'x': every stage needs a `kind`"):
        parse_pipeline(_pipeline(x={"needs": []}))


def test_entry_points_that_do_not_exist_fail_clearly() -> None:
    with pytest.raises(ConfigError, match=r"stage 'train_x': entry point models\.nope\.train:run_train"):
        entry_point("train_x", "models.nope.train:run_train")
    with pytest.raises(ConfigError, match=r"has no function 'no_such_function'"):
        entry_point("s", "recsys.jobs:no_such_function")
    with pytest.raises(ConfigError, match=r"unknown kind 'trainn'"):
        check_entry_point("s", "trainn", {})
    with pytest.raises(ConfigError, match=r"model=ease \(family 'baseline'\) is not trainable"):
        check_entry_point("train_ease", "train", {"model": {"name": "ease", "family": "baseline"}})


def test_merge_overrides_keeps_the_last_value_of_each_key() -> None:
    merged = merge_overrides(["data=movielens_100k", "run.date=???"], ["model=ease"], ["run.date=2026-01-02"])
    assert merged == ["data=movielens_100k", "model=ease", "run.date=2026-01-02"]
    assert merge_overrides(["+a.b=1"], ["~a.b"]) == ["~a.b"]


def _pipeline_names() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("name", _pipeline_names())
def test_every_shipped_pipeline_plans_with_smoke_settings(name: str, tmp_path: Path) -> None:
    """Each stage of each preset composes and names an existing entry point (LHT's experiment=glob(*))."""
    user = [f"paths.root={tmp_path}", "run.date=2026-01-02", "data=movielens_100k", "trainer=smoke"]
    cfg = to_plain(compose([f"pipeline={name}", *user]))
    spec = parse_pipeline(cfg["pipeline"])
    _, planned = plan(spec, user)
    assert {p.spec.kind for p in planned} <= set(KINDS)
    assert all(p.cfg["paths"]["root"] == str(tmp_path) for p in planned)
    by_name = {p.spec.name: p for p in planned}
    evaluated = {p.cfg["model"]["name"] for p in planned if p.spec.kind == "evaluate"}
    assert {"mostpop", "puresvd"} <= evaluated
    # The stage's own overrides reach its config; the user's win over the pipeline's (trainer=smoke).
    train = [p for p in planned if p.spec.kind == "train"]
    assert train and all(p.cfg["trainer"]["limit_train_batches"] == 5 for p in train)
    assert by_name["features"].cfg.get("pipeline") is None
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
    assert spec.hash_exclude == ("bench",)
    _, planned = plan(spec, user)
    _, bench_edited = plan(spec, [*user, "bench.features.num_events=5"])
    _, data_edited = plan(spec, [*user, "features.sequences.max_length=7"])
    assert [p.config_hash for p in bench_edited] == [p.config_hash for p in planned]
    assert all(a.config_hash != b.config_hash for a, b in zip(planned, data_edited, strict=True))
