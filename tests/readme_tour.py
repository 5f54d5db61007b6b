"""The README's tour, run as written: every ``.venv/bin/recsys`` command of its "A short tour" section, in
order, from the repository root, stopping at the first failure. ``make tour`` runs it (tens of minutes on
two cores: it trains every model family on MovieLens-100K); tests/test_readme.py checks on every
``make test`` that each command parses and composes.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOUR_HEADING = "## A short tour"
COMMAND = ".venv/bin/recsys"


def tour_commands(readme: Path = README) -> list[list[str]]:
    """The tour's recsys commands as argument lists (``a && b`` is two commands; comments dropped)."""
    text = readme.read_text()
    start = text.index(TOUR_HEADING)
    end = text.find("\n## ", start + len(TOUR_HEADING))
    section = text[start : end if end != -1 else len(text)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] == COMMAND:
                    commands.append(words)
    return commands


def main() -> int:
    rows = []
    for words in tour_commands():
        start = time.perf_counter()
        print(f"$ {shlex.join(words)}", flush=True)
        done = subprocess.run(words, cwd=REPO, check=False)
        seconds = time.perf_counter() - start
        rows.append((shlex.join(words[1:]), done.returncode, seconds))
        if done.returncode != 0:
            break
    print("\nREADME tour")
    for command, code, seconds in rows:
        print(f"{'ok' if code == 0 else f'exit {code}':>7}  {seconds:8.1f}s  recsys {command}")
    return 0 if all(code == 0 for _, code, _ in rows) and len(rows) == len(tour_commands()) else 1


if __name__ == "__main__":
    sys.exit(main())
