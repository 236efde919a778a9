"""Shared pytest set-up: GPU-only tests skip cleanly where there is no GPU."""
import os
import sys

import pytest

# Tests import the top-level modules (flat layout) without installing the repo.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _has_gpu():
  try:
    import jax
    return any(d.platform == "gpu" for d in jax.devices())
  except Exception:  # no jax, or no GPU backend
    return False


def pytest_collection_modifyitems(config, items):
  if _has_gpu():
    return
  skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
