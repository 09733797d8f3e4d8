"""Fixtures for the serving unit tests; the model builders live in tests/serving_helpers.py."""
from __future__ import annotations


import pytest

# Re-exported for test modules that still load this file by path.
from tests.serving_helpers import (expected_probs, install_version, make_broken_version,  # noqa: F401
                                   save_text_model, write_warmup)


@pytest.fixture(scope="session")
def model_templates(tmp_path_factory):
    """Two saved versions built once per session: {1: dir with offset 0.0, 2: dir with offset 1.0}."""
    root = tmp_path_factory.mktemp("templates")
    return {1: save_text_model(str(root / "v1"), offset=0.0), 2: save_text_model(str(root / "v2"), offset=1.0)}
