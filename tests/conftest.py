"""Shared pytest set-up: GPU-only tests skip cleanly where there is no GPU."""
import os
import sys

import pytest

# Several processes may share one GPU: pytest-xdist's workers (README's test command) and the child
# processes some tests start (test_triton_ffi's legacy-call run, test_sample's CLI runs), which inherit
# this environment. JAX's default grab of 75% of the memory per process would starve the second one
# (test_triton_ffi's child hit CUDA_ERROR_OUT_OF_MEMORY on the H100, forty-ninth session). Tests time
# nothing, so they allocate as they go.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

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


@pytest.fixture
def triton_interpreter():
  """run(script) -> stdout of bench/<script> under TRITON_INTERPRET=1 (the Triton kernels on the CPU,
  checked against NumPy by the script itself); skips without torch or with a triton whose
  interpreter cannot run them."""
  import subprocess  # pylint: disable=import-outside-toplevel

  def run(script):
    pytest.importorskip("torch")
    triton = pytest.importorskip("triton")
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7):
      pytest.skip(f"triton {triton.__version__}'s interpreter passes program_id to range() as a 1-element "
                  "array, which recent NumPy (2.4) rejects; run this with triton >= 3.7 (CPU)")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout

  return run
