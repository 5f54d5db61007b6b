"""Every command of the README's tour parses and composes as written (``--cfg job``: nothing runs);
``make tour`` (tests/readme_tour.py) runs them for real."""

from __future__ import annotations

import pytest

from recsys.cli import main
from tests.readme_tour import COMMAND, tour_commands

COMMANDS = tour_commands()


def test_the_tour_has_its_commands() -> None:
    verbs = {words[1] for words in COMMANDS}
    assert {"features", "evaluate", "train", "index", "rerank", "pipeline", "bench"} <= verbs
    # Every command of a snapshot names the demo's date (no silent fallback to 1970-01-01), except the
    # pipeline (its config sets the date) and the synthetic benchmarks.
    dated = [w for w in COMMANDS if w[1] not in ("pipeline",) and w[1:3] != ["bench", "retrieval"]]
    undated = [words for words in dated if "run.date=1998-04-23" not in words]
    assert undated == []


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w[1:]) for w in COMMANDS])
def test_tour_command_composes(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert words[0] == COMMAND
    code = main([*words[1:], "--cfg", "job"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "run:" in captured.out
