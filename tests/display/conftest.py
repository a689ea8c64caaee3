"""Fixtures for the display tests. Real parts are required: a missing Xvfb FAILS with how to install it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.demo_parts.display import MissingTool, Xvfb


@pytest.fixture
def xvfb(tmp_path: Path) -> Iterator[Xvfb]:
    try:
        x = Xvfb(tmp_path / "x").start()
    except MissingTool as e:
        pytest.fail(str(e))
    try:
        yield x
    finally:
        x.stop()
