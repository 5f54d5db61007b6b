"""``mlflow models serve`` on loopback for the serving tests (:mod:`recsys.serving`): a server that does not
come up fails the test with its output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from recsys.serving import ServingError, free_port, invoke
from recsys.serving import served as serve_model

__all__ = ["free_port", "invoke", "served"]


@contextmanager
def served(model_uri: str, tracking_uri: str, cwd: Path, **options: Any) -> Iterator[int]:
    try:
        with serve_model(model_uri, tracking_uri, cwd, **options) as port:
            yield port
    except ServingError as error:
        pytest.fail(str(error))
